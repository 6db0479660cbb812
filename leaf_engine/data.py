"""Reading and writing the JSONL files the engine consumes and produces."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from leaf_engine.errors import InputError

INPUT_FIELDS = ("instruction", "output")


@dataclass(frozen=True)
class Example:
    """One instruction/response pair. `instruction` already has `input` appended."""

    id: str
    instruction: str
    output: str
    answer: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()  # other fields of the row, carried through as is


def example_from_row(row: Any, *, line: int | None = None, default_id: str = "0") -> Example:
    """Validate one decoded JSON row; raise `InputError` naming the line and field."""
    if not isinstance(row, dict):
        raise InputError("expected a JSON object", line=line)
    for name in INPUT_FIELDS:
        if name not in row:
            raise InputError(f"missing field '{name}'", line=line, field=name)
        if not isinstance(row[name], str):
            raise InputError(f"field '{name}' must be a string", line=line, field=name)
        if not row[name].strip():
            raise InputError(f"field '{name}' is empty", line=line, field=name)
    for name in ("input", "answer"):
        value = row.get(name)
        if value is not None and not isinstance(value, (str, int, float)):
            raise InputError(f"field '{name}' must be a string", line=line, field=name)
    instruction = row["instruction"]
    extra_input = row.get("input")
    if isinstance(extra_input, str) and extra_input.strip():
        # Alpaca-style rows keep the task and its input apart; the model sees them joined.
        instruction = f"{instruction}\n{extra_input}"
    answer = row.get("answer")
    raw_id = row.get("id", default_id)
    if not isinstance(raw_id, (str, int)):
        raise InputError("field 'id' must be a string or an integer", line=line, field="id")
    known = {"id", "instruction", "output", "input", "answer"}
    extra = tuple((k, v) for k, v in row.items() if k not in known)
    return Example(
        id=str(raw_id),
        instruction=instruction,
        output=row["output"],
        answer=None if answer is None else str(answer),
        extra=extra,
    )


def iter_jsonl(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """Yield (line number, decoded object) for every non-blank line."""
    for number, text in enumerate(lines, start=1):
        if text.strip():
            yield number, parse_jsonl_line(text, number)


def parse_jsonl_line(text: str, number: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        message = f"invalid JSON ({err.msg} at column {err.colno})"
        raise InputError(message, line=number) from None


def read_examples(path: str | Path) -> list[Example]:
    """Read and validate a whole JSONL file before any model is loaded, so bad data fails fast."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    try:
        with path.open(encoding="utf-8") as handle:
            examples = [
                example_from_row(row, line=number, default_id=str(number))
                for number, row in iter_jsonl(handle)
            ]
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    if not examples:
        raise InputError(f"{path} has no rows")
    return examples


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[str]]:
    """Write to a temporary file beside `path` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically; return how many were written."""
    count = 0
    with atomic_writer(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
