"""`--export-pruned` against the official LeaF code (github.com/RUCBM/LeaF).

Two pieces of it are re-implemented here from what the files do (nothing copied):

* the pruning script's writer, src/Confounding_token_detection/
  remove_confounding_tokens_math.py (`get_tokens_info`, `get_masked_instructions_by_runs`,
  `main`), fed our masks as the gradient file it reads;
* the distillation loaders' field access, src/Causal_attention_distillation/
  LeaF_instruct_level/distill_instruct_level.py and LeaF_response_level/
  distill_response_level.py (`tokenize`, `generate_and_tokenize_prompt`), with their
  utils/prompter.py (`Prompter.generate_prompt`), on a file read the way
  `datasets.load_dataset("json")` reads it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from leaf_engine.analysis import Analysis, DetectConfig, ViewAnalysis, decide, passthrough
from leaf_engine.data import example_from_row
from leaf_engine.detect_output import write_detections
from leaf_engine.distill_data import read_training_data
from leaf_engine.export import (
    LOADER_KEYS,
    OFFICIAL_KEYS,
    RESPONSE_KEYS,
    official_line,
    sample_id,
)
from leaf_engine.records import (
    ContextToken,
    Counterfactual,
    DetectionRecord,
    TokenScore,
    ViewResult,
)
from leaf_engine.selection import with_verified

OFFICIAL_MATH_BOTTOM = 0.05  # remove_confounding_tokens_math.py masks the bottom 5 % ...
OFFICIAL_CAP = 0.5  # ... of grad_diff values, never above 0.5
CUTOFF_LEN = 256  # the loaders' `cutoff_len` default

# Official-style instruction file rows (Numina's fields) and, per row, what to flag.
ROWS = [
    {"instruction": "Ann has 24 pens.\n\nThe sky is 99 98 blue. She buys 5 café pens. How many?",
     "output": "She has 29 pens.", "prompt_answer": "29", "filepath": "numina/1.json",
     "type": "math", "source": "cn_k12"},
    {"instruction": "Bob had 12 apples and gave 4 to Carl.", "output": "Bob has 8 apples.",
     "prompt_answer": "8", "source": "gsm8k"},
    {"instruction": "Please   answer\n\nthe question: do 3, 14 and 159 matter?",
     "output": "Yes.", "type": "yes-no"},
]
HOT = [("sky", "99", "98", "café"), (), ("3", "14")]


# ------------------------------------------------------- the official pruning script


def official_tokens_info(grad_diff: Sequence[dict[str, Any]], text: str
                         ) -> list[tuple[str, bool]] | None:
    """(matched text, masked) per gradient entry; None where the script gives up on a sample."""
    values = sorted(entry["grad_diff"] for entry in grad_diff)
    cut = min(values[int(len(values) * OFFICIAL_MATH_BOTTOM)] if values else 0.0, OFFICIAL_CAP)
    info = []
    for entry in grad_diff:
        found = re.match(r"\s*" + re.escape(entry["token"]), text)
        if found is None:
            return None
        matched = found.group(0)
        text = text[len(matched):]
        visible = matched.strip() != "" and matched not in ("\n", "\\")
        info.append((matched, entry["grad_diff"] <= cut and visible))
    return info


def official_runs(info: Sequence[tuple[str, bool]]) -> list[list[int]]:
    return [[i for i, _ in group] for masked, group in
            itertools.groupby(enumerate(info), key=lambda item: item[1][1]) if masked]


def official_pruning_file(instructions: Sequence[Mapping[str, Any]],
                          grads: Sequence[Mapping[str, Any]]) -> str:
    """The JSONL text the math script writes for an instruction file and a gradient file."""
    lines = []
    for entry in grads:
        inst = instructions[entry["sample_id"] - 1]
        info = official_tokens_info(entry.get("grad_diff", []), inst.get("instruction"))
        if info is None:
            continue
        runs = official_runs(info)
        variants = [("".join(text for i, (text, _) in enumerate(info) if i not in run) + "\n",
                     [info[i][0] for i in run]) for run in runs]
        for index, (variant, masked) in enumerate(variants or [(inst.get("instruction"), [])]):
            row = {"sample_id": entry["sample_id"], "instruction": variant,
                   "masked_tokens": masked, "original_instruction": inst.get("instruction"),
                   "output": inst.get("output"), "filepath": inst.get("filepath"),
                   "answer": inst.get("prompt_answer"), "type": inst.get("type"),
                   "mask_run_index": index, "source": inst.get("source")}
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


def gradient_entry(sample_id: int, text: str, tokens: Sequence[TokenScore]) -> dict[str, Any]:
    """The gradient file entry the official detection would write for these masks: each
    token's stripped text, grad_diff 0 where masked and 1 elsewhere (so the bottom-5 % rule
    masks exactly those). Byte tokens of one character share its offsets and are one token,
    as the official decoder sees the character."""
    masked: dict[tuple[int, int], bool] = {}
    for t in tokens:
        masked[(t.start, t.end)] = masked.get((t.start, t.end), False) or t.confounder
    return {"sample_id": sample_id, "grad_diff": [
        {"token": text[s:e].strip(), "grad_diff": 0.0 if hot else 1.0}
        for (s, e), hot in sorted(masked.items())]}


# ------------------------------------------------------- the official loaders


INSTRUCT_TEMPLATE = {"prompt_input": "<|user|>\n{instruction}\n{input}\n<|assistant|>\n",
                     "prompt_no_input": "<|user|>\n{instruction}\n<|assistant|>\n"}
STEP_TEMPLATE = {"prompt_input": "<|user|>\n{instruction}\n{input}\n<|assistant|>\n{step_response}",
                 "prompt_no_input": "<|user|>\n{instruction}\n<|assistant|>\n{step_response}"}


def load_json_dataset(path: Path) -> list[dict[str, Any]]:
    """Rows as `load_dataset("json")` hands them to `map`: every column of the file in every
    row, None where a line lacks it."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k) for k in columns} for row in rows]


