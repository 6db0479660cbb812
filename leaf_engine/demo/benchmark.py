"""Scoring confounder detection against the demo task's ground truth.

Every demo problem knows its distractor sentences and their key tokens (the numbers), so a
detection record can be scored token by token: precision, recall and F1 against distractor
tokens and against key tokens, the share of key tokens and of distractor sentences hit, and
false flags on problems that have no distractor at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from leaf_engine.analysis import Analysis, DetectConfig, decide
from leaf_engine.demo.tasks import Problem
from leaf_engine.records import DetectionRecord

BASELINES = ("teacher-only", "student-only")


@dataclass
class Counts:
    """Pooled counts over problems (micro-averaged metrics)."""

    problems: int = 0
    flagged: int = 0
    hit_distractor: int = 0  # flagged tokens inside a distractor sentence
    distractor_tokens: int = 0
    hit_key: int = 0  # flagged key tokens
    key_tokens: int = 0
    sentences: int = 0
    sentences_hit: int = 0
    clean_problems: int = 0
    clean_flags: int = 0

    def metrics(self) -> dict[str, float]:
        def f1(p: float, r: float) -> float:
            return 0.0 if p + r == 0 else 2 * p * r / (p + r)

        tp = self.hit_distractor / self.flagged if self.flagged else 0.0
        tr = self.hit_distractor / self.distractor_tokens if self.distractor_tokens else 0.0
        kp = self.hit_key / self.flagged if self.flagged else 0.0
        kr = self.hit_key / self.key_tokens if self.key_tokens else 0.0
        return {
            "token_precision": tp, "token_recall": tr, "token_f1": f1(tp, tr),
            "key_precision": kp, "key_recall": kr, "key_f1": f1(kp, kr),
            "sentence_hit": self.sentences_hit / self.sentences if self.sentences else 0.0,
            "clean_flags": self.clean_flags / self.clean_problems if self.clean_problems else 0.0,
            "flags": self.flagged / self.problems if self.problems else 0.0,
        }


def _inside(start: int, end: int, spans: Sequence[Sequence[int]]) -> bool:
    return any(s <= start and end <= e for s, e in spans)


def count(records: Sequence[DetectionRecord], problems: Sequence[Problem]) -> Counts:
    c = Counts()
    for record, problem in zip(records, problems, strict=True):
        flagged = [t for t in record.tokens if t.confounder]
        c.problems += 1
        if problem.distractors == 0:
            c.clean_problems += 1
            c.clean_flags += len(flagged)
        c.flagged += len(flagged)
        c.hit_distractor += sum(_inside(t.start, t.end, problem.distractor_spans) for t in flagged)
        c.distractor_tokens += sum(_inside(t.start, t.end, problem.distractor_spans)
                                   for t in record.tokens if t.text.strip())
        c.hit_key += sum(_inside(t.start, t.end, problem.key_spans) for t in flagged)
        c.key_tokens += sum(_inside(t.start, t.end, problem.key_spans) for t in record.tokens)
        for span in problem.distractor_spans:
            c.sentences += 1
            c.sentences_hit += any(_inside(t.start, t.end, [span]) for t in flagged)
    return c


def single_model(analysis: Analysis, which: str) -> Analysis:
    """A baseline that sees one model only: the other's saliency is made uniform, so the
    score is the teacher's saliency (teacher-only: flag what it ignores) or the inverse of
    the student's (student-only: flag what it attends to most)."""
    views = []
    for view in analysis.views:
        flat = np.ones_like(view.teacher)
        views.append(replace(view, teacher=flat, student=view.student) if which == "student-only"
                     else replace(view, teacher=view.teacher, student=flat))
    return replace(analysis, views=tuple(views))


def same_count(analysis: Analysis, reference: DetectionRecord, config: DetectConfig
               ) -> DetectionRecord:
    """`analysis` decided so that it flags as many units as `reference` does (its k lowest
    scores), as the perplexity and random baselines do: a single model's own threshold
    would flag a different number, and F1 over different counts compares little."""
    k = sum(t.confounder for t in reference.tokens)
    if k == 0:
        return reference  # nothing flagged either way; only the flags are scored
    every = decide(analysis, replace(config, tau=1.0, min_gap=0.0), example_id=reference.id)
    scores = sorted(t.score for t in every.tokens if t.confounder)
    cut = scores[min(k, len(scores)) - 1]  # ties at the cut may flag a few more
    return decide(analysis, replace(config, tau=cut, min_gap=0.0), example_id=reference.id)


def evaluate_methods(
    analyses: Sequence[Analysis], problems: Sequence[Problem], taus: Sequence[float], *,
    methods: Sequence[str] = ("gradient", "ppl", "random", *BASELINES), unit: str = "token",
    min_gap: float = 0.0, seed: int = 0,
) -> list[dict]:
    """One row of metrics per (method, tau)."""
    rows = []
    for method in methods:
        for tau in taus:
            engine_method = method if method not in BASELINES else "gradient"
            config = DetectConfig(tau=tau, method=engine_method, unit=unit,  # type: ignore[arg-type]
                                  min_gap=min_gap, seed=seed)
            records = [
                same_count(single_model(a, method), decide(a, config, example_id=p.id), config)
                if method in BASELINES else decide(a, config, example_id=p.id)
                for a, p in zip(analyses, problems, strict=True)
            ]
            rows.append({"method": method, "tau": tau, "unit": unit, "min_gap": min_gap,
                         **count(records, problems).metrics()})
    return rows
