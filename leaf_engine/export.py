"""`leaf detect --export-pruned`: the rows the official LeaF pruning script writes, for our masks.

What the official code (github.com/RUCBM/LeaF) does, read for this module:

* `src/Confounding_token_detection/remove_confounding_tokens_math.py` (`get_tokens_info`,
  `get_masked_instructions_by_runs`, `main`) walks the scored tokens (decoded, stripped)
  through the instruction, each one taking the whitespace before it (`^\\s*token`); a token
  whose matched text is only whitespace, or a lone backslash, is never masked. Each run of
  consecutive masked tokens (consecutive by index, so an unmasked whitespace token ends a
  run) gives one variant: the matched texts of every other token joined, plus "\\n". A
  sample with no run gives one row with its instruction unchanged (no "\\n"); a sample whose
  tokens cannot be matched is skipped. No other row repeats the original. A row is

      {"sample_id", "instruction", "masked_tokens", "original_instruction", "output",
       "filepath", "answer", "type", "mask_run_index", "source"}

  in that order: `sample_id` the gradient file's 1-based row number, `instruction` the
  variant, `masked_tokens` the run's matched texts (leading whitespace included),
  `original_instruction` and `output` the instruction file's, `answer` its `prompt_answer`,
  `filepath`, `type` and `source` copied (null when absent), `mask_run_index` the variant's
  index. Each row is written as `json.dumps(row, ensure_ascii=False) + "\\n"` to a UTF-8 file.
* `remove_confounding_tokens_code.py` prunes the same way (bottom 10 % instead of 5 %) but
  writes {"id", "sample_id", "gpt_question", "masked_tokens", "original_instruction",
  "output", "mask_run_index", "context_messages", "tests", "source"}: no official loader reads
  `gpt_question`, so we write the math script's row.
* `src/Causal_attention_distillation/LeaF_instruct_level/distill_instruct_level.py`
  (`generate_and_tokenize_prompt`, `generate_and_tokenize_prompt_teacher`) reads
  `data_point["instruction"]`, `["input"]` and `["output"]` of every row of a
  `load_dataset("json")` file, and `utils/prompter.py`'s `generate_prompt(instruction,
  input, output)` renders the template's `prompt_input` ("...{instruction}\\n{input}...")
  when `input` is non-empty, `prompt_no_input` otherwise, then appends the output. The
  response-level `LeaF_response_level/distill_response_level.py` also reads
  `["step_response"]`, which its templates place after the assistant header. Teacher and
  student read the same file, so the hybrid loss is the mix of rows in it.

The pruning script writes neither `input` nor `step_response`, so its file cannot go to the
loaders as it is (the data the official runs trained on, `data/*/Distill_*.json`, is not
published). An export row is therefore the math script's row for the same masks, key for
key and byte for byte, with what the loaders need appended:

    "input": ""                  always (our instruction already has any input joined with
                                 "\\n", which is what `prompt_input` renders)
    "step_response"              response level only: the earlier response text ("" at
    "original_step_response"     segment 0), pruned or not, and the segment (0, 1, 2)
    "segment"
    "verified"                   with `leaf detect --verify` only (`selection.with_verified`)

The masks are the record's per-token `confounder` flags. At response level, where there is
no official writer, each later segment's context is pruned the same way, one field at a
time: a run in the instruction gives a pruned `instruction` (plus "\\n") and the original
`step_response`, a run in the earlier response the reverse; `output` is the segment the
context predicts. `sample_id` is the example's id, as a number when it is one (the line
number, as in the official file, when the data has no ids). `answer` is the row's
`prompt_answer`, as the official script copies it, or else its `answer` (the same gold
answer under our name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leaf_engine.records import DetectionRecord, ViewResult

log = logging.getLogger(__name__)

OFFICIAL_KEYS = ("sample_id", "instruction", "masked_tokens", "original_instruction",
                 "output", "filepath", "answer", "type", "mask_run_index", "source")
LOADER_KEYS = ("input",)  # appended: what distill_instruct_level.py reads and the script lacks
RESPONSE_KEYS = ("step_response", "original_step_response", "segment")
RUN_END = "\n"  # the official script ends every pruned text with it
NEVER_MASKED = ("\\",)  # besides whitespace: a lone backslash is never masked


@dataclass(frozen=True)
class Piece:
    """One scored token as the official script matches it: its text with the whitespace
    before it. `start`/`end` are the token's own offsets in its field."""

    text: str
    masked: bool
    start: int
    end: int


@dataclass(frozen=True)
class ExportRow:
    """An export row and where it comes from: `views[view]`, and the record's pruned
    variant (`views[view].pruned[variant]`) whose span holds its run; None for a row that
    prunes nothing."""

    fields: dict[str, Any]
    view: int
    variant: int | None


