"""`leaf detect --select` and `--verify` on tiny models with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.runner import run
from tests.memorise import ADD, SUB, memorised_pair


@pytest.fixture(scope="module")
def pair(model_dir: Path, bpe_tok) -> tuple[Path, Path]:
    return memorised_pair(model_dir, bpe_tok)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = [{"id": "add", "instruction": ADD, "output": "The answer is 12.", "answer": "12"},
            {"id": "sub", "instruction": SUB, "output": "The answer is 8.", "answer": "8"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(pair, data: Path, out: Path) -> list[str]:
    return ["detect", "--teacher", str(pair[0]), "--student", str(pair[1]), "--data", str(data),
            "--out", str(out), "--max-new-tokens", "24"]


@pytest.mark.slow  # the module's pair is trained to memorise its answers
def test_select_keeps_teacher_right_student_wrong(pair, data: Path, tmp_path: Path,
                                                  capsys) -> None:
    out = tmp_path / "out.jsonl"
    code, err = run([*_args(pair, data, out), "--select"], capsys)
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["add"]
    assert "--select kept 1 of 2 rows" in err


@pytest.mark.slow
def test_verify_marks_every_pruned_variant(pair, data: Path, tmp_path: Path, capsys) -> None:
    out, pruned = tmp_path / "out.jsonl", tmp_path / "pruned.jsonl"
    code, err = run([*_args(pair, data, out), "--verify", "--tau", "0.5", "--export-pruned",
                     str(pruned)], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    marks = [p["verified"] for r in records for p in r["pruned"]]
    assert marks and all(isinstance(m, bool) for m in marks)
    rows = [json.loads(line) for line in pruned.read_text().splitlines()]
    # A record with nothing flagged exports one unchanged row, which has nothing to verify.
    assert [r["verified"] for r in rows if r["masked_tokens"]] == marks


def test_select_and_verify_need_answers(llama_pair, tmp_path: Path, capsys) -> None:
    data = tmp_path / "plain.jsonl"
    data.write_text(json.dumps({"id": "q", "instruction": ADD, "output": "x"}) + "\n")
    for flag in ("--select", "--verify"):
        code, err = run([*_args(llama_pair, data, tmp_path / "o.jsonl"), flag], capsys)
        assert code == 2 and f"{flag} needs an 'answer'" in err
        assert err.strip().count("\n") == 0
