"""`leaf distill`: causal attention distillation of a teacher into a student."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


@click.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="`leaf detect` records, --export-pruned rows and/or plain rows (JSONL).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output directory: a checkpoint per epoch and result.json.")
@click.option("--teacher", default=None,
              help="Teacher: local path or hub id.  [default: the bundled demo teacher]")
@click.option("--student", default=None,
              help="Student: local path or hub id.  [default: the bundled demo student]")
@click.option("--lambda", "lam", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Hybrid weight of the original-prompt term (1 = plain KD).")
@click.option("--mode", type=click.Choice(["hybrid", "mix"]), default="hybrid",
              show_default=True, help="hybrid: lambda-weighted pairs; mix: pruned rows added.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--lr", type=click.FloatRange(0, 1, min_open=True), default=1e-5,
              show_default=True, help="Peak learning rate (cosine schedule).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Units per optimizer step (all processes together).")
@click.option("--micro-batch-size", type=click.IntRange(min=1), default=2, show_default=True,
              help="Units per forward/backward pass; the rest is gradient accumulation.")
@click.option("--max-length", type=click.IntRange(min=2), default=4096, show_default=True,
              help="Tokens per row.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True, help="KD temperature (loss scaled by T^2).")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--resume", default=None,
              help="Continue a run: a checkpoint directory, or the run's --out.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--level", type=click.Choice(["auto", "instruction", "response"]),
              default="auto", show_default=True,
              help="instruction: ignore response-level rows; auto: use what the data has.")
@click.option("--val-data", type=click.Path(path_type=Path), default=None,
              help="Validation rows.  [default: hold out --val-fraction of --data]")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.05,
              show_default=True)
@click.option("--teacher-cache-topk", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="Cache the teacher's top-K log-probs on disk and reuse them (0: off).")
@click.option("--only-verified", is_flag=True,
              help="Use only pruned rows that `leaf detect --verify` confirmed.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute the student's layers in backward (long rows, big models).")
@click.option("--weight-decay", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--clip-norm", type=click.FloatRange(0, min_open=True), default=1.0,
              show_default=True)
@click.option("--prompt-template", default=None,
              help="Plain template with '{instruction}' for models without a chat template.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def distill(
    data: Path, out: Path, teacher: str | None, student: str | None, lam: float, mode: str,
    epochs: int, lr: float, batch_size: int, micro_batch_size: int, max_length: int,
    temperature: float, warmup_steps: int, resume: str | None, seed: int, level: str,
    val_data: Path | None, val_fraction: float, teacher_cache_topk: int, only_verified: bool,
    gradient_checkpointing: bool, weight_decay: float, clip_norm: float,
    prompt_template: str | None, device: str,
) -> None:
    """Distill the teacher into the student on original and confounder-pruned prompts.

    Runs on several GPUs unchanged: `accelerate launch -m leaf_cli.main distill ...`.
    """
    from leaf_engine.distill import distill as run
    from leaf_engine.distill_config import DistillConfig

    config = DistillConfig(
        data=str(data), out=str(out), teacher=teacher, student=student, lam=lam,
        mode=mode, epochs=epochs, lr=lr, batch_size=batch_size,  # type: ignore[arg-type]
        micro_batch_size=micro_batch_size, max_length=max_length, temperature=temperature,
        warmup_steps=warmup_steps, resume=resume, seed=seed, device=device,
        level=level, val_data=None if val_data is None else str(val_data),  # type: ignore[arg-type]
        val_fraction=val_fraction, weight_decay=weight_decay, clip_norm=clip_norm,
        teacher_cache_topk=teacher_cache_topk, only_verified=only_verified,
        gradient_checkpointing=gradient_checkpointing, prompt_template=prompt_template,
    )
    bars = _Bars()
    try:
        result = run(config, progress=bars)
    finally:
        bars.close()
    if not _is_main_process():
        return
    best = next((e for e in result.epochs if e.checkpoint == result.best_checkpoint), None)
    val = "" if best is None or best.val_loss is None else f" (validation loss {best.val_loss:.4f})"
    if result.stopped:
        click.echo(f"stopped after {result.steps} of {result.total_steps} steps; resume from "
                   f"{result.last_checkpoint}", err=True)
    else:
        click.echo(f"distilled {result.steps} steps in {result.seconds:.0f} s; best checkpoint "
                   f"{result.best_checkpoint}{val}; summary in {out / 'result.json'}", err=True)


class _Bars:
    """One progress bar per phase (teacher cache, training), the loss in the postfix."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase: str | None = None

    def __call__(self, progress: Any) -> None:
        from tqdm import tqdm

        if progress.phase != self.phase:
            self.close()
            self.phase = progress.phase
            desc = "teacher cache" if progress.phase == "cache" else "distill"
            unit = "row" if progress.phase == "cache" else "step"
            self.bar = tqdm(total=progress.total_steps, desc=desc, unit=unit, file=sys.stderr,
                            dynamic_ncols=True, disable=None, mininterval=0.5,
                            initial=max(0, progress.step - 1))
        self.bar.n = progress.step
        if progress.loss is not None:
            self.bar.set_postfix(loss=f"{progress.loss:.4f}", epoch=progress.epoch,
                                 refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _is_main_process() -> bool:
    from accelerate.state import PartialState

    return bool(PartialState().is_main_process)
