"""Training data for distillation: original rows and their counterfactual (pruned) rows.

Three kinds of JSONL line are accepted, in one file or mixed:

* `leaf detect` records (they have `pruned`): the original row, one counterfactual per
  pruned span and, at response level, one per pruned span of each later segment (`views`),
  plus each segment's collective counterfactual (all its spans pruned at once);
* `--export-pruned` rows (they have `original_instruction`): the official pruning script's
  rows (`leaf_engine.export`), grouped by `sample_id`; response-level ones carry
  `step_response` (`output_prefix` in older exports) and `segment`. A row that prunes
  nothing (the official script writes one for a sample with no run) is the original;
* plain rows (`instruction`, `output`[, `input`, `id`]): an original with no counterfactual.
  A plain row whose `id` matches export rows' `sample_id` is their original.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from leaf_engine.data import example_from_row, iter_jsonl
from leaf_engine.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRow:
    """One sequence to distill on: context (instruction + output prefix) -> target."""

    instruction: str
    target: str
    output_prefix: str = ""  # earlier response text placed after the assistant header
    final: bool = True  # the target ends the response, so the EOS token is distilled too
    segment: int = 0  # 0: the whole response; k >= 1: response segment k (response level)
    verified: bool | None = None  # from `leaf detect --verify`; None when never checked
    collective: bool = False  # every span of its segment pruned at once, not one span


@dataclass(frozen=True)
class TrainExample:
    """An original row and the counterfactuals built from it by pruning confounders."""

    id: str
    original: TrainRow
    counterfactuals: tuple[TrainRow, ...] = ()
    # From a `leaf detect` record: its collective counterfactuals are among `counterfactuals`
    # (one per segment where anything was pruned). Export and plain rows carry none.
    collective_known: bool = False


def read_training_data(path: str | Path) -> list[TrainExample]:
    """Read and validate a whole file; raise `InputError` naming the line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    originals: dict[str, TrainExample] = {}
    exported: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    order: dict[str, None] = {}  # ids in order of first appearance
    try:
        with path.open(encoding="utf-8") as handle:
            for line, row in iter_jsonl(handle):
                if not isinstance(row, dict):
                    raise InputError("expected a JSON object", line=line)
                if "original_instruction" in row:
                    key = _sample_id(row, line)
                    exported.setdefault(key, []).append((line, row))
                else:
                    example = (_from_record(row, line) if "pruned" in row
                               else _from_plain(row, line))
                    if example.id in originals:
                        raise InputError(f"duplicate id '{example.id}'", line=line, field="id")
                    originals[example.id] = example
                order.setdefault(_key_of(row, line))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    if not originals and not exported:
        raise InputError(f"{path} has no rows")
    out = []
    for key in order:
        example = originals.get(key)
        if example is None:
            example = _original_from_exports(key, exported[key])
        full = example.original.target
        parsed = (_from_export(row, line, full) for line, row in exported.get(key, []))
        extra = tuple(row for row in parsed if row is not None)
        out.append(replace(example, counterfactuals=example.counterfactuals + extra))
    return out


def _key_of(row: dict[str, Any], line: int) -> str:
    if "original_instruction" in row:
        return _sample_id(row, line)
    return str(row.get("id", line))


def select(
    examples: Sequence[TrainExample], *, level: str = "auto", only_verified: bool = False,
    counterfactuals: str = "span",
) -> list[TrainExample]:
    """Keep the counterfactuals the run asked for: instruction level drops response-level
    rows; `only_verified` drops those `leaf detect --verify` did not confirm;
    `counterfactuals` picks span ones, collective ones or both (a collective equal to a span
    counterfactual, when a segment had a single span, is kept once)."""
    if level == "response" and not any(c.segment for e in examples for c in e.counterfactuals):
        raise InputError("level 'response' needs response-level rows; run `leaf detect --level "
                         "response` (or pass level 'auto')")
    if only_verified and not any(c.verified is not None for e in examples
                                 for c in e.counterfactuals):
        raise InputError("only_verified needs rows from `leaf detect --verify`")
    if counterfactuals != "span":
        _check_collective(examples, counterfactuals)
    out = []
    for e in examples:
        kept = tuple(c for c in e.counterfactuals
                     if not (level == "instruction" and c.segment)
                     and not (only_verified and c.verified is not True)
                     and _wanted(c, counterfactuals))
        if counterfactuals == "both":
            spans = {_context(c) for c in kept if not c.collective}
            kept = tuple(c for c in kept if not (c.collective and _context(c) in spans))
        out.append(replace(e, counterfactuals=kept))
    return out


