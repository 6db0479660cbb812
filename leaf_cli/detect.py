"""`leaf detect`: flag confounding tokens in a JSONL file and write one record per row."""

from __future__ import annotations

from pathlib import Path

import click

from leaf_cli.evaluate import allow_unsandboxed_with_warning
from leaf_cli.options import config_options
from leaf_cli.progress import bar
from leaf_engine.analysis import DetectConfig
from leaf_engine.eval_config import DEFAULT_MAX_NEW_TOKENS


@click.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Input JSONL: instruction, output[, input, answer, id].")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output JSONL, one detection record per input row.")
@click.option("--teacher", default=None,
              help="Teacher: directory, hub id or .gguf file.  [default: the bundled demo "
                   "teacher]")
@click.option("--student", default=None,
              help="Student: directory, hub id or .gguf file.  [default: the bundled demo "
                   "student]")
@config_options(DetectConfig, ("tau", "percentile", "method", "level", "segments", "seed",
                                "unit", "normalise", "min_gap"))
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most examples per forward/backward pass; --activation-budget usually "
                   "binds first.")
@click.option("--activation-budget", type=click.IntRange(min=1), default=None, metavar="MIB",
              help="MiB of activations per forward/backward pass, estimated from each model's "
                   "shape; examples are batched up to it.  [default: 1024 on a CPU, half the "
                   "free memory on a GPU]")
@click.option("--prompt-template", default=None,
              help="Plain template with '{instruction}' for models without a chat template.")
@click.option("--force-template", is_flag=True,
              help="Use --prompt-template (or the default plain one) even for models that "
                   "have a chat template.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--export-pruned", type=click.Path(path_type=Path), default=None,
              help="Also write span-pruned rows in the official LeaF training format.")
@click.option("--truncate", is_flag=True,
              help="Cut responses that exceed a model's context instead of failing.")
@click.option("--select", "select_rows", is_flag=True,
              help="Keep only rows the teacher answers correctly and the student does not "
                   "(needs 'answer').")
@click.option("--verify", is_flag=True,
              help="Mark each pruned variant 'verified' when both models answer it correctly.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS,
              show_default=True,
              help="Generation length for --select and --verify.")
def detect(
    data: Path, out: Path, teacher: str | None, student: str | None, tau: float,
    percentile: float | None, method: str, level: str, segments: int, batch_size: int,
    activation_budget: int | None,
    prompt_template: str | None, force_template: bool, device: str,
    export_pruned: Path | None, seed: int, normalise: str,
    unit: str, min_gap: float, truncate: bool, select_rows: bool, verify: bool, max_new_tokens: int,
) -> None:
    """Compute teacher and student gradient saliency and flag confounding tokens."""
    from leaf_engine.data import read_examples
    from leaf_engine.detect import Detector
    from leaf_engine.detect_output import write_detections
    from leaf_engine.errors import ConfigError, ContextTooLongError, LeafError
    from leaf_engine.models import load_model
    from leaf_engine.selection import Judge, require_references, select_examples, verify_records

    given = click.get_current_context().get_parameter_source("tau")
    if percentile is not None and given is not click.core.ParameterSource.DEFAULT:
        raise ConfigError("give either --tau or --percentile, not both", field="tau")
    config = DetectConfig(
        tau=tau, percentile=percentile, method=method,  # type: ignore[arg-type]
        level=level, segments=segments, seed=seed, unit=unit, min_gap=min_gap,  # type: ignore[arg-type]
        normalise=normalise,  # type: ignore[arg-type]
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
    models = [load_model(name, device=device, prompt_template=prompt_template,
                         force_template=force_template) for name in (teacher, student)]
    for loaded in models:
        if loaded.template_note:
            click.echo(f"leaf: warning: {loaded.template_note}", err=True)
    detector = Detector(*models, batch_size=batch_size, truncate=truncate,
                        activation_budget=None if activation_budget is None
                        else activation_budget * 2**20)
    judge = Judge(max_new_tokens=max_new_tokens, batch_size=batch_size)
    if select_rows:
        kept = select_examples(*models, examples, judge)
        click.echo(f"--select kept {len(kept)} of {len(examples)} rows (teacher right, "
                   "student wrong)", err=True)
        examples = kept
    total = detector.work([(e.instruction, e.output) for e in examples], config.level,
                          config.segments)
    try:
        with bar(total, "saliency") as progress:
            counts = write_detections(
                examples, config, out, detector=detector, batch_size=batch_size,
                export=export_pruned, progress=progress.update,
                verify=(lambda found: verify_records(*models, found, judge)) if verify else None,
            )
    except ContextTooLongError as err:
        # The engine's message names no command-line flag; here the flag is what helps,
        # when cutting the response can make the example fit.
        if truncate or not err.truncatable:
            raise
        raise LeafError(f"{err}; pass --truncate to cut the response to fit",
                        field=err.field) from err
    click.echo(f"wrote {counts.records} records to {out}: {counts.flagged_tokens} tokens "
               f"flagged in {counts.spans} spans" + (
                   f"; {counts.pruned_rows} pruned rows to {export_pruned}"
                   if export_pruned else "")
               + (f"; {counts.memory_text()}" if counts.memory_text() else ""), err=True)
