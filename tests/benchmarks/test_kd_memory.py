from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path) -> str:
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, "benchmarks/kd_memory.py", *args, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    return out.read_text()


def _largest_difference(text: str) -> float:
    return float(text.rsplit("(loss or gradient): ", 1)[1].strip().rstrip("."))


def _memory_ratios(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\*\*([\d.]+)x\*\*", text)]


@pytest.mark.slow
def test_chunked_loss_equals_the_naive_one(tmp_path: Path) -> None:
    # Several chunks (chunk rows 16 of 128): the chunked loss must agree with full logits.
    text = _run(["--vocabs", "2048", "--seqs", "64", "--hidden", "32", "--chunk-rows", "16"],
                tmp_path)
    assert "| 2,048 | 64 |" in text
    assert _largest_difference(text) < 1e-5
    assert len(_memory_ratios(text)) == 1


@pytest.mark.gpu
def test_gpu_memory_saving_at_llama_vocab(tmp_path: Path) -> None:
    text = _run(["--device", "cuda", "--vocabs", "32000", "128256", "--seqs", "512", "2048"],
                tmp_path)
    print(text)
    assert _largest_difference(text) < 1e-5
    assert _memory_ratios(text)[-1] >= 4.0  # V = 128k, T = 2048
