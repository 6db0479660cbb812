"""Confounder detection: run teacher and student saliency and hand the raw numbers to
`leaf_engine.analysis`, which flags what only the student attends to.

Detection is split in two so that a cache can keep the expensive half: `Detector.analyse`
runs the models and returns raw per-token numbers (`Analysis`); `decide` applies a
`DetectConfig` to them in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from leaf_engine.analysis import (
    Analysis,
    DetectConfig,
    Level,
    ViewAnalysis,
    decide,
    passthrough,
)
from leaf_engine.data import Example
from leaf_engine.models import LoadedModel, same_tokenizer
from leaf_engine.records import DetectionRecord
from leaf_engine.saliency import DEFAULT_BATCH_SIZE, SaliencyInput, token_saliency
from leaf_engine.segments import split_response
from leaf_engine.units import to_words

__all__ = ["Analysis", "DetectConfig", "Detector", "decide", "plan_views"]

Progress = Callable[[int], None]


def plan_views(output: str, level: Level, segments: int) -> list[tuple[int, int]]:
    """Target spans: the whole output, then (at response level) each later segment."""
    views = [(0, len(output))]
    if level == "response":
        views.extend(split_response(output, segments)[1:])
    return views


class Detector:
    """Runs teacher and student saliency over examples. Models are loaded by the caller and
    can be reused across calls (the service keeps them between jobs)."""

    def __init__(
        self, teacher: LoadedModel, student: LoadedModel, *,
        batch_size: int = DEFAULT_BATCH_SIZE, activation_budget: int | None = None,
        truncate: bool = False,
    ):
        self.teacher = teacher
        self.student = student
        self.batch_size = batch_size  # most rows per pass
        self.activation_budget = activation_budget  # bytes per pass; None: the device's default
        self.truncate = truncate
        # Different tokenizers give tokens that do not line up; compare on words instead.
        self.shared_tokens = same_tokenizer(teacher.tokenizer, student.tokenizer)
        # Notes about the models (a fallback template), repeated in every record.
        notes = (getattr(m, "template_note", None) for m in (teacher, student))
        self.warnings = tuple(dict.fromkeys(n for n in notes if n))

    def work(self, pairs: Sequence[tuple[str, str]], level: Level, segments: int) -> int:
        """How many progress steps `analyse` will report for these pairs."""
        return 2 * sum(len(plan_views(out, level, segments)) for _, out in pairs)

    def analyse(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        level: Level = "instruction",
        segments: int = 2,
        with_surprisal: bool = False,
        progress: Progress | None = None,
    ) -> list[Analysis]:
        """Raw analysis of (instruction, output) pairs, in order."""
        plans = [plan_views(out, level, segments) for _, out in pairs]
        inputs = [
            SaliencyInput(instr, out[a:b], out[:a])
            for (instr, out), plan in zip(pairs, plans, strict=True)
            for a, b in plan
        ]
        kwargs = {"batch_size": self.batch_size, "activation_budget": self.activation_budget,
                  "truncate": self.truncate, "progress": progress}
        teacher = token_saliency(self.teacher, inputs, **kwargs)
        student = token_saliency(self.student, inputs, with_surprisal=with_surprisal, **kwargs)
        views = []
        for x, t, s in zip(inputs, teacher, student, strict=True):
            texts = {"instruction": x.instruction, "output": x.output_prefix}
            if self.shared_tokens:
                tokens, t_norm, s_norm, surprisal = t.tokens, t.norms, s.norms, s.surprisal
            else:
                # Both on the pieces the teacher's tokens cover, pooled as in unit word; a
                # piece the student's tokens do not reach (truncation) has 0 saliency.
                tokens, t_norm = to_words(t.tokens, t.norms, texts, "rms")
                _, s_norm = to_words(s.tokens, s.norms, texts, "rms", words=tokens)
                s_norm = np.nan_to_num(s_norm, nan=0.0)
                surprisal = None
                if s.surprisal is not None:
                    _, surprisal = to_words(s.tokens, s.surprisal, texts, "sum", words=tokens)
            target = (len(x.output_prefix), len(x.output_prefix) + len(x.target))
            views.append(ViewAnalysis(target, tokens, t_norm, s_norm, surprisal))
        compare = "tokens" if self.shared_tokens else "words"
        out, cursor = [], 0
        for (instr, output), plan in zip(pairs, plans, strict=True):
            out.append(Analysis(instr, output, tuple(views[cursor : cursor + len(plan)]),
                                compare=compare, warnings=self.warnings))
            cursor += len(plan)
        return out

    def detect(
        self, examples: Sequence[Example], config: DetectConfig, *,
        progress: Progress | None = None,
    ) -> list[DetectionRecord]:
        """Analyse and decide in one call."""
        analyses = self.analyse(
            [(e.instruction, e.output) for e in examples], level=config.level,
            segments=config.segments, with_surprisal=config.needs_surprisal, progress=progress,
        )
        return [decide(a, config, example_id=e.id, passthrough=passthrough(e))
                for a, e in zip(analyses, examples, strict=True)]

