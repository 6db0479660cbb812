"""The cheap half of confounder detection: raw per-token numbers in, flags and pruned
prompts out. Needs numpy only, so the API process can apply a new tau to a cached analysis
without importing torch.

For each context unit x_i with raw saliencies g_T(x_i) and g_S(x_i) (Guo et al., 2025, Eq. 2):

    t_i = minmax(g_T)_i,  s_i = minmax(g_S)_i,  d_i = t_i - s_i,  score_i = minmax(d)_i

and x_i is a confounder when score_i <= tau (the paper), or when it is in the bottom
`percentile` percent of scores with score_i <= 0.5 (the official code). A unit is a word by
default (`leaf_engine.units`: whole words and numbers, punctuation apart), a token (the
paper's exact cut) or a sentence. Whitespace and punctuation are never flagged.

At response level, the context of a later segment is the instruction plus the earlier
segments. `normalise="segment"` (the default) min-max normalises and thresholds each of the
two on its own, as the official response-level script does for the response part it scores
(everything after its `####` marker, normalised over that range alone); `"joint"` treats the
whole context as one range, so the instruction and the response prefix compete for the
same minimum.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from leaf_engine.config_fields import check_fields, setting
from leaf_engine.data import Example
from leaf_engine.errors import ConfigError
from leaf_engine.prune import find_spans, remove_spans
from leaf_engine.records import (
    ContextToken,
    Counterfactual,
    DetectionRecord,
    FieldSpan,
    TokenScore,
    ViewResult,
)
from leaf_engine.units import is_word, members, pool, spans_of, words_cut

Method = Literal["gradient", "ppl", "random"]
Level = Literal["instruction", "response"]
Unit = Literal["token", "word", "sentence"]
Normalise = Literal["segment", "joint"]
Compare = Literal["tokens", "words"]
PERCENTILE_CAP = 0.5  # the official code never flags a token scoring above the midpoint
MAX_CUT_WORDS = 5  # words a "cut inside a word" warning quotes


@dataclass(frozen=True)
class DetectConfig:
    """How tokens are flagged. Everything here is applied after the models ran."""

    tau: float = setting(0.1, "Flag tokens whose normalised score is <= tau (paper: "
                              "0.05-0.10 instruction level, 0.10-0.15 response level).",
                         ge=0, le=1)
    percentile: float | None = setting(None, "Flag the bottom PERCENT % of scores instead of "
                                             "using tau (the official code: 5 math, 10 code).",
                                       gt=0, le=100)
    method: Method = setting("gradient", "gradient (LeaF); ppl and random flag as many "
                                         "tokens as gradient does (baselines).")
    level: Level = setting("instruction", "response: also score earlier response segments "
                                          "as context.")
    segments: int = setting(2, "Response segments at level response.", ge=2, le=3)
    seed: int = setting(0, "Seed for method random.", ge=0)
    unit: Unit = setting("word", "word: score whole words and numbers and prune only whole "
                                 "words, punctuation kept; token: the paper's exact token cut "
                                 "(warns when it cuts inside a word); sentence: whole "
                                 "sentences.")
    normalise: Normalise = setting("segment", "At level response: segment (the official code) "
                                              "normalises the instruction and the earlier "
                                              "response segments each on its own; joint "
                                              "normalises the whole context at once.")
    min_gap: float = setting(0.0, "Flag nothing in a context (in a part of it, with normalise "
                                  "segment) unless the normalised gap max(s - t) reaches this.",
                             ge=0, le=1)

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def needs_surprisal(self) -> bool:
        return self.method == "ppl"

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        if self.percentile is None:
            out.pop("percentile")
        else:
            out.pop("tau")
        if self.level == "instruction":
            out.pop("segments")
            out.pop("normalise")
        return out


@dataclass(frozen=True)
class ViewAnalysis:
    """Raw numbers for one context: context tokens and each model's raw saliency."""

    target: tuple[int, int]  # the predicted characters of the output
    tokens: tuple[ContextToken, ...]
    teacher: np.ndarray  # (N,) raw gradient norms
    student: np.ndarray  # (N,)
    surprisal: np.ndarray | None  # (N,) the student's -log p, for method ppl

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": list(self.target),
            "tokens": [[t.field, t.start, t.end] for t in self.tokens],
            "teacher": self.teacher.tolist(),
            "student": self.student.tolist(),
            "surprisal": None if self.surprisal is None else
            [None if np.isnan(x) else x for x in self.surprisal.tolist()],
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ViewAnalysis:
        surprisal = data.get("surprisal")
        return ViewAnalysis(
            target=(int(data["target"][0]), int(data["target"][1])),
            tokens=tuple(ContextToken(f, int(s), int(e)) for f, s, e in data["tokens"]),
            teacher=np.asarray(data["teacher"], dtype=np.float64),
            student=np.asarray(data["student"], dtype=np.float64),
            surprisal=None if surprisal is None else
            np.array([np.nan if x is None else x for x in surprisal], dtype=np.float64),
        )


