from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leaf_engine.export import LOADER_KEYS, OFFICIAL_KEYS
from tests.cli.runner import run


def _pair_args(llama_pair) -> list[str]:
    return ["--teacher", str(llama_pair[0]), "--student", str(llama_pair[1])]


def test_detect_end_to_end(llama_pair, rows_file: Path, tmp_path: Path, capsys) -> None:
    out, pruned = tmp_path / "out.jsonl", tmp_path / "pruned.jsonl"
    code, err = run(["detect", *_pair_args(llama_pair), "--data", str(rows_file), "--out",
                     str(out), "--tau", "0.3", "--export-pruned", str(pruned), "--batch-size",
                     "2"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "b", "3"]
    assert records[0]["answer"] == "12"
    assert records[1]["instruction"].endswith("\nThe sky is blue today.")  # input appended
    for r in records:
        assert {"id", "instruction", "output", "tokens", "spans", "pruned", "collective"} <= set(r)
        for t in r["tokens"]:
            assert r["instruction"][t["start"]:t["end"]] == t["text"]
    rows = [json.loads(line) for line in pruned.read_text(encoding="utf-8").splitlines()]
    # The official pruning script's rows plus `input` (leaf_engine.export): every record has
    # some, the instruction unchanged where nothing was flagged, else one per run + "\n".
    by_sample: dict[object, list[dict]] = {}
    for row in rows:
        by_sample.setdefault(row["sample_id"], []).append(row)
    assert list(by_sample) == ["a", "b", 3]  # a numeric id is the official number
    for record, mine in zip(records, by_sample.values(), strict=True):
        assert all(tuple(r) == OFFICIAL_KEYS + LOADER_KEYS for r in mine)
        assert [r["mask_run_index"] for r in mine] == list(range(len(mine)))
        assert all(r["original_instruction"] == record["instruction"] for r in mine)
        if record["spans"]:
            assert len(mine) >= len(record["spans"])
            assert all(r["instruction"].endswith("\n") and r["masked_tokens"] for r in mine)
        else:
            assert [(r["instruction"], r["masked_tokens"]) for r in mine] == [
                (record["instruction"], [])]
    assert any(r["masked_tokens"] for r in rows)
    assert f"wrote 3 records to {out}" in err


def test_response_level_and_percentile(llama_pair, rows_file: Path, tmp_path: Path,
                                       capsys) -> None:
    out = tmp_path / "out.jsonl"
    code, err = run(["detect", *_pair_args(llama_pair), "--data", str(rows_file), "--out",
                     str(out), "--percentile", "20", "--level", "response", "--segments", "2"],
                    capsys)
    assert code == 0, err
    first = json.loads(out.read_text().splitlines()[0])
    assert first["params"]["percentile"] == 20 and "tau" not in first["params"]
    assert len(first["views"]) == 1 and first["views"][0]["segment"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "a", "output": "b"}\nnot json\n', "line 2: invalid JSON"),
        ('{"instruction": "a"}\n', "line 1: missing field 'output'"),
        ('{"instruction": "", "output": "b"}\n', "line 1: field 'instruction' is empty"),
        ('{"instruction": "a", "output": "  "}\n', "line 1: field 'output' is empty"),
    ],
)
def test_bad_data_exits_2_with_one_line_and_keeps_old_output(
    llama_pair, tmp_path: Path, capsys, content: str, message: str
) -> None:
    data, out = tmp_path / "bad.jsonl", tmp_path / "out.jsonl"
    data.write_text(content)
    out.write_text("previous results\n")
    code, err = run(["detect", *_pair_args(llama_pair), "--data", str(data), "--out", str(out)],
                    capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err
    assert out.read_text() == "previous results\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tau", "1.5"], "1.5 is not in the range 0<=x<=1"),
        (["--tau", "0.1", "--percentile", "5"], "either --tau or --percentile"),
        (["--method", "magic"], "'magic' is not one of"),
        (["--segments", "5"], "5 is not in the range"),
        (["--batch-size", "0"], "0 is not in the range"),
        (["--prompt-template", "no placeholder"], "exactly once"),
    ],
)
def test_bad_flags_exit_2(llama_pair, rows_file: Path, tmp_path: Path, capsys, args, message):
    code, err = run(["detect", *_pair_args(llama_pair), "--data", str(rows_file), "--out",
                     str(tmp_path / "o.jsonl"), *args], capsys)
    assert code == 2 and message in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_model_and_missing_data(llama_pair, rows_file: Path, tmp_path: Path, capsys):
    code, err = run(["detect", "--teacher", str(tmp_path / "nope"), "--student",
                     str(llama_pair[1]), "--data", str(rows_file), "--out",
                     str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "model path not found" in err
    code, err = run(["detect", *_pair_args(llama_pair), "--data", str(tmp_path / "x.jsonl"),
                     "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "data file not found" in err


def test_context_overflow_needs_truncate(model_dir: Path, bpe_tok, tmp_path: Path, capsys):
    from tests import tiny

    short = tiny.save_pair(model_dir / "short", "llama", bpe_tok, positions=32)
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"instruction": "Ann has 7 pens.",
                                "output": "The answer is 12. " * 12}) + "\n")
    args = ["detect", "--teacher", str(short), "--student", str(short), "--data", str(data),
            "--out", str(tmp_path / "o.jsonl")]
    code, err = run(args, capsys)
    assert code == 2 and not (tmp_path / "o.jsonl").exists()
    # The engine's figures, then the flag that helps, once.
    line = err.strip().splitlines()[-1]
    assert line.startswith("leaf: error: example is ") and "context of 32" in line
    assert line.endswith("; pass --truncate to cut the response to fit")
    assert line.count("--truncate") == 1
    code, err = run([*args, "--truncate"], capsys)
    assert code == 0, err
    assert (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_console_script_runs_as_a_process(llama_pair, rows_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = subprocess.run([sys.executable, "-m", "leaf_cli.main", "detect",
                           *_pair_args(llama_pair), "--data", str(rows_file), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 3
    bad = subprocess.run([sys.executable, "-m", "leaf_cli.main", "detect", "--data", "x"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
