"""Reading distillation data: detect records, export rows and plain rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leaf_engine.distill_data import counterfactual_index, read_training_data, select, split
from leaf_engine.errors import InputError

OUTPUT = "7 + 5 = 12. The answer is 12."
RECORD = {
    "id": "r1", "instruction": "Ann has 7 pens. Bob is 9. She buys 5 more.", "output": OUTPUT,
    "answer": "12", "tokens": [], "spans": [[16, 25]],
    "pruned": [{"instruction": "Ann has 7 pens. She buys 5 more.", "span": [16, 25],
                "verified": True}],
    "collective": "Ann has 7 pens. She buys 5 more.",
    "views": [{"segment": 1, "target": [11, len(OUTPUT)], "tokens": [], "spans": [],
               "pruned": [{"instruction": "Ann has 7 pens. She buys 5 more.",
                           "output_prefix": "7 + 5 = 12.", "span": None, "verified": False}],
               "collective": {"instruction": "x", "output_prefix": "7 + 5 = 12."}}],
}


def write(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_detect_record_gives_original_and_both_levels(tmp_path: Path) -> None:
    (example,) = read_training_data(write(tmp_path, [RECORD]))
    assert example.id == "r1"
    assert example.original.instruction == RECORD["instruction"]
    assert example.original.target == OUTPUT and example.original.final
    first, second = example.counterfactuals
    assert (first.segment, first.target, first.output_prefix) == (0, OUTPUT, "")
    assert first.verified is True
    assert second.segment == 1 and second.target == " The answer is 12."
    assert second.output_prefix == "7 + 5 = 12." and second.final and second.verified is False

    (instr,) = select([example], level="instruction")
    assert [c.segment for c in instr.counterfactuals] == [0]
    (verified,) = select([example], only_verified=True)
    assert verified.counterfactuals == (first,)


def test_export_rows_are_grouped_under_their_plain_original(tmp_path: Path) -> None:
    rows = [
        {"id": "s", "instruction": "Orig. Noise here.", "output": "A. B. C."},
        {"sample_id": "s", "instruction": "Orig.", "original_instruction": "Orig. Noise here.",
         "output": "A. B. C.", "masked_tokens": ["Noise"], "mask_run_index": 0},
        {"sample_id": "s", "instruction": "Orig.", "original_instruction": "Orig. Noise here.",
         "output": " B.", "output_prefix": "A.", "original_output_prefix": "A.", "segment": 1,
         "masked_tokens": [], "mask_run_index": 0},
        {"sample_id": "s", "instruction": "Orig.", "original_instruction": "Orig. Noise here.",
         "output": " C.", "output_prefix": "A. B.", "original_output_prefix": "A. B.",
         "segment": 2, "masked_tokens": [], "mask_run_index": 0},
        {"sample_id": 7, "instruction": "Short.", "original_instruction": "Short. Extra.",
         "output": " tail.", "output_prefix": "Head.", "original_output_prefix": "Head.",
         "segment": 1, "masked_tokens": [], "mask_run_index": 0},
    ]
    grouped, alone = read_training_data(write(tmp_path, rows))
    assert grouped.original.target == "A. B. C." and len(grouped.counterfactuals) == 3
    assert [c.final for c in grouped.counterfactuals] == [True, False, True]
    # Without its original row, an example is rebuilt from the export rows.
    assert alone.id == "7" and alone.original.instruction == "Short. Extra."
    assert alone.original.target == "Head. tail." and alone.counterfactuals[0].final


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"instruction": "a"}], "line 1: missing field 'output'"),
        ([{"instruction": "a", "output": 3}], "line 1: field 'output' must be a string"),
        ([{"id": 1, "instruction": "a", "output": "b"}, {"id": 1, "instruction": "c",
          "output": "d"}], "line 2: duplicate id '1'"),
        ([{"instruction": "a", "original_instruction": "b", "output": "c"}],
         "line 1: export rows need 'sample_id'"),
        ([{**RECORD, "pruned": "nope"}], "line 1: field 'pruned' must be a list"),
        ([{**RECORD, "views": [{"segment": 1, "target": [0, 999], "pruned": []}]}],
         "views[].target must be [start, end] inside the output"),
        ([[1, 2]], "line 1: expected a JSON object"),
    ],
)
def test_bad_rows_name_line_and_field(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(InputError, match=None) as info:
        read_training_data(write(tmp_path, rows))
    assert message in str(info.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has no rows"):
        read_training_data(write(tmp_path, []))
    with pytest.raises(InputError, match="data file not found"):
        read_training_data(tmp_path / "nope.jsonl")


def test_response_level_and_verified_need_such_rows(tmp_path: Path) -> None:
    examples = read_training_data(write(tmp_path, [{"instruction": "a", "output": "b"}]))
    with pytest.raises(InputError, match="level 'response' needs response-level rows"):
        select(examples, level="response")
    with pytest.raises(InputError, match="leaf detect --verify"):
        select(examples, only_verified=True)


def test_split_holds_out_whole_examples(tmp_path: Path) -> None:
    rows = [{"id": i, "instruction": f"q{i}", "output": "a"} for i in range(20)]
    examples = read_training_data(write(tmp_path, rows))
    train, val = split(examples, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert {e.id for e in train}.isdisjoint({e.id for e in val})
    assert split(examples, 0.25, seed=3) == (train, val)  # seeded
    assert split(examples, 0.01, seed=0) == (examples, [])  # floor(0.2) = 0: no validation


def test_counterfactual_rotation_covers_all() -> None:
    seen = {counterfactual_index("x", 3, epoch, seed=0) for epoch in range(3)}
    assert seen == {0, 1, 2}
    assert counterfactual_index("x", 0, 0, seed=0) is None
