"""The real-model tier: SmolLM2-135M-Instruct from its GGUF file, and a 2-layer student cut
from it (same tokenizer), built once per session. Every test here is marked `real` and
`slow`; without the `real` extra they skip."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.real_models import derived_model

# Numbers of several digits, so a pruned prompt that drops one digit of one shows.
ROWS = [
    {"id": "muffins", "instruction": "Tom baked 24 muffins. His sister is 13 years old. He sold "
                                     "9 muffins. How many muffins are left?",
     "output": "24 - 9 = 15. The answer is 15.", "answer": "15"},
    {"id": "pages", "instruction": "Sara reads 15 pages a day. The library is 240 meters away. "
                                   "How many pages does she read in 3 days?",
     "output": "15 * 3 = 45. The answer is 45.", "answer": "45"},
    {"id": "coins", "instruction": "Ann has 159 coins. It rained for 12 days. She finds 41 more "
                                   "coins. How many coins does Ann have now?",
     "output": "159 + 41 = 200. The answer is 200.", "answer": "200"},
]
STUDENT_LAYERS = (0, 29)  # SmolLM2-135M's first and last of 30


@pytest.fixture(scope="session")
def real_student(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with SmolLM2's embeddings, first and last layers and tokenizer: a
    Hugging Face directory that shares the GGUF model's tokenizer."""
    from leaf_engine.models import load_model

    teacher = load_model(str(smollm2), device="cpu")
    return derived_model(teacher, tmp_path_factory.mktemp("real") / "student",
                         keep=STUDENT_LAYERS)


@pytest.fixture(scope="session")
def real_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("real-rows") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@dataclass(frozen=True)
class DetectRun:
    records: Path
    export: Path
    stderr: str
    code: int


@pytest.fixture(scope="session")
def real_detect(smollm2: Path, real_student: Path, real_rows: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], DetectRun]:
    """`leaf detect` (GGUF teacher, the 2-layer student) at a level, run once per level:
    the detect tests check it, distillation trains on it."""
    from leaf_cli.main import main

    runs: dict[str, DetectRun] = {}

    def detect(level: str) -> DetectRun:
        if level not in runs:
            out = tmp_path_factory.mktemp(f"detect-{level}")
            records, export = out / "records.jsonl", out / "pruned.jsonl"
            err = io.StringIO()
            code = 0
            with contextlib.redirect_stderr(err):
                try:
                    main(["detect", "--data", str(real_rows), "--out", str(records),
                          "--teacher", str(smollm2), "--student", str(real_student),
                          "--level", level, "--percentile", "25", "--device", "cpu",
                          "--export-pruned", str(export)])
                except SystemExit as stop:  # click's way to end, as the console script
                    code = int(stop.code or 0)
            runs[level] = DetectRun(records, export, err.getvalue(), code)
        return runs[level]

    return detect
