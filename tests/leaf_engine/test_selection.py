"""Data selection (teacher right, student wrong) and verification of pruned variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from leaf_engine.data import Example
from leaf_engine.errors import InputError
from leaf_engine.models import load_model
from leaf_engine.records import Counterfactual, DetectionRecord, FieldSpan, ViewResult
from leaf_engine.selection import Judge, select_examples, verify_records, with_verified
from tests.memorise import ADD, SUB, memorised_pair

JUDGE = Judge(max_new_tokens=24, batch_size=4)


@pytest.fixture(scope="module")
def models(model_dir: Path, bpe_tok):
    teacher, student = memorised_pair(model_dir, bpe_tok)
    return load_model(str(teacher), device="cpu"), load_model(str(student), device="cpu")


def test_select_keeps_rows_the_teacher_gets_right_and_the_student_wrong(models) -> None:
    examples = [Example("add", ADD, "x", answer="12"), Example("sub", SUB, "x", answer="8"),
                Example("add-wrong", ADD, "x", answer="99")]
    assert [e.id for e in select_examples(*models, examples, JUDGE)] == ["add"]
    with pytest.raises(InputError, match=r"--select needs an 'answer'.*row 'q' has none"):
        select_examples(*models, [Example("q", ADD, "x")], JUDGE)


def _record(answer: str) -> DetectionRecord:
    original = f"{SUB} Ann has 7 pens."
    span = FieldSpan("instruction", len(SUB) + 1, len(original))
    pruned = (Counterfactual(ADD, "", FieldSpan("instruction", 0, len(SUB)), ("Bob",)),
              Counterfactual(SUB, "", span, ("Ann",)))
    main = ViewResult(0, (0, 16), (), (pruned[0].span, span), pruned,
                      Counterfactual(original, "", None, ()))
    later = ViewResult(1, (5, 16), (), (), (Counterfactual(SUB, "The", None, ()),),
                       Counterfactual(SUB, "The", None, ()))
    return DetectionRecord("r", original, "The answer is 8.", (main, later),
                           passthrough={"answer": answer})


def test_verify_marks_variants_both_models_answer_correctly(models) -> None:
    record = _record("8")
    flags = verify_records(*models, [record], JUDGE)
    # ADD gets 12 / 13, not 8; SUB gets 8 from both. The response-level variant continues
    # "The" with " answer is 8.", judged on that continuation.
    assert flags == [[[False, True], [True]]]
    data, rows = with_verified(record, flags[0])
    assert [p["verified"] for p in data["pruned"]] == [False, True]
    assert data["views"][0]["pruned"][0]["verified"] is True
    # Export rows follow the record's token flags (the official runs); this hand-made record
    # has none, so each view exports its context unchanged, with nothing to verify.
    # tests/leaf_engine/test_export.py checks rows of flagged runs take their span's mark.
    assert [r["verified"] for r in rows] == [None, None]
    assert verify_records(*models, [_record("9")], JUDGE) == [[[False, False], [False]]]


def test_a_prefix_that_states_the_answer_does_not_vouch_for_the_continuation(models) -> None:
    record = _record("8")
    main, later = record.views
    # The earlier segments already say 8, but after ADD's prompt the models do not.
    variant = Counterfactual(ADD, "The answer is 8.", None, ())
    tricky = ViewResult(1, later.target, (), (), (variant,), later.collective)
    flags = verify_records(*models, [DetectionRecord(
        record.id, record.instruction, record.output, (main, tricky),
        passthrough={"answer": "8"})], JUDGE)
    assert flags[0][1] == [False]


def test_verify_needs_answers(models) -> None:
    record = _record("8")
    bare = DetectionRecord(record.id, record.instruction, record.output, record.views)
    with pytest.raises(InputError, match="--verify needs an 'answer'"):
        verify_records(*models, [bare], JUDGE)
