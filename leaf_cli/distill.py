"""`leaf distill`: causal attention distillation of a teacher into a student."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from leaf_cli.options import config_options
from leaf_engine.distill_config import DistillConfig

OPTIONS = ("data", "out", "teacher", "student", "lam", "mode", "hybrid_units",
           "counterfactuals", "epochs", "lr", "batch_size",
           "micro_batch_size", "max_length", "temperature", "warmup_steps", "resume", "seed",
           "level", "val_data", "val_fraction", "teacher_cache_topk", "only_verified",
           "gradient_checkpointing", "weight_decay", "clip_norm", "prompt_template", "device")


@click.command()
@config_options(DistillConfig, OPTIONS, flags={"lam": "--lambda"},
                paths=("data", "out", "val_data"))
def distill(**options: Any) -> None:
    """Distill the teacher into the student on original and confounder-pruned prompts.

    Runs on several GPUs unchanged: `accelerate launch -m leaf_cli.main distill ...`.
    """
    from leaf_engine.distill import distill as run

    config = DistillConfig(**options)
    out = Path(config.out)
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
