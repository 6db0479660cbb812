"""`leaf calibrate`: sweep tau (or a percentile) on a validation file, recommend a value, and
write the curve (calibration.json, calibration.png)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from leaf_cli.evaluate import allow_unsandboxed_with_warning
from leaf_cli.options import config_options
from leaf_cli.progress import bar
from leaf_engine.analysis import DetectConfig
from leaf_engine.calibrate import (
    CURVE_JSON,
    CURVE_PNG,
    DEFAULT_MIN_GAPS,
    DEFAULT_MIN_UNTOUCHED,
    DEFAULT_PERCENTILES,
    DEFAULT_TAUS,
    Calibration,
    Sweep,
)
from leaf_engine.eval_config import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, EvalConfig


def _numbers(ctx: click.Context, param: click.Parameter, value: str | None
             ) -> tuple[float, ...] | None:
    """A comma-separated list of numbers; "" (the option given without a list) is None."""
    if not value:
        return None
    try:
        return tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}",
                                 ctx=ctx, param=param) from None


def _listed(values: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in values)


@click.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Validation JSONL: instruction, output, answer (or tests)[, input, id].")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help=f"Directory for {CURVE_JSON} and {CURVE_PNG}.")
@click.option("--teacher", default=None,
              help="Teacher: local path, hub id or .gguf file.  [default: the bundled demo "
                   "teacher]")
@click.option("--student", default=None,
              help="Student: local path, hub id or .gguf file.  [default: the bundled demo "
                   "student]")
@click.option("--tau-values", callback=_numbers, default=None, metavar="LIST",
              help=f"Taus to try, comma-separated (the paper's Eq. 2).  [default: "
                   f"{_listed(DEFAULT_TAUS)}]")
@click.option("--percentiles", callback=_numbers, default=None, is_flag=False, flag_value="",
              metavar="[LIST]",
              help="Sweep the official code's rule instead (flag the bottom P % of scores, "
                   f"capped at 0.5); alone, the grid {_listed(DEFAULT_PERCENTILES)}.")
@click.option("--min-gaps", callback=_numbers, default=_listed(DEFAULT_MIN_GAPS),
              show_default=True, metavar="LIST",
              help="min_gap values to try with each threshold: a prompt whose largest "
                   "student-over-teacher gap is below one is left unflagged.")
@click.option("--min-untouched", type=click.FloatRange(0, 1), default=DEFAULT_MIN_UNTOUCHED,
              show_default=True,
              help="Recommend only values leaving at least this share of clean prompts "
                   "unflagged (falls back to the best fix rate if none does).")
@config_options(DetectConfig, ("level", "segments", "unit", "normalise"))
@config_options(EvalConfig, ("answer_check",))
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS,
              show_default=True, help="Tokens generated per answer, at most.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE,
              show_default=True, help="Examples per saliency pass and per generation batch.")
@click.option("--prompt-template", default=None,
              help="Plain template with '{instruction}' for models without a chat template.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--truncate", is_flag=True,
              help="Cut responses that exceed a model's context instead of failing.")
def calibrate(
    data: Path, out: Path, teacher: str | None, student: str | None,
    tau_values: tuple[float, ...] | None, percentiles: tuple[float, ...] | None,
    min_gaps: tuple[float, ...], min_untouched: float, level: str, segments: int, unit: str,
    normalise: str, answer_check: str, max_new_tokens: int, batch_size: int,
    prompt_template: str | None, device: str, truncate: bool,
) -> None:
    """Choose tau on a validation set: per value, flags per prompt, the share of
    teacher-right/student-wrong prompts that pruning fixes, and the share of clean prompts
    left unflagged; recommends a value and writes the curve."""
    from leaf_engine.calibrate import calibrate as run
    from leaf_engine.calibrate import write_calibration
    from leaf_engine.data import read_examples
    from leaf_engine.detect import Detector
    from leaf_engine.models import load_model
    from leaf_engine.selection import Judge, require_references

    ctx = click.get_current_context()
    by_percentile = ctx.get_parameter_source("percentiles") is not \
        click.core.ParameterSource.DEFAULT
    if by_percentile and tau_values is not None:
        raise click.UsageError("give either --tau-values or --percentiles, not both")
    sweep = Sweep(threshold="percentile" if by_percentile else "tau",
                  values=percentiles if by_percentile else tau_values, min_gaps=min_gaps,
                  min_untouched=min_untouched)
    detect = DetectConfig(level=level, segments=segments, unit=unit,  # type: ignore[arg-type]
                          normalise=normalise)  # type: ignore[arg-type]
    examples = read_examples(data)
    require_references(examples, "leaf calibrate")
    allow_unsandboxed_with_warning()
    if teacher is None or student is None:
        from leaf_engine.demo import demo_pair

        demo_teacher, demo_student = demo_pair()
        teacher, student = teacher or demo_teacher, student or demo_student
    models = [load_model(name, device=device, prompt_template=prompt_template)
              for name in (teacher, student)]
    for loaded in models:
        if loaded.template_note:
            click.echo(f"leaf: warning: {loaded.template_note}", err=True)
    detector = Detector(*models, batch_size=batch_size, truncate=truncate)
    judge = Judge(max_new_tokens=max_new_tokens, batch_size=batch_size,
                  answer_check=answer_check)  # type: ignore[arg-type]
    with bar(0, "calibrate") as progress:
        shown = [""]  # the stage the bar describes

        def update(stage: str, done: int, total: int) -> None:
            if shown[0] != stage:
                shown[0] = stage
                progress.set_description_str(stage, refresh=False)
                progress.reset(total=total)
            progress.total = total
            progress.n = done
            progress.refresh()

        result = run(detector, examples, sweep=sweep, judge=judge, detect=detect,
                     progress=update)
    result = dataclasses.replace(result, params={"data": str(data), **result.params})
    written, note = write_calibration(result, out)
    click.echo(table(result))
    click.echo(verdict(result), err=True)
    click.echo(f"wrote {', '.join(p.name for p in written)} to {out} in "
               f"{result.seconds['total']:.0f} s ({result.generations} generations)", err=True)
    if note:
        click.echo(f"leaf: note: {note}", err=True)


def table(result: Calibration) -> str:
    """The curve as a plain-text table; the recommended row is marked with '*'."""
    name = result.threshold
    gaps = len({p.min_gap for p in result.points}) > 1
    head = [name, *(["min_gap"] if gaps else []), "flags/prompt", "fixed", "fix rate",
            "clean untouched"]
    rows = [head]
    targets, clean = result.teacher_right_student_wrong, result.clean
    for p in result.points:
        mark = "*" if p == result.recommended else " "
        rows.append([f"{mark}{p.value:g}", *([f"{p.min_gap:g}"] if gaps else []),
                     f"{p.flags_per_prompt:.2f}", f"{p.fixed}/{targets}", _rate(p.fix_rate),
                     f"{p.untouched}/{clean} ({_rate(p.untouched_rate)})"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def verdict(result: Calibration) -> str:
    counts = (f"{result.rows} rows: {result.teacher_right_student_wrong} teacher-right/"
              f"student-wrong, {result.clean} clean, {result.teacher_wrong} teacher-wrong")
    best = result.recommended
    if best is None:
        return f"{counts}; nothing to fix, so no value is recommended"
    gap = f", min_gap {best.min_gap:g}" if len({p.min_gap for p in result.points}) > 1 else ""
    caveat = "" if result.constraint_met else " (no value met --min-untouched)"
    return (f"{counts}; recommended {result.threshold} {best.value:g}{gap}: fixes "
            f"{_rate(best.fix_rate)}, {best.flags_per_prompt:.2f} flags per prompt{caveat}")


def _rate(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"
