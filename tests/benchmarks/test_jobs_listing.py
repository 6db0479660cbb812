from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the script imports torch
def test_jobs_listing_benchmark_runs_on_a_small_store(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, "benchmarks/jobs_listing.py", "--jobs", "30",
                           "--limit", "5", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    # The script checks that both listings return the same page before timing them.
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "over 30 finished jobs" in text
    times = [float(m) for m in re.findall(r"\| ([\d.]+) \|", text)]
    assert len(times) == 3 and all(t > 0 for t in times)