def official_rows(record: DetectionRecord) -> list[ExportRow]:
    """The export rows of one record, in file order."""
    response = record.params.get("level") == "response" or len(record.views) > 1
    rows: list[ExportRow] = []
    for index, view in enumerate(record.views):
        rows.extend(_view_rows(record, index, view, response=response))
    return rows


def official_line(row: dict[str, Any]) -> str:
    """One line of the file, as the official script writes it."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def sample_id(example_id: str) -> int | str:
    """The official `sample_id` is a number; ours is the example id, a number when it is one."""
    if example_id.isdecimal() and str(int(example_id)) == example_id:
        return int(example_id)
    return example_id


def match_tokens(text: str, tokens: Sequence[tuple[int, int, bool]]) -> list[Piece] | None:
    """Match (start, end, flagged) tokens through `text` as the official script does; None
    where it would fail (visible text between two tokens).

    Tokens that overlap (a character split over several byte tokens) count as one, flagged
    if any part is: the official script would decode each part to U+FFFD, fail to match it
    and skip the whole sample. Zero-width tokens are not tokens of the text.
    """
    units: list[list[Any]] = []
    for start, end, flagged in sorted(tokens):
        if end <= start:
            continue
        if units and start < units[-1][1]:
            units[-1][1] = max(units[-1][1], end)
            units[-1][2] = units[-1][2] or flagged
        else:
            units.append([start, end, flagged])
    out: list[Piece] = []
    pos = 0
    for start, end, flagged in units:
        raw = text[start:end]
        content = raw.strip()
        if content:
            begin = start + len(raw) - len(raw.lstrip())
            if begin < pos or text[pos:begin].strip():
                return None
            stop = begin + len(content)
        else:
            # A token that strips to nothing matches the whole whitespace run ahead of it.
            stop = pos
            while stop < len(text) and text[stop].isspace():
                stop += 1
        matched = text[pos:stop]
        masked = flagged and bool(matched.strip()) and matched not in NEVER_MASKED
        out.append(Piece(matched, masked, start, end))
        pos = stop
    return out


def runs(found: Sequence[Piece]) -> list[list[int]]:
    """Indices of each run of consecutive masked pieces."""
    out: list[list[int]] = []
    current: list[int] = []
    for i, piece in enumerate(found):
        if piece.masked:
            current.append(i)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def _view_rows(
    record: DetectionRecord, index: int, view: ViewResult, *, response: bool
) -> list[ExportRow]:
    texts = {"instruction": record.instruction, "output": record.output[: view.target[0]]}
    matched: dict[str, list[Piece]] = {}
    for name, text in texts.items():
        found = match_tokens(text, [(t.start, t.end, t.confounder) for t in view.tokens
                                    if t.field == name])
        if found is None:
            log.warning("example %s, segment %d: its tokens do not cover the %s; the "
                        "official script skips such a sample, and so does the export",
                        record.id, view.segment, name)
            return []
        matched[name] = found
    # (instruction, earlier response, masked texts, variant) per row, in file order
    variants: list[tuple[str, str, list[str], int | None]] = []
    for name, found in matched.items():
        for run in runs(found):
            cut = set(run)
            context = dict(texts)
            context[name] = "".join(p.text for i, p in enumerate(found) if i not in cut) + RUN_END
            variants.append((context["instruction"], context["output"],
                             [found[i].text for i in run],
                             _variant(view, name, found[run[0]].start, found[run[-1]].end)))
    if not variants:
        variants.append((texts["instruction"], texts["output"], [], None))
    target = record.output[view.target[0] : view.target[1]] if view.segment else record.output
    extra = record.passthrough
    rows = []
    for run_index, (instruction, prefix, masked, variant) in enumerate(variants):
        fields: dict[str, Any] = {
            "sample_id": sample_id(record.id),
            "instruction": instruction,
            "masked_tokens": masked,
            "original_instruction": record.instruction,
            "output": target,
            "filepath": extra.get("filepath"),
            "answer": extra.get("prompt_answer", extra.get("answer")),
            "type": extra.get("type"),
            "mask_run_index": run_index,
            "source": extra.get("source"),
            "input": "",
        }
        if response:
            fields.update(step_response=prefix, original_step_response=texts["output"],
                          segment=view.segment)
        rows.append(ExportRow(fields, index, variant))
    return rows


def _variant(view: ViewResult, name: str, start: int, end: int) -> int | None:
    """The record's pruned variant whose span overlaps this run (a run lies inside one span:
    spans also bridge the whitespace tokens that end official runs)."""
    for i, p in enumerate(view.pruned):
        if p.span is not None and p.span.field == name and p.span.start < end \
                and start < p.span.end:
            return i
    return None