def _wanted(row: TrainRow, counterfactuals: str) -> bool:
    return counterfactuals == "both" or row.collective == (counterfactuals == "collective")


def _context(row: TrainRow) -> tuple[str, str, str]:
    return row.instruction, row.output_prefix, row.target


def _check_collective(examples: Sequence[TrainExample], counterfactuals: str) -> None:
    """Collective counterfactuals come only from `leaf detect` records: refuse a file with
    none, and say how many examples will train without one."""
    known = sum(e.collective_known for e in examples)
    if not known:
        raise InputError(
            f"counterfactuals '{counterfactuals}' needs `leaf detect` records, which carry the "
            "collective counterfactual; this data has none (export rows and plain rows carry "
            "only span counterfactuals, or none)", field="counterfactuals")
    unknown = sum(not e.collective_known and bool(e.counterfactuals) for e in examples)
    if unknown:
        log.warning("%d examples come from export rows, which have no collective "
                    "counterfactual: they train on their span counterfactuals only under "
                    "'both', on their original alone under 'collective'", unknown)


def split(
    examples: Sequence[TrainExample], fraction: float, seed: int
) -> tuple[list[TrainExample], list[TrainExample]]:
    """(train, validation): floor(n * fraction) whole examples held out at random, so no
    counterfactual of a validation example is ever trained on."""
    n_val = int(len(examples) * fraction)
    if n_val == 0:
        return list(examples), []
    chosen = set(random.Random(seed).sample(range(len(examples)), n_val))
    train = [e for i, e in enumerate(examples) if i not in chosen]
    if not train:
        raise InputError("val_fraction leaves no training examples")
    return train, [e for i, e in enumerate(examples) if i in chosen]


# ---------------------------------------------------------------------------- parsing


def _text(row: dict[str, Any], name: str, line: int, *, required: bool = True,
          allow_empty: bool = False) -> str:
    value = row.get(name)
    if value is None and not required:
        return ""
    if value is None:
        raise InputError(f"missing field '{name}'", line=line, field=name)
    if not isinstance(value, str):
        raise InputError(f"field '{name}' must be a string", line=line, field=name)
    if not allow_empty and not value.strip():
        raise InputError(f"field '{name}' is empty", line=line, field=name)
    return value


def _verified(entry: dict[str, Any], line: int) -> bool | None:
    value = entry.get("verified")
    if value is not None and not isinstance(value, bool):
        raise InputError("field 'verified' must be true or false", line=line, field="verified")
    return value


def _sample_id(row: dict[str, Any], line: int) -> str:
    value = row.get("sample_id")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InputError("export rows need 'sample_id' (a string or an integer)", line=line,
                         field="sample_id")
    return str(value)


def _from_plain(row: dict[str, Any], line: int) -> TrainExample:
    example = example_from_row(row, line=line, default_id=str(line))
    return TrainExample(example.id, TrainRow(example.instruction, example.output))


