"""A few distillation steps from the GGUF teacher into a same-tokenizer student, on the
records `leaf detect` wrote, then `leaf evaluate` on the result."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.cli.runner import run

pytestmark = [pytest.mark.real, pytest.mark.slow]


def test_distill_from_gguf_then_evaluate(smollm2: Path, real_student: Path, real_rows: Path,
                                         real_detect, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    detected = real_detect("instruction")
    assert detected.code == 0, detected.stderr
    out = tmp_path / "run"
    # 3 examples and their span counterfactuals, 2 per step: 2 optimizer steps, no hold-out.
    code, err = run(["distill", "--data", str(detected.records), "--out", str(out),
                     "--teacher", str(smollm2), "--student", str(real_student), "--epochs", "1",
                     "--batch-size", "2", "--micro-batch-size", "1", "--max-length", "128",
                     "--val-fraction", "0", "--warmup-steps", "0", "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    (epoch,) = result["epochs"]
    assert math.isfinite(epoch["train_loss"]) and epoch["train_loss"] > 0
    model = out / "epoch-1"
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    report_path = tmp_path / "report.json"
    code, err = run(["evaluate", "--model", str(model), "--data", str(real_rows), "--out",
                     str(report_path), "--max-new-tokens", "8", "--device", "cpu"], capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["total"] == 3 and 0 <= report["correct"] <= 3
