"""Configuration of causal attention distillation (`leaf distill`, the distill job)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from leaf_engine.config_checks import check_choice, check_integer, check_number
from leaf_engine.errors import ConfigError

Mode = Literal["hybrid", "mix"]
LevelChoice = Literal["auto", "instruction", "response"]


@dataclass(frozen=True)
class DistillConfig:
    """Everything one distillation run needs; validated on construction.

    A training *unit* is what the batch sizes count: in `hybrid` mode an original row
    together with one of its counterfactuals, in `mix` mode a single row.
    """

    data: str  # `leaf detect` records, `--export-pruned` rows and/or plain rows (JSONL)
    out: str  # output directory: one checkpoint per epoch, result.json
    teacher: str | None = None  # local path or hub id; None: the bundled demo teacher
    student: str | None = None  # None: the bundled demo student
    lam: float = 0.5  # hybrid weight lambda in [0, 1] of the original-prompt KD term
    mode: Mode = "hybrid"  # hybrid: lambda-weighted pairs; mix: pruned rows as extra rows
    epochs: int = 3
    lr: float = 1e-5  # peak learning rate (the paper: 1e-5)
    batch_size: int = 32  # units per optimizer step (all processes together)
    micro_batch_size: int = 2  # units per forward/backward pass on one process
    max_length: int = 4096  # tokens per row; longer responses are cut, longer prompts dropped
    temperature: float = 1.0  # KD temperature tau (the loss is scaled by tau^2)
    warmup_steps: int = 5  # linear warm-up before the cosine decay
    resume: str | None = None  # a checkpoint directory, or a previous `out` (its latest one)
    seed: int = 0
    device: str = "auto"  # auto, cpu or cuda (under `accelerate launch`: each process's GPU)
    level: LevelChoice = "auto"  # instruction: ignore response-level rows; auto: use all
    val_data: str | None = None  # validation rows; None: hold out `val_fraction` of `data`
    val_fraction: float = 0.05  # share of examples held out when `val_data` is None
    weight_decay: float = 0.0  # AdamW weight decay
    clip_norm: float | None = 1.0  # gradient clipping (global L2 norm); None: off
    teacher_cache_topk: int = 0  # > 0: cache the teacher's top-k log-probs on disk
    cache_dir: str | None = None  # where the cache lives; None: <out>/teacher-cache
    only_verified: bool = False  # use only counterfactuals marked `verified: true`
    chunk_rows: int | None = None  # rows per LM-head chunk in the loss; None: by vocab size
    gradient_checkpointing: bool = False  # recompute the student's layers in backward
    prompt_template: str | None = None  # plain template for models without a chat template

    def __post_init__(self) -> None:
        for name in ("data", "out"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{name} must be a non-empty path")
        check_choice("mode", self.mode, Mode)
        check_choice("level", self.level, LevelChoice)
        check_number("lam", self.lam, 0.0, 1.0)
        check_number("temperature", self.temperature, 0.0, math.inf, low_open=True, high_open=True)
        check_number("lr", self.lr, 0.0, 1.0, low_open=True)
        check_number("val_fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        check_number("weight_decay", self.weight_decay, 0.0, 1.0)
        if self.clip_norm is not None:
            check_number("clip_norm", self.clip_norm, 0.0, math.inf, low_open=True, high_open=True)
        check_integer("epochs", self.epochs, 1)
        check_integer("batch_size", self.batch_size, 1)
        check_integer("micro_batch_size", self.micro_batch_size, 1)
        check_integer("max_length", self.max_length, 2)
        check_integer("warmup_steps", self.warmup_steps, 0)
        check_integer("seed", self.seed, 0)
        check_integer("teacher_cache_topk", self.teacher_cache_topk, 0)
        if self.chunk_rows is not None:
            check_integer("chunk_rows", self.chunk_rows, 1)
        if self.micro_batch_size > self.batch_size or self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}): batch_size = micro_batch_size x accumulation steps"
            )
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

