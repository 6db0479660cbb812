"""`leaf evaluate` end to end on tiny models with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.runner import run
from tests.memorise import ADD, CODE, SUB, memorised_pair


@pytest.fixture(scope="module")
def pair(model_dir: Path, bpe_tok) -> tuple[Path, Path]:
    return memorised_pair(model_dir, bpe_tok)


def test_evaluate_writes_a_report(pair, tmp_path: Path, capsys) -> None:
    data, out = tmp_path / "eval.jsonl", tmp_path / "report.json"
    rows = [{"instruction": ADD, "answer": "12"}, {"instruction": SUB, "answer": "8"},
            {"instruction": CODE, "tests": "assert add(1, 2) == 3"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, err = run(["evaluate", "--model", str(pair[1]), "--teacher", str(pair[0]), "--data",
                     str(data), "--out", str(out), "--max-new-tokens", "40", "--device", "cpu"],
                    capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["accuracy"] == pytest.approx(2 / 3, abs=1e-6)  # the student says 13 to ADD
    assert report["teacher"]["accuracy"] == 1.0 and report["pass_at_1"] == 1.0
    assert [e["correct"] for e in report["examples"]] == [False, True, True]
    assert "accuracy 0.667 (2/3); pass@1 1.000; teacher 1.000" in err


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("", [], "has no rows"),
        ('{"instruction": "q"}\n', [], "line 1: needs an 'answer'"),
        ('{"instruction": "q", "answer": 1}\n', ["--max-new-tokens", "0"],
         "Invalid value for '--max-new-tokens'"),
    ],
)
def test_bad_input_exits_2_with_one_line(pair, tmp_path: Path, capsys, content: str,
                                         args: list[str], message: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    code, err = run(["evaluate", "--model", str(pair[1]), "--data", str(data), "--out",
                     str(tmp_path / "r.json"), *args], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and message in err
    assert not (tmp_path / "r.json").exists()


def test_unknown_model_exits_2(tmp_path: Path, capsys) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "q", "answer": 1}\n')
    code, err = run(["evaluate", "--model", "./missing/model", "--data", str(data), "--out",
                     str(tmp_path / "r.json")], capsys)
    assert code == 2 and "model path not found: ./missing/model" in err


def test_without_bwrap_evaluate_warns_once_and_still_checks_code(
    pair, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from leaf_engine.sandbox import allow_unsandboxed, isolation_problem

    data, out = tmp_path / "eval.jsonl", tmp_path / "report.json"
    rows = [{"instruction": CODE, "tests": "assert add(1, 2) == 3"},
            {"instruction": CODE, "tests": "assert add(2, 2) == 4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap here
    isolation_problem.cache_clear()
    try:
        code, err = run(["evaluate", "--model", str(pair[1]), "--teacher", str(pair[0]),
                         "--data", str(data), "--out", str(out), "--max-new-tokens", "40",
                         "--device", "cpu"], capsys)
    finally:
        monkeypatch.undo()
        isolation_problem.cache_clear()
        allow_unsandboxed(False)
    assert code == 0, err
    assert err.count("leaf: warning: bubblewrap (bwrap) is not installed") == 1, err
    assert "plain child process" in err
    assert json.loads(out.read_text())["pass_at_1"] == 1.0
