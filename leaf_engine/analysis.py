"""The cheap half of confounder detection: raw per-token numbers in, flags and pruned
prompts out. Needs numpy only, so the API process can apply a new tau to a cached analysis
without importing torch.

For each context token x_i with raw saliencies g_T(x_i) and g_S(x_i) (Guo et al., 2025, Eq. 2):

    t_i = minmax(g_T)_i,  s_i = minmax(g_S)_i,  d_i = t_i - s_i,  score_i = minmax(d)_i

and x_i is a confounder when score_i <= tau (the paper), or when it is in the bottom
`percentile` percent of scores with score_i <= 0.5 (the official code). Whitespace is never
flagged.
"""

from __future__ import annotations

import re
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

Method = Literal["gradient", "ppl", "random"]
Level = Literal["instruction", "response"]
Unit = Literal["token", "word", "sentence"]
PERCENTILE_CAP = 0.5  # the official code never flags a token scoring above the midpoint


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
    unit: Unit = setting("token", "Aggregate saliency to words or sentences before scoring.")
    min_gap: float = setting(0.0, "Flag nothing unless the raw normalised gap max(s - t) "
                                  "reaches this.", ge=0, le=1)

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
    """The model-dependent half of detection for one instruction/output pair."""

    instruction: str
    output: str
    views: tuple[ViewAnalysis, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "output": self.output,
                "views": [v.to_dict() for v in self.views]}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Analysis:
        return Analysis(data["instruction"], data["output"],
                        tuple(ViewAnalysis.from_dict(v) for v in data["views"]))


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

_WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace-delimited words of `text`, as character spans."""
    return [m.span() for m in _WORD.finditer(text)]
_SENTENCE = re.compile(r"[^\s].*?(?:[.!?](?=\s|$)|\n|$)", re.S)


def unit_ids(tokens: Sequence[ContextToken], texts: dict[str, str], unit: Unit) -> np.ndarray:
    """Index of the unit (token, word or sentence) each token belongs to."""
    if unit == "token":
        return np.arange(len(tokens))
    pattern = _WORD if unit == "word" else _SENTENCE
    bounds = {f: [m.span() for m in pattern.finditer(text)] for f, text in texts.items()}
    keys: dict[tuple[str, int], int] = {}
    out = np.empty(len(tokens), dtype=np.int64)
    for i, tok in enumerate(tokens):
        text = texts[tok.field]
        # Place a token by its first visible character; whitespace tokens stay on their own.
        visible_at = next((p for p in range(tok.start, tok.end) if not text[p].isspace()), None)
        if visible_at is None:
            key = (tok.field, -1 - i)
        else:
            idx = next((j for j, (s, e) in enumerate(bounds[tok.field]) if s <= visible_at < e), -1)
            key = (tok.field, idx if idx >= 0 else -1 - i)
        out[i] = keys.setdefault(key, len(keys))
    return out


def aggregate(values: np.ndarray, units: np.ndarray, how: Literal["l2", "sum"]) -> np.ndarray:
    """Per-unit values: L2 norm of the tokens' norms (the norm of their stacked gradients),
    or a sum (surprisal of a word is the sum over its tokens). NaN entries are skipped."""
    n = int(units.max()) + 1 if units.size else 0
    out = np.zeros(n, dtype=np.float64)
    clean = np.nan_to_num(values, nan=0.0)
    np.add.at(out, units, clean**2 if how == "l2" else clean)
    return np.sqrt(out) if how == "l2" else out


# ---------------------------------------------------------------------------- decide


def decide(
    analysis: Analysis, config: DetectConfig, *, example_id: str = "",
    passthrough: dict[str, Any] | None = None,
) -> DetectionRecord:
    """Apply thresholds and method to raw numbers: the cheap half of detection."""
    views = tuple(
        _decide_view(analysis, view, index, config, example_id)
        for index, view in enumerate(analysis.views)
    )
    return DetectionRecord(
        id=example_id, instruction=analysis.instruction, output=analysis.output, views=views,
        params=config.params(), passthrough=dict(passthrough or {}),
    )


def _decide_view(
    analysis: Analysis, view: ViewAnalysis, index: int, config: DetectConfig, example_id: str
) -> ViewResult:
    texts = {"instruction": analysis.instruction, "output": analysis.output[: view.target[0]]}
    units = unit_ids(view.tokens, texts, config.unit)
    n_units = int(units.max()) + 1
    unit_text = ["" for _ in range(n_units)]
    for tok, u in zip(view.tokens, units, strict=True):
        unit_text[u] += texts[tok.field][tok.start : tok.end]
    visible = np.array([bool(t.strip()) for t in unit_text])
    t, s, score = confounder_scores(
        aggregate(view.teacher, units, "l2"), aggregate(view.student, units, "l2"), visible
    )
    flags = threshold_flags(score, visible, tau=config.tau, percentile=config.percentile)
    if config.min_gap > 0 and visible.any() and float(np.max((s - t)[visible])) < config.min_gap:
        flags[:] = False  # no token is much more salient to the student than to the teacher
    if config.method != "gradient":
        rng = np.random.default_rng([config.seed, zlib.crc32(example_id.encode()), index])
        priority = None
        if config.method == "ppl":
            if view.surprisal is None:
                raise ConfigError("method ppl needs an analysis run with surprisal",
                                  field="method")
            priority = aggregate(view.surprisal, units, "sum")
        flags = _pick_same_count(int(flags.sum()), visible, priority=priority, rng=rng)

    scored = tuple(
        TokenScore(
            text=texts[tok.field][tok.start : tok.end], start=tok.start, end=tok.end,
            teacher=float(t[u]), student=float(s[u]), score=float(score[u]),
            confounder=bool(flags[u]) and bool(texts[tok.field][tok.start : tok.end].strip()),
            field=tok.field,
        )
        for tok, u in zip(view.tokens, units, strict=True)
    )
    return _counterfactuals(index, view.target, scored, texts)


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
