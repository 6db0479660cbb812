"""Choosing tau on a validation set: the paper's Eq. 2 leaves tau to be "determined by
statistical analysis on the validation set" (Guo et al., 2025); this is that analysis.

For every candidate threshold (a tau, or a percentile as in the official code), and every
`min_gap`, the sweep reports over the validation rows:

- flags per prompt: flagged tokens per prompt, every view counted;
- fix rate: of the prompts the teacher answers correctly and the student does not, the share
  the student answers correctly once every flagged span is pruned (the paper's pilot, Fig. 1).
  At level response a prompt counts as fixed when the student continues every pruned context
  of it (instruction, then instruction plus earlier segments) correctly;
- clean untouched: of the prompts both models already answer correctly, the share with no
  flag at all.

Each row is analysed once (`Detector.analyse`); each threshold is then a `decide` over the
raw numbers (microseconds), and every distinct pruned prompt is answered once however many
thresholds produce it.

Min-max normalisation (Eq. 2) gives the lowest-scoring unit of every prompt the score 0, so
every tau >= 0 (and every percentile) flags it: without a `min_gap`, a clean prompt is left
untouched only when that unit is punctuation (never flagged) or its units do not differ at
all. Sweep `min_gaps` to see what leaving clean prompts alone costs in fixes.

Torch-free to import: the API reads `Sweep` and the file names; models are used only by
`calibrate`, which the caller hands loaded ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from leaf_engine.analysis import Analysis, DetectConfig, decide
from leaf_engine.answers import Reference
from leaf_engine.config_fields import check_value, field_specs
from leaf_engine.data import Example, atomic_writer
from leaf_engine.errors import ConfigError, InputError
from leaf_engine.report.schema import TAUS

if TYPE_CHECKING:
    from leaf_engine.detect import Detector
    from leaf_engine.models import LoadedModel
    from leaf_engine.selection import Judge

log = logging.getLogger(__name__)

SCHEMA = "leaf.calibration/1"
CURVE_JSON = "calibration.json"
CURVE_PNG = "calibration.png"
DEFAULT_TAUS = TAUS  # 0.0 .. 0.5 in steps of 0.05, as the corpus report's tau curve
DEFAULT_PERCENTILES = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0)
DEFAULT_MIN_GAPS = (0.0,)  # the paper's rule: no gap required
DEFAULT_MIN_UNTOUCHED = 0.0  # recommend by fix rate alone
# Each point (a threshold and a min gap) costs a `decide` per row; the API takes lists up to
# these lengths, so a sweep has at most MAX_VALUES * MAX_GAPS points.
MAX_VALUES = 50
MAX_GAPS = 5
PNG_NEEDS = "pip install 'leaf-focus[bench]'"  # matplotlib draws the PNG
Threshold = Literal["tau", "percentile"]
Progress = Callable[[str, int, int], None]  # (stage, done, total) within the stage
PromptKey = tuple[str, str, Reference]  # (instruction, output prefix, what answers it)


@dataclass(frozen=True)
class Sweep:
    """The thresholds tried, and the rule that recommends one of them."""

    threshold: Threshold = "tau"
    values: tuple[float, ...] | None = None  # None: DEFAULT_TAUS or DEFAULT_PERCENTILES
    min_gaps: tuple[float, ...] = DEFAULT_MIN_GAPS
    # The share of clean prompts the recommended value must leave unflagged.
    min_untouched: float = DEFAULT_MIN_UNTOUCHED

    def __post_init__(self) -> None:
        if self.threshold not in ("tau", "percentile"):
            raise ConfigError(f"threshold must be tau or percentile, got {self.threshold!r}",
                              field="threshold")
        values = self.values
        if values is None:
            values = DEFAULT_TAUS if self.threshold == "tau" else DEFAULT_PERCENTILES
        object.__setattr__(self, "values", _checked(values, self.threshold,
                                                    self.values_field, MAX_VALUES))
        object.__setattr__(self, "min_gaps", _checked(self.min_gaps, "min_gap", "min_gaps",
                                                      MAX_GAPS))
        if not (isinstance(self.min_untouched, int | float) and not isinstance(
                self.min_untouched, bool) and 0.0 <= self.min_untouched <= 1.0):
            raise ConfigError(f"min_untouched must be a share in [0, 1], got "
                              f"{self.min_untouched!r}", field="min_untouched")

    @property
    def values_field(self) -> str:
        """The option naming the values (on the command line and in the API)."""
        return "tau_values" if self.threshold == "tau" else "percentiles"

    def configs(self, base: DetectConfig) -> list[DetectConfig]:
        """One detection config per point: values outer, min gaps inner."""
        return [dataclasses.replace(base, min_gap=gap, **(
                    {"tau": value, "percentile": None} if self.threshold == "tau"
                    else {"percentile": value}))
                for value in self.values or () for gap in self.min_gaps]

    def rule(self) -> str:
        """The recommendation rule, in words (the result carries it)."""
        share = f"{self.min_untouched:.0%}"
        return (f"the highest fix rate among points that leave at least {share} of clean "
                "prompts untouched; ties go to more clean prompts untouched, then fewer flags "
                f"per prompt, then the smaller {self.threshold}; if no point qualifies, the "
                "highest fix rate overall (constraint_met false)")


# What a calibrate job may set (`configs_from`, the API's CalibrateJobCreate); the rest of
# a job (models, data, paths) is the server's.
SWEEP_OPTIONS = ("tau_values", "percentiles", "min_gaps", "min_untouched")
DETECT_OPTIONS = ("level", "segments", "unit", "normalise")  # held fixed during the sweep
JUDGE_OPTIONS = ("max_new_tokens", "batch_size", "answer_check")
OPTIONS = frozenset(SWEEP_OPTIONS + DETECT_OPTIONS + JUDGE_OPTIONS)


def configs_from(options: Mapping[str, Any]) -> tuple[Sweep, DetectConfig]:
    """The sweep and the fixed detection settings from flat options named as in the API
    (`tau_values` or `percentiles`, `min_gaps`, `min_untouched`, `level`, ...); absent ones
    take their defaults. Raises ConfigError naming the option."""
    taus, percentiles = options.get("tau_values"), options.get("percentiles")
    if taus is not None and percentiles is not None:
        raise ConfigError("give either tau_values or percentiles, not both", field="percentiles")
    values = taus if percentiles is None else percentiles
    given: dict[str, Any] = {}
    if values is not None:
        given["values"] = tuple(values)
    if options.get("min_gaps") is not None:
        given["min_gaps"] = tuple(options["min_gaps"])
    if options.get("min_untouched") is not None:
        given["min_untouched"] = options["min_untouched"]
    sweep = Sweep(threshold="tau" if percentiles is None else "percentile", **given)
    detect = DetectConfig(**{k: options[k] for k in DETECT_OPTIONS if k in options})
    return sweep, detect


def _checked(values: Sequence[float], setting: str, field: str, most: int
             ) -> tuple[float, ...]:
    """`values` sorted, each in DetectConfig's range for `setting`, none repeated."""
    spec = next(s for s in field_specs(DetectConfig) if s.name == setting)
    if isinstance(values, str | bytes) or not values:
        raise ConfigError(f"{field} must list at least one value", field=field)
    if len(values) > most:
        raise ConfigError(f"{field} lists {len(values)} values, more than {most}", field=field)
    for value in values:
        try:
            check_value(spec, value)
        except ConfigError as err:
            raise ConfigError(f"{field}: {err}", field=field) from None
    if len(set(values)) < len(values):
        raise ConfigError(f"{field} lists a value twice", field=field)
    return tuple(sorted(float(v) for v in values))


