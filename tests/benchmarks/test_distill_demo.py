from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_demo_runs_every_condition(llama_pair, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/distill_demo.py", "--quick", "--teacher", str(llama_pair[0]),
         "--student", str(llama_pair[1]), "--workdir", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for name in ("Teacher", "Student (Pre-KD)", "KD w/o Mask", "LeaF (Instr Mask)",
                 "LeaF (Instr & Resp Mask)"):
        assert f"| {name} |" in text
    results = json.loads(out.with_suffix(".json").read_text())
    # Every distilled condition took the same number of optimizer steps.
    assert len(set(results["steps"].values())) == 1
    assert results["stats"]["instruction_variants"] > 0