def generate_prompt(template: Mapping[str, str], instruction: str, input: str | None = None,
                    step_response: str | None = None, label: str | None = None) -> str:
    """`Prompter.generate_prompt`; the response-level one also takes `step_response`."""
    key = "prompt_input" if input else "prompt_no_input"
    fields = {"instruction": instruction, "input": input, "step_response": step_response}
    res = template[key].format(**fields)
    return f"{res}{label}" if label else res


def tokenize_point(tokenizer, data_point: Mapping[str, Any], *, response: bool
                   ) -> tuple[str, str, list[int]]:
    """`generate_and_tokenize_prompt` (train_on_inputs, padding and add_eos_token off, as
    the official scripts run): (full prompt, user prompt, labels)."""
    template = STEP_TEMPLATE if response else INSTRUCT_TEMPLATE
    context = [data_point["instruction"], data_point["input"]]
    if response:
        context.append(data_point["step_response"])
    full = generate_prompt(template, *context, label=data_point["output"])
    user = generate_prompt(template, *context)
    ids = tokenizer(full, truncation=True, max_length=CUTOFF_LEN)["input_ids"]
    user_len = len(tokenizer(user, truncation=True, max_length=CUTOFF_LEN)["input_ids"])
    return full, user, [-100] * user_len + ids[user_len:]


# ------------------------------------------------------- our side


class Known:
    """Analyses handed to `write_detections` as a cache, so no model runs."""

    def __init__(self, analyses: Sequence[Analysis]) -> None:
        self.analyses = analyses

    def known(self, indices: Sequence[int]) -> Mapping[int, Analysis]:
        return {i: self.analyses[i] for i in indices}

    def add(self, indices: Sequence[int], analyses: Sequence[Analysis]) -> None:
        raise AssertionError("every analysis is known")


