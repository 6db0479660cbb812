"""Evaluation end to end on tiny models trained to give known responses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leaf_engine.errors import ConfigError, InputError, ModelLoadError
from leaf_engine.evaluate import EvalConfig, evaluate
from leaf_engine.models import load_model
from tests.memorise import ADD, CODE, SUB, memorised_pair

ROWS = [
    {"id": "a", "instruction": ADD, "answer": "12", "kind": "math"},
    {"id": "b", "instruction": SUB, "answer": 8, "kind": "math"},
    {"id": "c", "instruction": CODE, "tests": "assert add(2, 3) == 5", "kind": "code"},
    {"id": "d", "instruction": CODE, "tests": ["assert add(2, 3) == 6"], "kind": "code"},
    {"id": "e", "instruction": ADD, "answer": "\\frac{26}{2}", "kind": "math"},
]


@pytest.fixture(scope="module")
def pair(model_dir: Path, bpe_tok) -> tuple[Path, Path]:
    return memorised_pair(model_dir, bpe_tok)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_accuracy_pass_at_1_and_jaccard_on_known_outputs(pair, data: Path,
                                                         tmp_path: Path) -> None:
    teacher, student = pair
    seen = []
    report = evaluate(EvalConfig(model=str(student), data=str(data), teacher=str(teacher),
                                 out=str(tmp_path / "report.json"), max_new_tokens=40,
                                 device="cpu", group_by="kind"),
                      progress=lambda done, total: seen.append((done, total)))
    by_id = {e.id: e for e in report.examples}
    assert by_id["a"].output == "Step 1: add the numbers. The answer is 13."
    assert {k: e.correct for k, e in by_id.items()} == {
        "a": False, "b": True, "c": True, "d": False, "e": True}
    assert {k: e.method for k, e in by_id.items()} == {
        "a": "number", "b": "number", "c": "code", "d": "code", "e": "math"}
    assert report.accuracy == 0.6 and report.correct == 3 and report.total == 5
    assert report.pass_at_1 == 0.5
    assert report.by_method == {"code": {"n": 2, "accuracy": 0.5},
                                "math": {"n": 1, "accuracy": 1.0},
                                "number": {"n": 2, "accuracy": 0.5}}
    assert report.groups == {"code": {"n": 2, "accuracy": 0.5},
                             "math": {"n": 3, "accuracy": round(2 / 3, 6)}}
    assert by_id["d"].detail == "AssertionError"
    # The teacher answers ADD with 12: right for "a", wrong for "e".
    assert report.teacher == {"model": str(teacher), "accuracy": 0.6}
    assert by_id["a"].teacher_output == "The answer is 12." and by_id["a"].teacher_correct
    assert by_id["a"].jaccard == pytest.approx(3 / 9, abs=1e-6)
    assert by_id["b"].jaccard == 1.0
    assert report.jaccard == pytest.approx((2 / 9 * 3 + 3) / 5, abs=1e-6)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["accuracy"] == 0.6 and len(saved["examples"]) == 5
    assert seen[-1][0] == seen[-1][1] == 20


def test_batched_left_padded_generation_matches_one_at_a_time(pair, data: Path) -> None:
    student = load_model(str(pair[1]), device="cpu")
    config = EvalConfig(model=str(pair[1]), data=str(data), max_new_tokens=40)
    batched = evaluate(config, model=student)
    single = evaluate(EvalConfig(**{**vars(config), "batch_size": 1}), model=student)
    assert [e.output for e in batched.examples] == [e.output for e in single.examples]
    assert batched.teacher is None and batched.jaccard is None


def test_prompt_that_fills_the_context_is_marked_not_fatal(pair, tmp_path: Path) -> None:
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"instruction": "word " * 400, "answer": "1"}) + "\n"
                    + json.dumps({"instruction": SUB, "answer": "8"}) + "\n")
    report = evaluate(EvalConfig(model=str(pair[1]), data=str(data), max_new_tokens=20))
    first, second = report.examples
    assert not first.correct and "fills the context" in (first.detail or "")
    assert second.correct


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "q"}\n', "line 1: needs an 'answer' (or 'tests' for code)"),
        ('{"answer": "1"}\n', "line 1: missing field 'instruction'"),
        ('{"instruction": "q", "tests": 5}\n', "line 1: field 'tests' must be a string"),
        ('{"instruction": "q", "answer": true}\n', "field 'answer' must be a string or a number"),
        ("\n\n", "has no rows"),
    ],
)
def test_bad_rows_fail_before_models_load(tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    with pytest.raises(InputError) as info:
        evaluate(EvalConfig(model="/does/not/exist", data=str(data)))
    assert message in str(info.value)


def test_unknown_model_and_bad_config(data: Path) -> None:
    with pytest.raises(ModelLoadError, match="model path not found"):
        evaluate(EvalConfig(model="./no/such/model", data=str(data)))
    with pytest.raises(ConfigError, match="max_new_tokens must be an integer >= 1"):
        EvalConfig(model="m", data="d", max_new_tokens=0)
    with pytest.raises(ConfigError, match="answer_check must be one of auto, number, math"):
        EvalConfig(model="m", data="d", answer_check="exact")  # type: ignore[arg-type]
