"""The paper's data pipeline around detection (Guo et al., 2025, Sec. 2.1): analyse only
instances the teacher answers correctly and the student does not (`select_examples`), and
confirm a confounder when pruning it lets both models answer correctly (`verify_records`).
Both reuse the evaluation's greedy decoding and answer checking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from leaf_engine.answers import AnswerCheck, Reference, check_answers
from leaf_engine.data import Example
from leaf_engine.errors import InputError
from leaf_engine.evaluate import reference_of
from leaf_engine.export import official_rows
from leaf_engine.generate import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, Prompt, greedy
from leaf_engine.models import LoadedModel
from leaf_engine.records import DetectionRecord

Flags = list[list[bool]]  # per view, per pruned variant


@dataclass(frozen=True)
class Judge:
    """How answers are produced and checked for selection and verification."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = DEFAULT_BATCH_SIZE
    answer_check: AnswerCheck = "auto"

    def correct(
        self, loaded: LoadedModel, prompts: Sequence[Prompt], references: Sequence[Reference]
    ) -> list[bool]:
        """Whether the model's greedy response to each prompt is right. A prompt that
        continues a response (`output_prefix`) is judged on the continuation alone: the
        earlier segments may already state the answer, and must not vouch for it."""
        texts = [g.text for g in greedy(loaded, prompts, max_new_tokens=self.max_new_tokens,
                                        batch_size=self.batch_size)]
        return [v.correct for v in check_answers(texts, references, how=self.answer_check)]


def _reference(fields: dict[str, Any], example_id: str, what: str) -> Reference:
    if fields.get("answer") is None and fields.get("tests") is None:
        raise InputError(f"{what} needs an 'answer' (or 'tests') in every row; row "
                         f"'{example_id}' has none")
    try:
        return reference_of(fields)
    except InputError as err:
        raise InputError(f"row '{example_id}': {err}") from None


def require_references(examples: Sequence[Example], what: str) -> None:
    """Fail before any model loads if a row has nothing to check answers against."""
    for e in examples:
        _reference({**dict(e.extra), "answer": e.answer}, e.id, what)


def select_examples(
    teacher: LoadedModel, student: LoadedModel, examples: Sequence[Example], judge: Judge
) -> list[Example]:
    """The examples the teacher answers correctly and the student does not."""
    references = [_reference({**dict(e.extra), "answer": e.answer}, e.id, "--select")
                  for e in examples]
    prompts = [Prompt(e.instruction) for e in examples]
    teacher_ok = judge.correct(teacher, prompts, references)
    student_ok = judge.correct(student, prompts, references)
    return [e for e, t, s in zip(examples, teacher_ok, student_ok, strict=True) if t and not s]


def verify_records(
    teacher: LoadedModel, student: LoadedModel, records: Sequence[DetectionRecord],
    judge: Judge,
) -> list[Flags]:
    """For every pruned variant of every view: do both models answer it correctly?"""
    prompts, references, where = [], [], []
    for r, record in enumerate(records):
        reference = _reference(record.passthrough, record.id, "--verify")
        for v, view in enumerate(record.views):
            for p, pruned in enumerate(view.pruned):
                prompts.append(Prompt(pruned.instruction, pruned.output_prefix))
                references.append(reference)
                where.append((r, v, p))
    flags: list[Flags] = [[[False] * len(view.pruned) for view in record.views]
                          for record in records]
    if prompts:
        both = zip(judge.correct(teacher, prompts, references),
                   judge.correct(student, prompts, references), strict=True)
        for (r, v, p), (t, s) in zip(where, both, strict=True):
            flags[r][v][p] = t and s
    return flags


def with_verified(
    record: DetectionRecord, flags: Flags | None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The record's JSON form and export rows, each pruned variant marked `verified`.

    An export row prunes one official run, which lies inside one of the record's spans (a
    span also bridges the whitespace tokens that end official runs): it takes that span's
    mark, and a row that prunes nothing gets null. Without flags, rows have no `verified`.
    """
    data, exported = record.to_dict(), official_rows(record)
    if flags is None:
        return data, [row.fields for row in exported]
    # The record's top-level `pruned` lists the span-pruned variants of view 0.
    main = [f for p, f in zip(record.main.pruned, flags[0], strict=True) if p.span is not None]
    for entry, flag in zip(data["pruned"], main, strict=True):
        entry["verified"] = flag
    for view, view_flags in zip(data.get("views", []), flags[1:], strict=True):
        for entry, flag in zip(view["pruned"], view_flags, strict=True):
            entry["verified"] = flag
    rows = [{**row.fields,
             "verified": None if row.variant is None else flags[row.view][row.variant]}
            for row in exported]
    return data, rows
