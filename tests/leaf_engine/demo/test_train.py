from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leaf_engine.demo.tasks import generate
from leaf_engine.demo.train import STUDENT, accuracy_by_distractors, train_model
from leaf_engine.models import load_model

TINY = replace(STUDENT, name="tiny", hidden=32, layers=1, intermediate=64, steps=30,
               batch_size=16, warmup=5)


@pytest.mark.slow
def test_training_is_deterministic_and_learns(tmp_path: Path) -> None:
    losses: dict[str, list[float]] = {"a": [], "b": []}
    for run in ("a", "b"):
        train_model(TINY, tmp_path / run,
                    progress=lambda name, step, total, loss, run=run: losses[run].append(loss))
    first = load_file(tmp_path / "a" / "tiny" / "model.safetensors")
    second = load_file(tmp_path / "b" / "tiny" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert losses["a"] == losses["b"] and len(losses["a"]) == TINY.steps
    assert sum(losses["a"][-5:]) < sum(losses["a"][:5])  # it learns something


@pytest.mark.slow
def test_saved_model_loads_and_answers(tmp_path: Path) -> None:
    path = train_model(TINY, tmp_path)
    loaded = load_model(str(path), device="cpu")
    assert loaded.template.kind == "chat"
    accuracy = accuracy_by_distractors(loaded, generate("test", 6))
    assert set(accuracy) <= {0, 1, 2} and all(0.0 <= v <= 1.0 for v in accuracy.values())
