"""Typed detection results and their JSON forms (the CLI's output lines, the API's bodies)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from leaf_engine.prune import Span

Field = Literal["instruction", "output"]


@dataclass(frozen=True)
class ContextToken:
    """A scored token: its field and its character span inside that field's text."""

    field: Field
    start: int
    end: int


@dataclass(frozen=True)
class TokenScore:
    """One scored token. `teacher`/`student` are min-max normalised saliencies, `score` the
    normalised teacher - student difference; low scores mean the student attends and the
    teacher does not."""

    text: str
    start: int
    end: int
    teacher: float
    student: float
    score: float
    confounder: bool
    field: Field = "instruction"

    def to_dict(self, *, with_field: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text, "start": self.start, "end": self.end,
            "teacher": round(self.teacher, 6), "student": round(self.student, 6),
            "score": round(self.score, 6), "confounder": self.confounder,
        }
        if with_field:
            out["field"] = self.field
        return out


@dataclass(frozen=True)
class FieldSpan:
    field: Field
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Counterfactual:
    """The context with one span (or, for the collective one, all spans) removed."""

    instruction: str
    output_prefix: str
    span: FieldSpan | None  # None for the collective counterfactual
    masked_tokens: tuple[str, ...]


@dataclass(frozen=True)
class ViewResult:
    """Detection in one context. Segment 0 is the instruction predicting the whole output;
    segment k >= 1 is the instruction plus output[:target[0]] predicting output[target]."""

    segment: int
    target: Span
    tokens: tuple[TokenScore, ...]
    spans: tuple[FieldSpan, ...]
    pruned: tuple[Counterfactual, ...]
    collective: Counterfactual

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "target": list(self.target),
            "tokens": [t.to_dict(with_field=True) for t in self.tokens],
            "spans": [s.to_dict() for s in self.spans],
            "pruned": [
                {"instruction": p.instruction, "output_prefix": p.output_prefix,
                 "span": p.span.to_dict() if p.span else None}
                for p in self.pruned
            ],
            "collective": {"instruction": self.collective.instruction,
                           "output_prefix": self.collective.output_prefix},
        }


@dataclass(frozen=True)
class DetectionRecord:
    """Everything detected for one example. The top-level fields describe segment 0."""

    id: str
    instruction: str
    output: str
    views: tuple[ViewResult, ...]
    params: dict[str, Any] = field(default_factory=dict)
    passthrough: dict[str, Any] = field(default_factory=dict)  # answer and other input fields
    warnings: tuple[str, ...] = ()  # template fallbacks, token cuts inside words

    @property
    def main(self) -> ViewResult:
        return self.views[0]

    @property
    def tokens(self) -> tuple[TokenScore, ...]:
        return self.main.tokens

    @property
    def spans(self) -> list[Span]:
        return [(s.start, s.end) for s in self.main.spans]

    @property
    def collective(self) -> str:
        return self.main.collective.instruction

    def to_dict(self) -> dict[str, Any]:
        main = self.main
        out: dict[str, Any] = {
            "id": self.id,
            "instruction": self.instruction,
            "output": self.output,
            **self.passthrough,
            "tokens": [t.to_dict() for t in main.tokens],
            "spans": [[s.start, s.end] for s in main.spans],
            "pruned": [{"instruction": p.instruction, "span": [p.span.start, p.span.end]}
                       for p in main.pruned if p.span is not None],
            "collective": main.collective.instruction,
            "params": self.params,
        }
        if len(self.views) > 1:
            out["views"] = [v.to_dict() for v in self.views[1:]]
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def export_rows(self) -> list[dict[str, Any]]:
        """The `--export-pruned` rows: what the official LeaF pruning script writes for these
        masks, plus the fields the official loaders read (`leaf_engine.export`)."""
        # Imported here so that neither module needs the other at import time (export.py
        # uses this module's classes for its type hints only).
        from leaf_engine.export import official_rows

        return [row.fields for row in official_rows(self)]
