"""Evaluation: greedy decoding, answer checking, and agreement with a teacher.

Each row has an `instruction` (plus an optional `input`) and either an `answer` (checked by
final number or math-verify, see `leaf_engine.answers`) or `tests` (Python assert statements
run after the generated code in a sandboxed process: pass@1). With a teacher, the report
also gives the teacher's accuracy and the mean Jaccard similarity between the two models'
outputs (Guo et al., 2025, Fig. 10).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from leaf_engine.answers import Reference, Verdict, check_answers, jaccard
from leaf_engine.data import atomic_writer, iter_jsonl
from leaf_engine.errors import InputError
from leaf_engine.eval_config import EvalConfig  # defined torch-free, used here
from leaf_engine.generate import Prompt, greedy
from leaf_engine.models import LoadedModel, load_model

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class EvalRow:
    id: str
    instruction: str
    reference: Reference
    fields: dict[str, Any] = field(default_factory=dict)  # the row as read, for group_by


@dataclass(frozen=True)
class ExampleResult:
    id: str
    instruction: str
    output: str
    correct: bool
    method: str  # number, math or code
    answer: str | None = None
    detail: str | None = None  # why a code run failed, or why nothing was generated
    teacher_output: str | None = None
    teacher_correct: bool | None = None
    jaccard: float | None = None


@dataclass(frozen=True)
class EvalReport:
    model: str
    data: str
    accuracy: float  # share of rows answered correctly (code rows: tests pass)
    correct: int
    total: int
    by_method: dict[str, dict[str, float]]
    examples: tuple[ExampleResult, ...]
    seconds: float
    params: dict[str, Any]
    pass_at_1: float | None = None  # over the code rows, when there are any
    groups: dict[str, dict[str, float]] | None = None
    teacher: dict[str, Any] | None = None  # model, accuracy
    jaccard: float | None = None  # mean student/teacher output similarity

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "examples"}
        out["examples"] = [asdict(e) for e in self.examples]
        return out


def read_eval_rows(path: str | Path) -> list[EvalRow]:
    """Read and validate the evaluation file; raise `InputError` naming line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    rows = []
    try:
        with path.open(encoding="utf-8") as handle:
            for line, row in iter_jsonl(handle):
                rows.append(_eval_row(row, line))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    if not rows:
        raise InputError(f"{path} has no rows")
    return rows


def _eval_row(row: Any, line: int) -> EvalRow:
    if not isinstance(row, dict):
        raise InputError("expected a JSON object", line=line)
    instruction = row.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        problem = "missing field" if instruction is None else "empty or non-string field"
        raise InputError(f"{problem} 'instruction'", line=line, field="instruction")
    extra = row.get("input")
    if isinstance(extra, str) and extra.strip():
        instruction = f"{instruction}\n{extra}"
    return EvalRow(str(row.get("id", line)), instruction, reference_of(row, line), row)


def reference_of(row: dict[str, Any], line: int | None = None) -> Reference:
    """A row's `answer` or `tests` (a string or a list of assert statements)."""
    answer, tests = row.get("answer"), row.get("tests")
    if isinstance(tests, list) and all(isinstance(t, str) for t in tests):
        tests = "\n".join(tests)
    if tests is not None:
        if not isinstance(tests, str) or not tests.strip():
            raise InputError("field 'tests' must be a string or a list of strings", line=line,
                             field="tests")
        return Reference(tests=tests)
    if answer is None:
        raise InputError("needs an 'answer' (or 'tests' for code) to check", line=line,
                         field="answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise InputError("field 'answer' must be a string or a number", line=line,
                         field="answer")
    return Reference(answer=str(answer))


def evaluate(
    config: EvalConfig, *, model: LoadedModel | None = None, teacher: LoadedModel | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Generate greedily for every row, check the answers, and report (and write) the result.
    Models passed in are used as they are; otherwise they are loaded from `config`."""
    started = time.perf_counter()
    rows = read_eval_rows(config.data)
    if model is None:
        model = load_model(config.model, device=config.device,
                           prompt_template=config.prompt_template)
    if teacher is None and config.teacher is not None:
        teacher = load_model(config.teacher, device=config.device,
                             prompt_template=config.prompt_template)
    models = [model] if teacher is None else [model, teacher]
    total = len(rows) * len(models) * 2  # generation, then checking, per model
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    prompts = [Prompt(r.instruction) for r in rows]
    references = [r.reference for r in rows]
    outputs, verdicts, errors = [], [], []
    for loaded in models:
        generations = greedy(loaded, prompts, max_new_tokens=config.max_new_tokens,
                             batch_size=config.batch_size, progress=tick)
        texts = [g.text for g in generations]
        outputs.append(texts)
        errors.append([g.error for g in generations])
        verdicts.append(check_answers(texts, references, how=config.answer_check,
                                      code_timeout_s=config.code_timeout_s,
                                      code_memory_mb=config.code_memory_mb))
        tick(len(rows))
    examples = tuple(_example(i, rows[i], outputs, verdicts, errors[0][i])
                     for i in range(len(rows)))
    report = _report(config, model, teacher, rows, examples, verdicts,
                     time.perf_counter() - started)
    if config.out:
        with atomic_writer(config.out) as handle:
            json.dump(report.to_dict(), handle, indent=1, ensure_ascii=False)
            handle.write("\n")
    return report


def _example(i: int, row: EvalRow, outputs: list[list[str]], verdicts: list[list[Verdict]],
             error: str | None) -> ExampleResult:
    mine = verdicts[0][i]
    result = ExampleResult(id=row.id, instruction=row.instruction, output=outputs[0][i],
                           correct=mine.correct, method=mine.method,
                           answer=row.reference.answer, detail=error or mine.detail)
    if len(outputs) > 1:
        result = ExampleResult(**{**asdict(result), "teacher_output": outputs[1][i],
                                  "teacher_correct": verdicts[1][i].correct,
                                  "jaccard": round(jaccard(outputs[0][i], outputs[1][i]), 6)})
    return result


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def _report(
    config: EvalConfig, model: LoadedModel, teacher: LoadedModel | None, rows: list[EvalRow],
    examples: tuple[ExampleResult, ...], verdicts: list[list[Verdict]], seconds: float,
) -> EvalReport:
    correct = [e.correct for e in examples]
    by_method: dict[str, list[bool]] = {}
    for e in examples:
        by_method.setdefault(e.method, []).append(e.correct)
    groups = None
    if config.group_by:
        grouped: dict[str, list[bool]] = {}
        for row, e in zip(rows, examples, strict=True):
            grouped.setdefault(str(row.fields.get(config.group_by)), []).append(e.correct)
        groups = {k: {"n": len(v), "accuracy": round(_rate(v), 6)}
                  for k, v in sorted(grouped.items())}
    params = {k: v for k, v in asdict(config).items() if k not in ("model", "data", "out")}
    return EvalReport(
        model=model.name, data=config.data, accuracy=round(_rate(correct), 6),
        correct=sum(correct), total=len(correct),
        by_method={k: {"n": len(v), "accuracy": round(_rate(v), 6)}
                   for k, v in sorted(by_method.items())},
        examples=examples, seconds=round(seconds, 3), params=params,
        pass_at_1=round(_rate(by_method["code"]), 6) if "code" in by_method else None,
        groups=groups,
        teacher=None if teacher is None else {
            "model": teacher.name,
            "accuracy": round(_rate([v.correct for v in verdicts[1]]), 6)},
        jaccard=None if teacher is None else round(
            sum(e.jaccard or 0.0 for e in examples) / len(examples), 6),
    )
