"""The detect summary's peak memory (`DetectionCounts.peak_rss_bytes`)."""

from __future__ import annotations

from pathlib import Path

from leaf_engine.analysis import DetectConfig
from leaf_engine.data import example_from_row
from leaf_engine.detect import Detector
from leaf_engine.detect_output import DetectionCounts, write_detections
from leaf_engine.models import load_model

ROWS = [
    {"instruction": "Ann has 7 pens. She buys 5 more pens. How many pens?",
     "output": "She has 12 pens."},
    {"instruction": "Bob had 12 apples and gave 4 to Carl.", "output": "Bob has 8 apples."},
]


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key))


def test_peak_memory_is_the_runs_own(tmp_path: Path) -> None:
    from leaf_engine.demo import demo_pair

    detector = Detector(*(load_model(p, device="cpu") for p in demo_pair()))
    examples = [example_from_row(r, default_id=str(i)) for i, r in enumerate(ROWS)]
    # A peak before the run, far above what the run needs, then released.
    spike = bytearray(512 * 2**20)
    spike[:: 4096] = b"\x01" * len(spike[:: 4096])
    before = _status_bytes("VmHWM:")
    del spike
    counts = write_detections(examples, DetectConfig(), tmp_path / "out.jsonl",
                              detector=detector, batch_size=64)
    assert counts.records == 2
    assert counts.peak_cuda_bytes is None  # CPU run
    assert counts.peak_rss_bytes is not None
    # At least what is resident now (the models), and not the earlier peak.
    assert _status_bytes("VmRSS:") * 0.9 <= counts.peak_rss_bytes < before - 256 * 2**20


def test_memory_text() -> None:
    counts = DetectionCounts(1, 0, 0, 0, peak_rss_bytes=3 * 2**29, peak_cuda_bytes=2**30)
    assert counts.memory_text() == "peak memory 1.50 GiB RSS, 1.00 GiB CUDA"
    assert DetectionCounts(1, 0, 0, 0).memory_text() == ""
    assert DetectionCounts(1, 0, 0, 0, 2**30).memory_text() == "peak memory 1.00 GiB RSS"