@dataclass(frozen=True)
class Point:
    """The curve at one threshold (and min gap)."""

    tau: float | None
    percentile: float | None
    min_gap: float
    flags_per_prompt: float  # flagged tokens per validation prompt, every view counted
    spans_per_prompt: float
    prompts_flagged: float  # share of validation prompts with at least one flag
    fixed: int  # teacher-right/student-wrong prompts the pruned prompt fixes
    fix_rate: float | None  # fixed / teacher-right-student-wrong prompts; None without any
    untouched: int  # clean prompts with no flag
    untouched_rate: float | None  # untouched / clean prompts; None without any

    @property
    def value(self) -> float:
        return self.tau if self.tau is not None else float(self.percentile or 0.0)


@dataclass(frozen=True)
class Calibration:
    """A sweep's curve and recommendation: calibration.json's content (`to_dict`)."""

    threshold: Threshold
    rows: int
    teacher_right_student_wrong: int
    clean: int  # both models right
    teacher_wrong: int
    points: tuple[Point, ...]
    recommended: Point | None  # None when no prompt is teacher-right/student-wrong
    rule: str
    constraint_met: bool
    generations: int  # greedy generations run: both models on every row, then pruned prompts
    seconds: dict[str, float]  # per stage, and "total"
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = {"schema": SCHEMA, **asdict(self)}
        for point in [*out["points"], out["recommended"]]:
            if point is not None:
                point.pop("percentile" if self.threshold == "tau" else "tau")
        return out


# ---------------------------------------------------------------------------- the sweep


