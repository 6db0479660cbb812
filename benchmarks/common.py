"""Helpers shared by the benchmarks: model shapes, peak memory, Markdown tables."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_child(script: Path, args: list[str]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter (peak memory must not carry over) and
    return the JSON object it prints last."""
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    import os
    return f"CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def median_ms(call: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `call()` over `repeats` runs, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
