from __future__ import annotations

import json
from pathlib import Path

import pytest

import leaf_engine.demo as demo
from tests.cli.runner import run

ROOT = Path(__file__).resolve().parents[2]


def test_detect_defaults_to_the_bundled_pair(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    code, err = run(["detect", "--data", str(ROOT / "examples" / "demo.jsonl"), "--out",
                     str(out)], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 12
    with_keys = [r for r in records if r["key_spans"]]
    hits = sum(any(t["confounder"] and any(s <= t["start"] < e for s, e in r["key_spans"])
                   for t in r["tokens"]) for r in with_keys)
    # The demo's confounders are the distractors' numbers; random flags would hit ~1 in 20.
    assert hits >= len(with_keys) // 3


def test_missing_demo_pair_is_a_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(demo, "DEMO_TEACHER", tmp_path / "gone")
    code, err = run(["detect", "--data", str(ROOT / "examples" / "demo.jsonl"), "--out",
                     str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "leaf demo train" in err


def test_demo_data_writes_splits_with_ground_truth(tmp_path: Path, capsys) -> None:
    code, err = run(["demo", "data", "--out", str(tmp_path), "--n", "7"], capsys)
    assert code == 0, err
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == 7
        assert {"instruction", "output", "answer", "distractor_spans", "key_spans"} <= set(rows[0])


@pytest.mark.slow
def test_benchmark_script_on_a_slice(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "benchmarks/confounder_detection.py", "--per-group",
                           "6", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "confounder_detection.md").read_text()
    for method in ("gradient", "ppl", "random", "teacher-only", "student-only"):
        assert f"| {method} | 0.1 |" in text
    assert (tmp_path / "confounder_detection.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "confounder_detection.json").read_text())
    assert len(data["all"]) == 20 and len(data["pilot"]) == 6