def calibrate(
    detector: Detector, examples: Sequence[Example], *, sweep: Sweep, judge: Judge,
    detect: DetectConfig | None = None, progress: Progress | None = None,
) -> Calibration:
    """Answer every row with both models, analyse every row once, and sweep `sweep`'s
    thresholds over the analyses (`detect` gives level, segments and unit)."""
    from leaf_engine.generate import Prompt

    base = detect or DetectConfig()
    references = [_reference(e) for e in examples]
    clock = _Clock()

    def answered(loaded: LoadedModel, stage: str, keys: Sequence[PromptKey]) -> list[bool]:
        """Judge `keys` in chunks of a batch, so progress moves as batches finish."""
        out: list[bool] = []
        for start in range(0, len(keys), judge.batch_size):
            chunk = keys[start : start + judge.batch_size]
            out.extend(judge.correct(loaded, [Prompt(i, p) for i, p, _ in chunk],
                                     [r for _, _, r in chunk]))
            if progress is not None:
                progress(stage, start + len(chunk), len(keys))
        return out

    originals: list[PromptKey] = [(e.instruction, "", r) for e, r in zip(examples, references,
                                                                        strict=True)]
    teacher_ok = answered(detector.teacher, "answering (teacher)", originals)
    student_ok = answered(detector.student, "answering (student)", originals)
    clock.lap("answering")
    pairs = [(e.instruction, e.output) for e in examples]
    total = detector.work(pairs, base.level, base.segments)
    done = 0

    def saliency_step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("saliency", done, total)

    analyses = detector.analyse(pairs, level=base.level, segments=base.segments,
                                progress=saliency_step)
    clock.lap("saliency")
    points = sweep_points(
        analyses, references, teacher_ok, student_ok, sweep, base,
        answer=lambda keys: answered(detector.student, "pruned answers", keys))
    clock.lap("pruned answers")
    generations = 2 * len(examples) + points.generated
    # The detection settings the sweep held fixed (level, unit, ...): not the swept ones.
    fixed = {k: v for k, v in base.params().items()
             if k not in ("tau", "percentile", "min_gap", "method", "seed")}
    params = {"teacher": detector.teacher.name, "student": detector.student.name, **fixed,
              sweep.values_field: list(sweep.values or ()), "min_gaps": list(sweep.min_gaps),
              "min_untouched": sweep.min_untouched, "max_new_tokens": judge.max_new_tokens,
              "answer_check": judge.answer_check}
    return result_of(points, sweep, generations=generations, seconds=clock.laps,
                     params=params)


@dataclass(frozen=True)
class SweptPoints:
    points: tuple[Point, ...]
    rows: int
    targets: int  # teacher right, student wrong
    clean: int
    generated: int  # distinct pruned prompts answered


def sweep_points(
    analyses: Sequence[Analysis], references: Sequence[Reference], teacher_ok: Sequence[bool],
    student_ok: Sequence[bool], sweep: Sweep, base: DetectConfig, *,
    answer: Callable[[Sequence[PromptKey]], list[bool]],
) -> SweptPoints:
    """The curve from analyses and both models' verdicts on the original prompts.

    `answer` judges the student on (instruction, output prefix, reference) keys; each
    distinct key is passed to it once, in one call. A key equal to a target row's own
    original prompt is known to be wrong and never asked.
    """
    n = len(analyses)
    targets = [i for i in range(n) if teacher_ok[i] and not student_ok[i]]
    clean = [i for i in range(n) if teacher_ok[i] and student_ok[i]]
    known: dict[PromptKey, bool] = {
        (analyses[i].instruction, "", references[i]): False for i in targets}
    target_set = set(targets)
    per_point = []
    for config in sweep.configs(base):
        flags, spans = [0] * n, [0] * n
        fixes: list[list[PromptKey]] = []  # per target row, the pruned context of each view
        for i, analysis in enumerate(analyses):
            record = decide(analysis, config)
            flags[i] = sum(t.confounder for view in record.views for t in view.tokens)
            spans[i] = sum(len(view.spans) for view in record.views)
            if i in target_set:
                fixes.append([(v.collective.instruction, v.collective.output_prefix,
                               references[i]) for v in record.views])
        per_point.append((config, flags, spans, fixes))
    asked = list(dict.fromkeys(k for *_, fixes in per_point for keys in fixes for k in keys
                               if k not in known))
    if asked:
        known.update(zip(asked, answer(asked), strict=True))
    points = []
    for config, flags, spans, fixes in per_point:
        fixed = sum(all(known[k] for k in keys) for keys in fixes)
        untouched = sum(flags[i] == 0 for i in clean)
        points.append(Point(
            tau=config.tau if config.percentile is None else None,
            percentile=config.percentile, min_gap=config.min_gap,
            flags_per_prompt=_mean(flags), spans_per_prompt=_mean(spans),
            prompts_flagged=_share(sum(f > 0 for f in flags), n),
            fixed=fixed, fix_rate=_share(fixed, len(targets)) if targets else None,
            untouched=untouched, untouched_rate=_share(untouched, len(clean)) if clean else None,
        ))
    return SweptPoints(tuple(points), n, len(targets), len(clean), len(asked))


