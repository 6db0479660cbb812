"""`leaf detect`: flag confounding tokens in a JSONL file and write one record per row."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import click

from leaf_cli.evaluate import allow_unsandboxed_with_warning
from leaf_cli.progress import bar


@click.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Input JSONL: instruction, output[, input, answer, id].")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output JSONL, one detection record per input row.")
@click.option("--teacher", default=None,
              help="Teacher: local path or hub id.  [default: the bundled demo teacher]")
@click.option("--student", default=None,
              help="Student: local path or hub id.  [default: the bundled demo student]")
@click.option("--tau", type=float, default=None,
              help="Flag tokens whose normalised score is <= TAU.  [default: 0.1]")
@click.option("--percentile", type=float, default=None,
              help="Instead of --tau: flag the bottom PERCENTILE % of scores (capped at 0.5).")
@click.option("--method", type=click.Choice(["gradient", "ppl", "random"]), default="gradient",
              show_default=True, help="gradient is LeaF; ppl and random flag as many tokens.")
@click.option("--level", type=click.Choice(["instruction", "response"]), default="instruction",
              show_default=True, help="response also scores earlier response segments.")
@click.option("--segments", type=click.IntRange(2, 3), default=2, show_default=True,
              help="Response segments at --level response.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Examples per forward/backward pass.")
@click.option("--prompt-template", default=None,
              help="Plain template with '{instruction}' for models without a chat template.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--export-pruned", type=click.Path(path_type=Path), default=None,
              help="Also write span-pruned rows in the official LeaF training format.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --method random.")
@click.option("--unit", type=click.Choice(["token", "word", "sentence"]), default="token",
              show_default=True, help="Aggregate saliency to words or sentences before scoring.")
@click.option("--min-gap", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Flag nothing in a prompt unless some token's normalised student saliency "
              "exceeds the teacher's by this much (guards prompts with no confounder).")
@click.option("--truncate", is_flag=True,
              help="Cut responses that exceed a model's context instead of failing.")
@click.option("--select", "select_rows", is_flag=True,
              help="Keep only rows the teacher answers correctly and the student does not "
                   "(needs 'answer').")
@click.option("--verify", is_flag=True,
              help="Mark each pruned variant 'verified' when both models answer it correctly.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Generation length for --select and --verify.")
def detect(
    data: Path, out: Path, teacher: str | None, student: str | None, tau: float | None,
    percentile: float | None, method: str, level: str, segments: int, batch_size: int,
    prompt_template: str | None, device: str, export_pruned: Path | None, seed: int,
    unit: str, min_gap: float, truncate: bool, select_rows: bool, verify: bool, max_new_tokens: int,
) -> None:
    """Compute teacher and student gradient saliency and flag confounding tokens."""
    from leaf_engine.data import atomic_writer, read_examples
    from leaf_engine.detect import DetectConfig, Detector
    from leaf_engine.errors import ConfigError
    from leaf_engine.models import load_model
    from leaf_engine.selection import (
        Judge,
        require_references,
        select_examples,
        verify_records,
        with_verified,
    )

    if tau is not None and percentile is not None:
        raise ConfigError("give either --tau or --percentile, not both")
    config = DetectConfig(
        tau=0.1 if tau is None else tau, percentile=percentile, method=method,  # type: ignore[arg-type]
        level=level, segments=segments, seed=seed, unit=unit, min_gap=min_gap,  # type: ignore[arg-type]
    )
    examples = read_examples(data)
    for flag, wanted in (("--select", select_rows), ("--verify", verify)):
        if wanted:
            require_references(examples, flag)
    if select_rows or verify:
        allow_unsandboxed_with_warning()
    if teacher is None or student is None:
        from leaf_engine.demo import demo_pair

        demo_teacher, demo_student = demo_pair()
        teacher, student = teacher or demo_teacher, student or demo_student
    models = [load_model(name, device=device, prompt_template=prompt_template)
              for name in (teacher, student)]
    detector = Detector(*models, batch_size=batch_size, truncate=truncate)
    judge = Judge(max_new_tokens=max_new_tokens, batch_size=batch_size)
    if select_rows:
        kept = select_examples(*models, examples, judge)
        click.echo(f"--select kept {len(kept)} of {len(examples)} rows (teacher right, "
                   "student wrong)", err=True)
        examples = kept
    total = detector.work([(e.instruction, e.output) for e in examples], config.level,
                          config.segments)
    flagged = spans = exported = 0
    block = max(batch_size * 8, 64)  # bounded memory: decide and write block by block
    with ExitStack() as stack:
        progress = stack.enter_context(bar(total, "saliency"))
        records = stack.enter_context(atomic_writer(out))
        export = stack.enter_context(atomic_writer(export_pruned)) if export_pruned else None
        for start in range(0, len(examples), block):
            found = detector.detect(examples[start : start + block], config,
                                    progress=progress.update)
            marks = verify_records(*models, found, judge) if verify else [None] * len(found)
            for record, flags in zip(found, marks, strict=True):
                fields, rows = with_verified(record, flags)
                records.write(json.dumps(fields, ensure_ascii=False) + "\n")
                flagged += sum(t.confounder for t in record.tokens)
                spans += len(record.spans)
                if export is not None:
                    for row in rows:
                        export.write(json.dumps(row, ensure_ascii=False) + "\n")
                        exported += 1
    click.echo(f"wrote {len(examples)} records to {out}: {flagged} tokens flagged in "
               f"{spans} spans" + (f"; {exported} pruned rows to {export_pruned}"
                                   if export_pruned else ""), err=True)
