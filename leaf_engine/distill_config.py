"""Configuration of causal attention distillation (`leaf distill`, the distill job)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from leaf_engine.config_fields import check_fields, setting
from leaf_engine.errors import ConfigError

Mode = Literal["hybrid", "mix"]
LevelChoice = Literal["auto", "instruction", "response"]
HybridUnits = Literal["example", "pair"]
CounterfactualChoice = Literal["span", "collective", "both"]


@dataclass(frozen=True)
class DistillConfig:
    """Everything one distillation run needs; validated on construction.

    A training *unit* is what the batch sizes count: in `hybrid` mode an original row
    together with all its counterfactuals (`hybrid_units` "example") or with one of them
    ("pair"), in `mix` mode a single row.
    """

    data: str = setting(help="`leaf detect` records, --export-pruned rows and/or plain rows "
                        "(JSONL).", min_length=1)
    out: str = setting(help="Output directory: a checkpoint per epoch and result.json.",
                       min_length=1)
    teacher: str | None = setting(None, "Teacher: a Hugging Face directory, hub id or .gguf file.",
                                  default_help="the bundled demo teacher")
    student: str | None = setting(None, "Student: a Hugging Face directory, hub id or .gguf file.",
                                  default_help="the bundled demo student")
    lam: float = setting(0.5, "Hybrid weight lambda of the original-prompt term (1 = plain KD).",
                         ge=0, le=1)
    mode: Mode = setting("hybrid", "hybrid: lambda-weighted pairs; mix: pruned rows added.")
    hybrid_units: HybridUnits = setting(
        "example", "Hybrid mode, every counterfactual every epoch. example: a unit per "
                   "example, its counterfactual term the mean over all of them; pair: a unit "
                   "per (original, counterfactual) pair (more steps per epoch).")
    counterfactuals: CounterfactualChoice = setting(
        "span", "Train on span counterfactuals (one span pruned each), the collective one "
                "(all spans pruned at once; in `leaf detect` records only) or both.")
    epochs: int = setting(3, "Passes over the training data.", ge=1)
    lr: float = setting(1e-5, "Peak learning rate (cosine schedule; the paper: 1e-5).",
                        gt=0, le=1)
    batch_size: int = setting(32, "Units per optimizer step (all processes together).", ge=1)
    micro_batch_size: int = setting(2, "Units per forward/backward pass on one process (a "
                                       "hybrid pass takes at most twice as many rows); the "
                                       "rest is gradient accumulation.", ge=1)
    max_length: int = setting(4096, "Tokens per row: longer responses are cut, longer prompts "
                                    "dropped.", ge=2)
    temperature: float = setting(1.0, "KD temperature tau (the loss is scaled by tau^2).", gt=0)
    warmup_steps: int = setting(5, "Linear warm-up steps before the cosine decay.", ge=0)
    resume: str | None = setting(None, "Continue a run: a checkpoint directory, or the run's "
                                       "output directory (its latest checkpoint).")
    seed: int = setting(0, "Seed for the split, the order and the initial state.", ge=0)
    device: str = setting("auto", "auto, cpu or cuda (under `accelerate launch`: each "
                                  "process's GPU).")
    level: LevelChoice = setting("auto", "instruction: ignore response-level rows; auto: use "
                                         "what the data has.")
    val_data: str | None = setting(None, "Validation rows.",
                                   default_help="hold out val_fraction of the data")
    val_fraction: float = setting(0.05, "Share of examples held out for validation when no "
                                        "validation rows are given.", ge=0, lt=1)
    weight_decay: float = setting(0.0, "AdamW weight decay.", ge=0, le=1)
    clip_norm: float | None = setting(1.0, "Gradient clipping by global L2 norm (none: off).",
                                      gt=0)
    teacher_cache_topk: int = setting(0, "Cache the teacher's top-K log-probs on disk and "
                                         "reuse them (0: off).", ge=0)
    cache_dir: str | None = setting(None, "Where the teacher cache lives.",
                                    default_help="<out>/teacher-cache")
    only_verified: bool = setting(False, "Use only pruned rows that `leaf detect --verify` "
                                         "confirmed.")
    chunk_rows: int | None = setting(None, "Rows per LM-head chunk in the loss.", ge=1,
                                     default_help="by vocabulary size")
    gradient_checkpointing: bool = setting(False, "Recompute the student's layers in backward "
                                                  "(long rows, big models).")
    prompt_template: str | None = setting(None, "Plain template with '{instruction}' for "
                                                "models without a chat template.")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.micro_batch_size > self.batch_size or self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}): batch_size = micro_batch_size x accumulation steps",
                field="batch_size",
            )
        if self.only_verified and self.counterfactuals != "span":
            raise ConfigError(
                "only_verified keeps span counterfactuals only: `leaf detect --verify` does not "
                f"check collective ones (counterfactuals is {self.counterfactuals!r})",
                field="only_verified")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}",
                              field="device")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