def recommend(points: Sequence[Point], min_untouched: float) -> tuple[Point | None, bool]:
    """(the recommended point, whether it meets `min_untouched`); see `Sweep.rule`."""
    scored = [p for p in points if p.fix_rate is not None]
    if not scored:
        return None, False

    def key(p: Point) -> tuple[float, float, float, float]:
        return (p.fix_rate or 0.0, p.untouched_rate or 0.0, -p.flags_per_prompt, -p.value)

    # A validation set without clean prompts cannot break the constraint.
    eligible = [p for p in scored
                if p.untouched_rate is None or p.untouched_rate >= min_untouched]
    if eligible:
        return max(eligible, key=key), True
    return max(scored, key=key), False


def result_of(swept: SweptPoints, sweep: Sweep, *, generations: int,
              seconds: dict[str, float], params: dict[str, Any]) -> Calibration:
    best, met = recommend(swept.points, sweep.min_untouched)
    if best is None:
        log.warning("calibration: no validation prompt is answered correctly by the teacher "
                    "and wrongly by the student, so there is nothing to fix and no value to "
                    "recommend")
    return Calibration(
        threshold=sweep.threshold, rows=swept.rows, teacher_right_student_wrong=swept.targets,
        clean=swept.clean, teacher_wrong=swept.rows - swept.targets - swept.clean,
        points=swept.points, recommended=best, rule=sweep.rule(), constraint_met=met,
        generations=generations, seconds=seconds, params=params)


def _reference(example: Example) -> Reference:
    from leaf_engine.evaluate import reference_of

    try:
        return reference_of({**dict(example.extra), "answer": example.answer})
    except InputError as err:
        raise InputError(f"row '{example.id}': {err}", field=err.field) from None


def _mean(values: Sequence[int]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0


def _share(count: int, total: int) -> float:
    return round(count / total, 6) if total else 0.0


class _Clock:
    """Seconds per stage, and in all."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.laps["total"] = round(now - self.start, 3)
        self.last = now


# ---------------------------------------------------------------------------- files


def write_calibration(result: Calibration, out_dir: str | Path) -> tuple[list[Path], str | None]:
    """Write CURVE_JSON and, where matplotlib is installed, CURVE_PNG into `out_dir`.
    Returns the files written and, when the PNG could not be drawn, why."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out / CURVE_JSON) as handle:
        json.dump(result.to_dict(), handle, indent=1)
        handle.write("\n")
    written = [out / CURVE_JSON]
    try:
        import matplotlib
    except ImportError:
        return written, f"the PNG needs matplotlib: {PNG_NEEDS}"
    matplotlib.use("Agg")  # no display on a server or in CI
    written.append(_plot(result, out / CURVE_PNG))
    return written, None


def _plot(result: Calibration, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, rates = plt.subplots(figsize=(7, 5), dpi=120)
    flags = rates.twinx()
    gaps = sorted({p.min_gap for p in result.points})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, gap in enumerate(gaps):
        mine = [p for p in result.points if p.min_gap == gap]
        x = [p.value for p in mine]
        color = colors[k % len(colors)]
        label = f" (min gap {gap:g})" if len(gaps) > 1 else ""
        if result.teacher_right_student_wrong:
            rates.plot(x, [p.fix_rate for p in mine], "-o", color=color, markersize=3,
                       label=f"fix rate{label}")
        if result.clean:
            rates.plot(x, [p.untouched_rate for p in mine], "--s", color=color, markersize=3,
                       label=f"clean untouched{label}")
        flags.plot(x, [p.flags_per_prompt for p in mine], ":", color=color, alpha=0.7,
                   label=f"flags per prompt{label}")
    if result.recommended is not None:
        rates.axvline(result.recommended.value, color="grey", linewidth=1,
                      label=f"recommended: {result.threshold} {result.recommended.value:g}")
    rates.set_xlabel(result.threshold)
    rates.set_ylabel("share of prompts")
    rates.set_ylim(-0.02, 1.02)
    flags.set_ylabel("flags per prompt")
    flags.set_ylim(bottom=0)
    rates.set_title(f"{result.rows} prompts: {result.teacher_right_student_wrong} teacher-right/"
                    f"student-wrong, {result.clean} clean", fontsize=10)
    handles = rates.get_legend_handles_labels()
    more = flags.get_legend_handles_labels()
    rates.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper center",
                 bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
