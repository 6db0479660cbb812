from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path) -> str:
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, "benchmarks/saliency_throughput.py", *args, "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return out.read_text()


@pytest.mark.slow
def test_benchmark_runs_and_implementations_agree(tmp_path: Path) -> None:
    text = _run(["--rows", "8", "--batch-size", "4", "--repeats", "1"], tmp_path)
    assert "| both |" in text
    diff = float(text.rsplit("norms: ", 1)[1].strip().rstrip("."))
    assert diff < 1e-5


@pytest.mark.gpu
def test_gpu_llama_shapes(tmp_path: Path) -> None:
    text = _run(["--shape", "llama-1b-3b", "--device", "cuda", "--rows", "64", "--batch-size",
                 "16", "--repeats", "1"], tmp_path)
    print(text)
    diff = float(text.rsplit("norms: ", 1)[1].strip().rstrip("."))
    assert diff < 0.5  # bf16: both implementations round differently, but must agree closely