def _regions(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    return [m.span() for w in words for m in re.finditer(rf"(?<!\w){re.escape(w)}(?!\w)", text)]


def _view(tok, texts: Mapping[str, str], target: tuple[int, int],
          hot: Sequence[str]) -> ViewAnalysis:
    """Real BPE tokens of each field; the tokens overlapping a hot word are the ones only
    the student attends to."""
    tokens, teacher = [], []
    for field, text in texts.items():
        regions = _regions(text, hot)
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        for s, e in enc["offset_mapping"]:
            if e > s:
                tokens.append(ContextToken(field, s, e))
                teacher.append(0.0 if any(s < b and a < e for a, b in regions) else 1.0)
    t = np.array(teacher)
    return ViewAnalysis(target, tuple(tokens), t, 1.0 - t, None)


def _analyses(tok) -> list[Analysis]:
    return [Analysis(r["instruction"], r["output"],
                     (_view(tok, {"instruction": r["instruction"]}, (0, len(r["output"])), hot),))
            for r, hot in zip(ROWS, HOT, strict=True)]


def _examples():
    return [example_from_row(r, line=n, default_id=str(n)) for n, r in enumerate(ROWS, start=1)]


# ------------------------------------------------------- byte for byte


@pytest.mark.parametrize("unit", ["token", "word"])
def test_export_is_the_official_pruning_file_plus_the_loader_fields(
    bpe_tok, tmp_path: Path, unit: str
) -> None:
    config = DetectConfig(tau=0.1, unit=unit)
    examples, analyses = _examples(), _analyses(bpe_tok)
    export = tmp_path / "pruned.jsonl"
    counts = write_detections(examples, config, tmp_path / "records.jsonl", detector=None,
                              batch_size=1, export=export, cache=Known(analyses))
    records = [decide(a, config, example_id=e.id, passthrough=passthrough(e))
               for a, e in zip(analyses, examples, strict=True)]
    grads = [gradient_entry(n, r.instruction, r.main.tokens)
             for n, r in enumerate(records, start=1)]
    official = official_pruning_file(ROWS, grads).splitlines(keepends=True)

    ours = export.read_bytes().decode("utf-8").splitlines(keepends=True)
    assert counts.pruned_rows == len(ours) == len(official)
    # Each line is the official line, byte for byte, with `"input": ""` appended.
    assert ours == [line[:-2] + ', "input": ""}\n' for line in official]
    assert "café" in export.read_text(encoding="utf-8")  # not \u00e9: ensure_ascii=False
    rows = [json.loads(line) for line in ours]
    assert all(tuple(r) == OFFICIAL_KEYS + LOADER_KEYS for r in rows)

    first = [r for r in rows if r["sample_id"] == 1]
    assert all(r["instruction"].endswith("?\n") for r in first)  # the official "\n"
    masked = [r["masked_tokens"] for r in first]
    if unit == "token":
        # The BPE splits " 99 98" into " ", "9", "9", " ", "9", "8": the whitespace token
        # ends the official run, so "99" and "98" are two rows though they are one span;
        # the two byte tokens of "é" are one character.
        assert masked == [["s", "k", "y"], ["9", "9"], ["9", "8"], ["c", "a", "f", "é"]]
        assert len(records[0].spans) == 3
    else:
        assert masked == [[" sky"], [" 99", " 98"], [" café"]]
    # Nothing flagged: one row, the instruction unchanged (no "\n"), nothing masked.
    (unpruned,) = [r for r in rows if r["sample_id"] == 2]
    assert unpruned["instruction"] == unpruned["original_instruction"] == ROWS[1]["instruction"]
    assert unpruned["masked_tokens"] == [] and unpruned["mask_run_index"] == 0
    assert (unpruned["answer"], unpruned["filepath"], unpruned["type"]) == ("8", None, None)


def test_a_lone_backslash_and_whitespace_are_never_masked() -> None:
    instruction, output = "Use x\\y  now.", "ok"
    cut = [(0, 3, False), (3, 5, True), (5, 6, True), (6, 7, True), (7, 9, True),
           (9, 12, True), (12, 13, False)]  # "Use", " x", "\\", "y", "  ", "now", "."
    tokens = tuple(TokenScore(instruction[s:e], s, e, 0.0, 1.0, 0.0, hot)
                   for s, e, hot in cut)
    nothing = Counterfactual(instruction, "", None, ())
    record = DetectionRecord("1", instruction, output,
                             (ViewResult(0, (0, 2), tokens, (), (), nothing),))
    rows = record.export_rows()
    assert {r["answer"] for r in rows} == {None}
    with_answer = DetectionRecord("1", instruction, output, record.views,
                                  passthrough={"answer": "7"})
    # Our gold answer is the official instruction file's `prompt_answer`.
    assert {r["answer"] for r in with_answer.export_rows()} == {"7"}
    # " x" is a run; "\\" right after it is never masked, so "y" starts a new one, and the
    # flagged whitespace token before "now" is not masked either and ends it.
    assert [r["masked_tokens"] for r in rows] == [[" x"], ["y"], ["now"]]
    assert [r["instruction"] for r in rows] == ["Use\\y  now.\n", "Use x\\  now.\n",
                                                "Use x\\y  .\n"]
    official = official_pruning_file(
        [{"instruction": instruction, "output": output}],
        [gradient_entry(1, instruction, tokens)])
    assert "".join(official_line(r) for r in rows) == "".join(
        line[:-2] + ', "input": ""}\n' for line in official.splitlines(keepends=True))


def test_sample_id_is_a_number_when_the_id_is_one() -> None:
    # A file without ids numbers its examples by line, as the official 1-based sample_id.
    assert [sample_id(i) for i in ("5", "007", "q1", "-2")] == [5, "007", "q1", "-2"]


def test_response_level_prunes_each_field_as_the_official_writer_would(bpe_tok) -> None:
    instruction = "Ann has 7 pens. The sky is blue. She buys 5 more pens. How many?"
    output = "7 + 5 = 12 pens. The answer is 12."
    k = output.index(" The")
    prefix = output[:k]
    hot_instruction, hot_prefix = ("sky", "blue"), ("12",)
    analysis = Analysis(instruction, output, (
        _view(bpe_tok, {"instruction": instruction}, (0, len(output)), hot_instruction),
        _view(bpe_tok, {"instruction": instruction, "output": prefix}, (k, len(output)),
              (*hot_instruction, *hot_prefix)),
    ))
    record = decide(analysis, DetectConfig(level="response", unit="token", tau=0.1),
                    example_id="q7")
    rows = record.export_rows()
    assert all(tuple(r) == OFFICIAL_KEYS + LOADER_KEYS + RESPONSE_KEYS for r in rows)
    assert {r["sample_id"] for r in rows} == {"q7"}
    top = [r for r in rows if r["segment"] == 0]
    later = [r for r in rows if r["segment"] == 1]
    assert top and later
    assert all(r["step_response"] == r["original_step_response"] == "" and r["output"] == output
               for r in top)
    assert all(r["output"] == output[k:] and r["original_step_response"] == prefix
               for r in later)

    # Each later row prunes one field, the official way; the other stays as it was.
    view = record.views[1]
    official = official_pruning_file(
        [{"instruction": instruction}, {"instruction": prefix}],
        [gradient_entry(1, instruction, [t for t in view.tokens if t.field == "instruction"]),
         gradient_entry(2, prefix, [t for t in view.tokens if t.field == "output"])])
    expected = [json.loads(line) for line in official.splitlines()]
    got = [(r["instruction"], r["step_response"], r["masked_tokens"]) for r in later]
    assert got == [(e["instruction"], prefix, e["masked_tokens"]) for e in expected
                   if e["sample_id"] == 1] + [(instruction, e["instruction"], e["masked_tokens"])
                                              for e in expected if e["sample_id"] == 2]
    assert any(r["step_response"].endswith(".\n") for r in later)  # the official "\n"


# ------------------------------------------------------- the official loaders read it


def test_the_official_loaders_read_the_export_at_both_levels(bpe_tok, tmp_path: Path) -> None:
    export = tmp_path / "pruned.jsonl"
    write_detections(_examples(), DetectConfig(tau=0.1, unit="token"), tmp_path / "r.jsonl",
                     detector=None, batch_size=1, export=export, cache=Known(_analyses(bpe_tok)))
    instruction = "Ann has 7 pens. The sky is blue. She buys 5 more pens. How many?"
    output = "7 + 5 = 12 pens. The answer is 12."
    k = output.index(" The")
    analysis = Analysis(instruction, output, (
        _view(bpe_tok, {"instruction": instruction}, (0, len(output)), ("sky",)),
        _view(bpe_tok, {"instruction": instruction, "output": output[:k]}, (k, len(output)),
              ("sky", "12")),
    ))
    response = tmp_path / "response.jsonl"
    response.write_text("".join(official_line(r) for r in decide(
        analysis, DetectConfig(level="response", unit="token", tau=0.1),
        example_id="9").export_rows()), encoding="utf-8")

    for path, is_response in ((export, False), (response, True)):
        data = load_json_dataset(path)
        trained = {(c.instruction, c.output_prefix, c.target)
                   for e in read_training_data(path) for c in e.counterfactuals}
        seen = set()
        for point in data:
            full, user, labels = tokenize_point(bpe_tok, point, response=is_response)
            assert "None" not in full and full == user + point["output"]
            assert user.startswith(f"<|user|>\n{point['instruction']}\n<|assistant|>\n")
            assert any(label != -100 for label in labels)
            seen.add((point["instruction"], point.get("step_response") or "", point["output"]))
        # `leaf distill` trains on the same contexts the official loader builds.
        assert trained and trained <= seen


def test_the_pruning_script_alone_is_not_loadable(bpe_tok, tmp_path: Path) -> None:
    """Why `input` is appended: the official loader reads `data_point["input"]`, which the
    pruning script never writes."""
    path = tmp_path / "official.jsonl"
    path.write_text(official_pruning_file(ROWS[:1], [{"sample_id": 1, "grad_diff": []}]),
                    encoding="utf-8")
    (point,) = load_json_dataset(path)
    with pytest.raises(KeyError, match="input"):
        tokenize_point(bpe_tok, point, response=False)


# ------------------------------------------------------- verified, and reading it back


def test_verified_follows_the_span_each_run_lies_in(bpe_tok) -> None:
    config = DetectConfig(tau=0.1, unit="token")
    first, second, _ = (decide(a, config, example_id=e.id, passthrough=passthrough(e))
                        for a, e in zip(_analyses(bpe_tok), _examples(), strict=True))
    assert [first.instruction[s:e] for s, e in first.spans] == ["sky", "99 98", "café"]
    _, rows = with_verified(first, [[True, False, True]])
    # "99 98" is one span but two official runs: both rows take the span's mark.
    assert [(r["masked_tokens"], r["verified"]) for r in rows] == [
        (["s", "k", "y"], True), (["9", "9"], False), (["9", "8"], False),
        (["c", "a", "f", "é"], True)]
    assert list(rows[0])[-1] == "verified"
    assert [r["verified"] for r in with_verified(second, [[]])[1]] == [None]
    assert all("verified" not in r for r in with_verified(first, None)[1])


def test_leaf_distill_reads_the_export_back(bpe_tok, tmp_path: Path) -> None:
    export = tmp_path / "pruned.jsonl"
    write_detections(_examples(), DetectConfig(tau=0.1, unit="token"), tmp_path / "r.jsonl",
                     detector=None, batch_size=1, export=export, cache=Known(_analyses(bpe_tok)))
    rows = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines()]
    examples = read_training_data(export)
    assert [e.id for e in examples] == ["1", "2", "3"]
    for example, row in zip(examples, ROWS, strict=True):
        assert example.original.instruction == row["instruction"]
        assert example.original.target == row["output"]
    pruning = [r for r in rows if r["masked_tokens"]]
    # The unchanged row of a sample with nothing flagged is its original, not a counterfactual.
    assert sum(len(e.counterfactuals) for e in examples) == len(pruning) == len(rows) - 1
    assert [c.instruction for c in examples[0].counterfactuals] == \
        [r["instruction"] for r in pruning if r["sample_id"] == 1]
