"""Reading distillation data: detect records, export rows and plain rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leaf_engine.distill_data import read_training_data, select, split
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
    first, together, second, together_1 = example.counterfactuals
    assert (first.segment, first.target, first.output_prefix) == (0, OUTPUT, "")
    assert example.collective_known and together.collective and together_1.collective
    assert (together.instruction, together.segment) == (RECORD["collective"], 0)
    assert (together_1.instruction, together_1.output_prefix, together_1.segment) == (
        "x", "7 + 5 = 12.", 1)
    assert not first.collective and not second.collective
    assert first.verified is True
    assert second.segment == 1 and second.target == " The answer is 12."
    assert second.output_prefix == "7 + 5 = 12." and second.final and second.verified is False

    (span,) = select([example])  # span counterfactuals by default
    assert span.counterfactuals == (first, second)
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


def _official(sample: int | str, instruction: str, original: str, output: str, masked: list,
              index: int = 0, **extra: object) -> dict:
    """An export row in the official pruning script's key order (`leaf_engine.export`)."""
    return {"sample_id": sample, "instruction": instruction, "masked_tokens": masked,
            "original_instruction": original, "output": output, "filepath": None,
            "answer": None, "type": None, "mask_run_index": index, "source": None, **extra}


def test_official_export_rows_and_their_unpruned_rows(tmp_path: Path) -> None:
    question = "Ann has 7 pens. Bob is 9. She buys 5 more."
    prefix = "7 + 5 = 12."
    response = {"input": "", "original_step_response": prefix}
    rows = [
        # Instruction level: two runs, and a sample with none (written unchanged).
        _official(1, "Ann has 7 pens. is 9. She buys 5 more.\n", question, OUTPUT, [" Bob"],
                  input=""),
        _official(1, "Ann has 7 pens. Bob is. She buys 5 more.\n", question, OUTPUT, [" 9"],
                  1, input=""),
        _official(2, "Add 2 and 3.", "Add 2 and 3.", "5.", [], input=""),
        # Response level: the unpruned row of segment 1, then one pruning its earlier text.
        _official("r", question, question, OUTPUT, [], input="", step_response="",
                  original_step_response="", segment=0),
        _official("r", question, question, " The answer is 12.", [], **response,
                  step_response=prefix, segment=1),
        _official("r", question, question, " The answer is 12.", [" 12"], 1, **response,
                  step_response="7 + 5 =.\n", segment=1, verified=True),
    ]
    two, none, late = read_training_data(write(tmp_path, rows))
    assert (two.id, none.id, late.id) == ("1", "2", "r")
    assert two.original.instruction == question and two.original.target == OUTPUT
    assert [c.instruction for c in two.counterfactuals] == [rows[0]["instruction"],
                                                            rows[1]["instruction"]]
    assert none.original.instruction == "Add 2 and 3." and none.counterfactuals == ()
    (only,) = late.counterfactuals  # the unpruned rows are the original, not counterfactuals
    assert (only.instruction, only.output_prefix, only.target) == (
        question, "7 + 5 =.\n", " The answer is 12.")
    assert only.segment == 1 and only.final and only.verified is True


def test_the_pruning_script_output_and_an_input_field_are_read(tmp_path: Path) -> None:
    rows = [
        # The official script's own rows have no `input` and no step_response.
        _official(1, "Q one two.\n", "Q one more two.", "A.", [" more"]),
        # An official training row with a separate input: the model sees them joined.
        _official(2, "Solve.\n", "Solve this.", "B.", [" this"], input="x = 3"),
    ]
    plain, joined = read_training_data(write(tmp_path, rows))
    assert plain.original.instruction == "Q one more two."
    assert plain.counterfactuals[0].instruction == "Q one two.\n"
    assert plain.counterfactuals[0].segment == 0
    assert joined.original.instruction == "Solve this.\nx = 3"
    assert joined.counterfactuals[0].instruction == "Solve.\n\nx = 3"


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


def test_collective_counterfactuals_are_chosen_by_name(tmp_path: Path) -> None:
    (example,) = read_training_data(write(tmp_path, [RECORD]))
    first, together, second, together_1 = example.counterfactuals
    (collective,) = select([example], counterfactuals="collective")
    assert collective.counterfactuals == (together, together_1)
    # Segment 0 had one span, so its collective is that span's counterfactual: kept once.
    assert together.instruction == first.instruction
    (both,) = select([example], counterfactuals="both")
    assert both.counterfactuals == (first, second, together_1)
    (instr,) = select([example], level="instruction", counterfactuals="collective")
    assert instr.counterfactuals == (together,)


def test_a_record_with_nothing_pruned_has_no_collective(tmp_path: Path) -> None:
    clean = {**RECORD, "id": "clean", "spans": [], "pruned": [],
             "collective": RECORD["instruction"], "views": []}
    (example,) = read_training_data(write(tmp_path, [clean]))
    assert example.collective_known and example.counterfactuals == ()
    (chosen,) = select([example], counterfactuals="collective")
    assert chosen.counterfactuals == ()


@pytest.mark.parametrize("choice", ["collective", "both"])
def test_collective_needs_detect_records(tmp_path: Path, choice: str) -> None:
    export = {"sample_id": "s", "instruction": "Orig.", "original_instruction": "Orig. Noise.",
              "output": "A.", "masked_tokens": ["Noise"], "mask_run_index": 0}
    for rows in ([{"instruction": "a", "output": "b"}], [export]):
        examples = read_training_data(write(tmp_path, rows))
        with pytest.raises(InputError, match=f"counterfactuals '{choice}' needs `leaf detect` "
                                             "records") as info:
            select(examples, counterfactuals=choice)
        assert info.value.field == "counterfactuals"


def test_a_collective_of_the_wrong_type_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="line 1: field 'collective' must be a string"):
        read_training_data(write(tmp_path, [{**RECORD, "collective": ["x"]}]))
