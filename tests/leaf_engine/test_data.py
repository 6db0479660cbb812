from __future__ import annotations

from pathlib import Path

import pytest

from leaf_engine.data import atomic_writer, read_examples
from leaf_engine.errors import InputError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    return path


def test_reads_rows_with_input_answer_and_default_ids(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"instruction": "Add.", "input": "2 and 3", "output": "5", '
                            '"answer": 5, "topic": "math"}\n\n'
                            '{"instruction": "x", "output": "y"}\n')
    first, second = read_examples(path)
    assert first.instruction == "Add.\n2 and 3" and first.answer == "5" and first.id == "1"
    assert dict(first.extra) == {"topic": "math"}
    assert second.id == "3"  # ids default to the line number


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"instruction": "a", "output": "b"}\n{oops\n', "line 2: invalid JSON"),
        ('{"instruction": "a"}\n', "line 1: missing field 'output'"),
        ('{"instruction": "  ", "output": "b"}\n', "line 1: field 'instruction' is empty"),
        ('{"instruction": "a", "output": 3}\n', "line 1: field 'output' must be a string"),
        ('[1, 2]\n', "line 1: expected a JSON object"),
        ('{"instruction": "a", "output": "b", "id": [1]}\n', "line 1: field 'id'"),
        ("\n\n", "has no rows"),
    ],
)
def test_bad_rows_name_the_line_and_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_examples(_write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_examples(tmp_path / "nope.jsonl")


def test_atomic_writer_leaves_old_file_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_writer(out) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert out.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [out]