@dataclass(frozen=True)
class Analysis:
    """The model-dependent half of detection for one instruction/output pair.

    `compare` says what the views' units are: the models' shared tokens, or words (when the
    tokenizers differ). `warnings` are notes about the models (a fallback template) that every
    record made from this analysis repeats.
    """

    instruction: str
    output: str
    views: tuple[ViewAnalysis, ...]
    compare: Compare = "tokens"
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "output": self.output,
                "views": [v.to_dict() for v in self.views], "compare": self.compare,
                "warnings": list(self.warnings)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Analysis:
        return Analysis(data["instruction"], data["output"],
                        tuple(ViewAnalysis.from_dict(v) for v in data["views"]),
                        compare=data.get("compare", "tokens"),
                        warnings=tuple(data.get("warnings", ())))


# ---------------------------------------------------------------------------- scoring


def minmax(values: np.ndarray, over: np.ndarray | None = None) -> np.ndarray:
    """Min-max normalise to [0, 1] using the range of `values[over]`.

    Values outside that range are clipped. With no spread there is no information, and
    every value maps to the midpoint 0.5.
    """
    ref = values if over is None else values[over]
    if ref.size == 0:
        return np.full_like(values, 0.5, dtype=np.float64)
    lo, hi = float(np.min(ref)), float(np.max(ref))
    if not hi > lo:
        return np.full_like(values, 0.5, dtype=np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def confounder_scores(
    teacher: np.ndarray, student: np.ndarray, visible: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, s, score): normalised saliencies and the normalised difference, per Eq. 2."""
    t = minmax(teacher, visible)
    s = minmax(student, visible)
    return t, s, minmax(t - s, visible)


def threshold_flags(
    score: np.ndarray, visible: np.ndarray, *, tau: float, percentile: float | None
) -> np.ndarray:
    """Boolean flags: score <= tau, or bottom-percentile (capped at 0.5); never invisible."""
    if not visible.any():
        return np.zeros_like(visible)
    if percentile is None:
        cut = tau
    else:
        cut = min(percentile_cut(score[visible], percentile), PERCENTILE_CAP)
    return (score <= cut) & visible


def percentile_cut(scores: np.ndarray, percentile: float) -> float:
    """The official code's cut: the sorted score at index floor(n * p / 100)."""
    ordered = np.sort(scores)
    return float(ordered[min(int(len(ordered) * percentile / 100.0), len(ordered) - 1)])


def _pick_same_count(
    k: int, visible: np.ndarray, *, priority: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """Flag k visible units: the k highest `priority` values, or k at random."""
    flags = np.zeros_like(visible)
    candidates = np.flatnonzero(visible)
    if k == 0 or candidates.size == 0:
        return flags
    if priority is None:
        chosen = rng.choice(candidates, size=min(k, candidates.size), replace=False)
    else:
        finite = candidates[np.isfinite(priority[candidates])]
        chosen = finite[np.argsort(-priority[finite], kind="stable")[:k]]
    flags[chosen] = True
    return flags


# ---------------------------------------------------------------------------- units


def unit_used(config: DetectConfig, compare: Compare) -> Unit:
    """The unit a record is scored in: models compared on words have no tokens to cut."""
    return "word" if config.unit == "token" and compare == "words" else config.unit


@dataclass(frozen=True)
class Units:
    """A view's context in the unit it is scored in. `entries` are what a record lists (the
    tokens, or the pieces of `leaf_engine.units`); `owner[i]` is the scored unit of entry i."""

    entries: tuple[ContextToken, ...]
    owner: np.ndarray  # (E,) index into the per-unit arrays
    text: tuple[str, ...]  # (U,) each unit's text
    field: tuple[str, ...]  # (U,)
    teacher: np.ndarray  # (U,) raw saliency
    student: np.ndarray  # (U,)
    surprisal: np.ndarray | None  # (U,)


def units_of(view: ViewAnalysis, texts: dict[str, str], unit: Unit) -> Units:
    """Pool a view's per-token numbers onto the scored units (`leaf_engine.units`)."""
    def text_of(span: ContextToken) -> str:
        return texts[span.field][span.start : span.end]

    if unit == "token":
        return Units(view.tokens, np.arange(len(view.tokens)),
                     tuple(text_of(t) for t in view.tokens),
                     tuple(t.field for t in view.tokens), view.teacher, view.student,
                     view.surprisal)
    scored = spans_of(texts, unit)
    groups = members(view.tokens, scored, texts)
    keep = [k for k, g in enumerate(groups) if g]  # truncation can leave text unscored
    scored = tuple(scored[k] for k in keep)
    groups = [groups[k] for k in keep]
    if unit == "word":
        entries, owner = scored, np.arange(len(scored))
    else:  # a sentence is listed by its pieces, so the record reads like the word unit
        words = spans_of(texts, "word")
        entries = tuple(w for w, g in zip(words, members(view.tokens, words, texts), strict=True)
                        if g)
        owner = np.array([next(k for k, s in enumerate(scored) if s.field == w.field
                               and s.start <= w.start < s.end) for w in entries], dtype=np.int64)
    surprisal = None if view.surprisal is None else pool(view.surprisal, groups, "sum")
    return Units(entries, owner, tuple(text_of(s) for s in scored),
                 tuple(s.field for s in scored), pool(view.teacher, groups, "rms"),
                 pool(view.student, groups, "rms"), surprisal)


def unit_ids(tokens: Sequence[ContextToken], texts: dict[str, str], unit: Unit) -> np.ndarray:
    """Index of the scored unit each entry of a record belongs to, as `decide` groups them:
    tokens and words are their own units; a sentence holds the entries whose first visible
    character it contains (entries with none stay on their own)."""
    if unit != "sentence":
        return np.arange(len(tokens))
    bounds = {f: [(s.start, s.end) for s in spans_of({f: text}, "sentence")]
              for f, text in texts.items()}
    keys: dict[tuple[str, int], int] = {}
    out = np.empty(len(tokens), dtype=np.int64)
    for i, tok in enumerate(tokens):
        text = texts[tok.field]
        visible_at = next((p for p in range(tok.start, tok.end) if not text[p].isspace()), None)
        idx = -1
        if visible_at is not None:
            idx = next((j for j, (s, e) in enumerate(bounds[tok.field]) if s <= visible_at < e),
                       -1)
        out[i] = keys.setdefault((tok.field, idx if idx >= 0 else -1 - i), len(keys))
    return out


# ---------------------------------------------------------------------------- decide


def decide(
    analysis: Analysis, config: DetectConfig, *, example_id: str = "",
    passthrough: dict[str, Any] | None = None,
) -> DetectionRecord:
    """Apply thresholds and method to raw numbers: the cheap half of detection."""
    unit = unit_used(config, analysis.compare)
    views, cut = [], []
    for index, view in enumerate(analysis.views):
        result, words = _decide_view(analysis, view, index, config, unit, example_id)
        views.append(result)
        cut.extend(w for w in words if w not in cut)
    warnings = list(analysis.warnings)
    if cut:
        quoted = ", ".join(f'"{w}"' for w in cut[:MAX_CUT_WORDS])
        more = f" and {len(cut) - MAX_CUT_WORDS} more" if len(cut) > MAX_CUT_WORDS else ""
        warnings.append(f"unit token: pruning cuts inside {len(cut)} "
                        f"word{'s' if len(cut) > 1 else ''} ({quoted}{more}); unit word "
                        "prunes whole words only")
    params = {**config.params(), "unit": unit, "compare": analysis.compare}
    return DetectionRecord(
        id=example_id, instruction=analysis.instruction, output=analysis.output,
        views=tuple(views), params=params, passthrough=dict(passthrough or {}),
        warnings=tuple(warnings),
    )


def _decide_view(
    analysis: Analysis, view: ViewAnalysis, index: int, config: DetectConfig, unit: Unit,
    example_id: str,
) -> tuple[ViewResult, list[str]]:
    """One context's record, and the words its token cuts fall inside (unit token only)."""
    texts = {"instruction": analysis.instruction, "output": analysis.output[: view.target[0]]}
    u = units_of(view, texts, unit)
    visible = np.array([bool(t.strip()) for t in u.text], dtype=bool)
    flaggable = visible & np.array([is_word(t) for t in u.text], dtype=bool)
    fields = np.array(u.field)
    ranges = ([fields == f for f in dict.fromkeys(u.field)] if config.normalise == "segment"
              else [np.ones(len(u.text), dtype=bool)])
    t = np.zeros(len(u.text))
    s = np.zeros(len(u.text))
    score = np.zeros(len(u.text))
    flags = np.zeros(len(u.text), dtype=bool)
    for mine in ranges:
        shown = visible & mine
        t_r, s_r, score_r = confounder_scores(u.teacher, u.student, shown)
        t[mine], s[mine], score[mine] = t_r[mine], s_r[mine], score_r[mine]
        gap = float(np.max((s_r - t_r)[shown])) if shown.any() else 0.0
        if gap < config.min_gap:
            continue  # no unit here is much more salient to the student than to the teacher
        hit = threshold_flags(score_r, shown, tau=config.tau, percentile=config.percentile)
        flags |= hit & mine & flaggable
    if config.method != "gradient":
        rng = np.random.default_rng([config.seed, zlib.crc32(example_id.encode()), index])
        priority = None
        if config.method == "ppl":
            if u.surprisal is None:
                raise ConfigError("method ppl needs an analysis run with surprisal",
                                  field="method")
            priority = u.surprisal
        flags = _pick_same_count(int(flags.sum()), flaggable, priority=priority, rng=rng)

    scored = []
    for entry, k in zip(u.entries, u.owner, strict=True):
        text = texts[entry.field][entry.start : entry.end]
        scored.append(TokenScore(
            text=text, start=entry.start, end=entry.end, teacher=float(t[k]),
            student=float(s[k]), score=float(score[k]),
            confounder=bool(flags[k]) and bool(text.strip()), field=entry.field,
        ))
    result = _counterfactuals(index, view.target, tuple(scored), texts)
    cut: list[str] = []
    if unit == "token":
        for name, text in texts.items():
            cut.extend(words_cut(text, [(sp.start, sp.end) for sp in result.spans
                                        if sp.field == name]))
    return result, cut


def _counterfactuals(
    segment: int, target: tuple[int, int], tokens: tuple[TokenScore, ...], texts: dict[str, str]
) -> ViewResult:
    spans: list[FieldSpan] = []
    for name in ("instruction", "output"):
        mine = [tok for tok in tokens if tok.field == name]
        found = find_spans(texts[name], [(x.start, x.end) for x in mine],
                           [x.confounder for x in mine])
        spans.extend(FieldSpan(name, a, b) for a, b in found)  # type: ignore[arg-type]

    def masked(chosen: Sequence[FieldSpan]) -> tuple[str, ...]:
        return tuple(x.text for x in tokens if x.confounder and any(
            x.field == sp.field and sp.start <= x.start and x.end <= sp.end for sp in chosen))

    def cut(chosen: Sequence[FieldSpan]) -> Counterfactual:
        def prune(name: str) -> str:
            return remove_spans(texts[name], [(x.start, x.end) for x in chosen if x.field == name])

        return Counterfactual(prune("instruction"), prune("output"),
                              chosen[0] if len(chosen) == 1 else None, masked(chosen))

    pruned = tuple(cut([sp]) for sp in spans)
    collective = cut(spans)
    collective = Counterfactual(collective.instruction, collective.output_prefix, None,
                                collective.masked_tokens)
    return ViewResult(segment, target, tokens, tuple(spans), pruned, collective)


def passthrough(example: Example) -> dict[str, Any]:
    """Input fields a record carries along unchanged."""
    out: dict[str, Any] = dict(example.extra)
    if example.answer is not None:
        out["answer"] = example.answer
    return out
