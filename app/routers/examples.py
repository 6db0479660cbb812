"""GET /examples: demo prompts to try, for the UI's "pick an example"."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query

from app.deps import require_token
from app.schemas import COMMON_ERRORS, Example, ExampleList

router = APIRouter(prefix="/examples", tags=["examples"], dependencies=[Depends(require_token)],
                   responses=COMMON_ERRORS)
DEFAULT_COUNT = 12


@router.get("", response_model=ExampleList)
def examples(limit: int = Query(DEFAULT_COUNT, ge=1, le=100)) -> ExampleList:
    """Arithmetic word problems from the bundled demo task, most with distracting sentences
    whose character spans (`distractor_spans`, `key_spans`) are the ground truth."""
    return ExampleList(examples=[Example(**row) for row in _demo_rows(limit)])


def _demo_rows(limit: int) -> list[dict[str, Any]]:
    from leaf_engine.demo import EXAMPLES

    if EXAMPLES.is_file():
        rows = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
        return rows[:limit]
    from leaf_engine.demo.tasks import generate

    # No shipped file: the same generator the demo pair was trained with, on its test split.
    return [p.to_row() for p in generate("test", limit, seed=0, mix=(0.2, 0.4, 0.4))]