def _from_record(row: dict[str, Any], line: int) -> TrainExample:
    """A `leaf detect` record: segment 0 at the top level, later segments under `views`."""
    base = _from_plain({k: row[k] for k in ("id", "instruction", "output") if k in row}, line)
    output = base.original.target
    pruned = row["pruned"]
    if not isinstance(pruned, list):
        raise InputError("field 'pruned' must be a list", line=line, field="pruned")
    rows = [TrainRow(_text(_entry(p, line, "pruned"), "instruction", line), output,
                     verified=_verified(p, line)) for p in pruned]
    collective = row.get("collective")
    if collective is not None and not isinstance(collective, str):
        raise InputError("field 'collective' must be a string", line=line, field="collective")
    if collective is not None and rows:  # with nothing pruned it is the original itself
        rows.append(TrainRow(_text(row, "collective", line), output, collective=True))
    views = row.get("views") or []
    if not isinstance(views, list):
        raise InputError("field 'views' must be a list", line=line, field="views")
    for view in views:
        view = _entry(view, line, "views")
        target = view.get("target")
        if (not isinstance(target, list) or len(target) != 2
                or not all(isinstance(x, int) for x in target)
                or not 0 <= target[0] < target[1] <= len(output)):
            raise InputError("views[].target must be [start, end] inside the output",
                             line=line, field="views")
        segment = view.get("segment")
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
            raise InputError("views[].segment must be an integer >= 1", line=line,
                             field="views")
        entries = [(_entry(p, line, "views"), False) for p in view.get("pruned") or []]
        together = view.get("collective")
        if together is not None and entries:
            entries.append((_entry(together, line, "views"), True))
        for p, is_collective in entries:
            rows.append(TrainRow(
                _text(p, "instruction", line), output[target[0] : target[1]],
                output_prefix=_text(p, "output_prefix", line, required=False, allow_empty=True),
                final=target[1] == len(output), segment=segment, verified=_verified(p, line),
                collective=is_collective,
            ))
    return replace(base, counterfactuals=tuple(rows), collective_known=collective is not None)


def _entry(value: Any, line: int, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"entries of '{name}' must be JSON objects", line=line, field=name)
    return value


def _from_export(row: dict[str, Any], line: int, full: str) -> TrainRow | None:
    """One export row as a counterfactual, or None when it prunes nothing (it is then the
    original). `full` is the original response, to tell whether the row's target ends it
    (and so trains the EOS token)."""
    prefix, original_prefix = _prefixes(row, line)
    segment = row.get("segment", 1 if original_prefix else 0)
    if isinstance(segment, bool) or not isinstance(segment, int) or segment < 0:
        raise InputError("field 'segment' must be an integer >= 0", line=line, field="segment")
    # Pruning every visible token leaves only the official newline: still a counterfactual.
    instruction = _prompt(row, "instruction", line, allow_empty=True)
    if instruction == _prompt(row, "original_instruction", line) and prefix == original_prefix:
        return None
    target = _text(row, "output", line)
    return TrainRow(
        instruction, target, output_prefix=prefix,
        final=segment == 0 or original_prefix + target == full, segment=segment,
        verified=_verified(row, line),
    )


def _prefixes(row: dict[str, Any], line: int) -> tuple[str, str]:
    """(earlier response, its unpruned text): `step_response`, as the official
    response-level loader names it, or `output_prefix` in exports from before."""
    names = (("step_response", "original_step_response") if "step_response" in row
             else ("output_prefix", "original_output_prefix"))
    prefix = _text(row, names[0], line, required=False, allow_empty=True)
    original = _text(row, names[1], line, required=False, allow_empty=True)
    if names[1] not in row:
        original = prefix  # an official row with no unpruned copy: only the prompt was cut
    return prefix, original


def _prompt(row: dict[str, Any], name: str, line: int, *, allow_empty: bool = False) -> str:
    """An instruction as the official loaders render it: with a non-empty `input` joined by
    a newline (the templates' `prompt_input`), as `example_from_row` does for plain rows."""
    text = _text(row, name, line, allow_empty=allow_empty)
    extra = _text(row, "input", line, required=False, allow_empty=True)
    return f"{text}\n{extra}" if extra.strip() else text


def _original_from_exports(key: str, rows: list[tuple[int, dict[str, Any]]]) -> TrainExample:
    """Rebuild the original from export rows alone: their unpruned instruction and the
    longest response they reveal (segment 0's output, or a prefix plus a segment)."""
    line, first = rows[0]
    instruction = _prompt(first, "original_instruction", line)
    candidates = []
    for line, row in rows:
        candidates.append(_prefixes(row, line)[1] + _text(row, "output", line))
    return TrainExample(key, TrainRow(instruction, max(candidates, key=len)))
