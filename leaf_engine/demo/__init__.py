"""The bundled demo: a synthetic arithmetic task with known confounders and a tiny
teacher/student pair trained on it, so everything runs out of the box on a laptop CPU.

`leaf demo train` rebuilds the pair into `PAIR_DIR`; the committed copy is what the CLI and
the service use when no model is named.
"""

from __future__ import annotations

from pathlib import Path

PAIR_DIR = Path(__file__).resolve().parent / "pair"
DEMO_TEACHER = PAIR_DIR / "teacher"
DEMO_STUDENT = PAIR_DIR / "student"
EXAMPLES = Path(__file__).resolve().parent / "examples.jsonl"


def demo_pair() -> tuple[str, str]:
    """(teacher, student) paths of the bundled pair; an error if it is missing."""
    from leaf_engine.errors import ModelLoadError

    for path in (DEMO_TEACHER, DEMO_STUDENT):
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"the bundled demo model is missing at {path}; "
                                 "run `leaf demo train` or name --teacher/--student")
    return str(DEMO_TEACHER), str(DEMO_STUDENT)
