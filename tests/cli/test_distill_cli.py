"""`leaf distill` end to end: tiny models, real checkpoints, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.runner import run


@pytest.fixture
def records(llama_pair, rows_file: Path, tmp_path: Path, capsys) -> Path:
    """`leaf detect` output at response level, as `leaf distill` gets it in practice."""
    out = tmp_path / "records.jsonl"
    code, err = run(["detect", "--teacher", str(llama_pair[0]), "--student", str(llama_pair[1]),
                     "--data", str(rows_file), "--out", str(out), "--tau", "0.3", "--level",
                     "response"], capsys)
    assert code == 0, err
    return out


@pytest.mark.slow
def test_distill_on_detect_records(llama_pair, records: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    code, err = run(["distill", "--teacher", str(llama_pair[0]), "--student", str(llama_pair[1]),
                     "--data", str(records), "--out", str(out), "--epochs", "2", "--batch-size",
                     "2", "--micro-batch-size", "1", "--lr", "1e-3", "--lambda", "0.3",
                     "--val-fraction", "0", "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 4 and result["config"]["lam"] == 0.3
    assert result["data"]["counterfactuals"] > 0  # the detect records' pruned rows were used
    assert f"best checkpoint {out / 'epoch-2'}" in err
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "epoch-2")


@pytest.mark.slow
def test_collective_counterfactuals_in_pairs(llama_pair, records: Path, tmp_path: Path,
                                             capsys) -> None:
    out = tmp_path / "run"
    code, err = run(["distill", "--teacher", str(llama_pair[0]), "--student", str(llama_pair[1]),
                     "--data", str(records), "--out", str(out), "--epochs", "1",
                     "--counterfactuals", "collective", "--hybrid-units", "pair",
                     "--val-fraction", "0", "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    # One collective counterfactual per segment where something was pruned; one unit per
    # (original, counterfactual) pair, the original alone where there is none.
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    collectives = [bool(r["pruned"]) + sum(bool(v["pruned"]) for v in r.get("views", []))
                   for r in rows]
    assert sum(collectives) > 0
    assert result["data"]["counterfactuals"] == sum(collectives)
    assert result["data"]["units_per_epoch"] == sum(max(1, n) for n in collectives)


@pytest.mark.slow
def test_export_rows_are_accepted(llama_pair, rows_file: Path, tmp_path: Path, capsys) -> None:
    records, pruned = tmp_path / "records.jsonl", tmp_path / "pruned.jsonl"
    code, err = run(["detect", "--teacher", str(llama_pair[0]), "--student", str(llama_pair[1]),
                     "--data", str(rows_file), "--out", str(records), "--tau", "0.3",
                     "--export-pruned", str(pruned)], capsys)
    assert code == 0, err
    code, err = run(["distill", "--teacher", str(llama_pair[0]), "--student", str(llama_pair[1]),
                     "--data", str(pruned), "--out", str(tmp_path / "run"), "--epochs", "1",
                     "--batch-size", "2", "--mode", "mix", "--val-fraction", "0", "--device",
                     "cpu"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    exported = [json.loads(line) for line in pruned.read_text().splitlines()]
    samples = {r["sample_id"] for r in exported}
    assert result["data"]["train_examples"] == len(samples)
    assert result["data"]["units_per_epoch"] == len(samples) + len(exported)


@pytest.mark.parametrize(
    ("extra", "content", "message"),
    [
        (["--lambda", "1.5"], None, "Invalid value for '--lambda': 1.5 is not in the range"),
        (["--mode", "blend"], None, "Invalid value for '--mode'"),
        (["--hybrid-units", "all"], None, "Invalid value for '--hybrid-units'"),
        (["--counterfactuals", "collective"], None,
         "counterfactuals 'collective' needs `leaf detect` records"),
        (["--counterfactuals", "both", "--only-verified"], None,
         "only_verified keeps span counterfactuals only"),
        ([], "", "has no rows"),
        ([], '{"instruction": "q"}\n', "line 1: missing field 'output'"),
        (["--batch-size", "3", "--micro-batch-size", "2"], None,
         "batch_size (3) must be a multiple of micro_batch_size (2)"),
        (["--teacher", "./no/such/teacher"], None, "model path not found: ./no/such/teacher"),
        (["--resume", "/nonexistent/run"], None, "resume: no checkpoint found"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    llama_pair, rows_file: Path, tmp_path: Path, capsys, extra: list[str], content: str | None,
    message: str,
) -> None:
    data = rows_file
    if content is not None:
        data = tmp_path / "bad.jsonl"
        data.write_text(content)
    args = ["distill", "--teacher", str(llama_pair[0]), "--student", str(llama_pair[1]),
            "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu", *extra]
    code, err = run(args, capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err
