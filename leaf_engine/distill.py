"""Causal attention distillation (Guo et al., 2025, Sec. 2.1.1): train the student to match
a frozen teacher on each original prompt and on its counterfactuals, the prompts with the
confounding tokens `leaf detect` found pruned away.

Two ways to use the counterfactuals:

* `hybrid` (the paper's objective): every epoch trains each example's original row with
  every one of its counterfactuals. With `hybrid_units` "example" an example is one unit
  with loss lam * L_kd(X) + (1 - lam) * mean_i L_kd(X \\ A_i), so the number of optimizer
  steps is that of plain KD on the originals (comparisons with plain KD, lam = 1, are at
  equal steps); with "pair" each (original, counterfactual) pair is a unit with loss
  lam * L_kd(X) + (1 - lam) * L_kd(X \\ A_i), and an epoch has a unit per counterfactual.
  Examples without a counterfactual contribute L_kd(X) alone.
* `mix` (the official code): counterfactual rows join the originals as extra rows, each
  with loss L_kd(row); an epoch is then longer by the number of counterfactuals.

Loss normalisation: a row's loss is averaged over its own response tokens, a unit's loss is
a weighted sum of its rows' (`distill_batches.unit_weights`), and a step's loss is the mean
over the units of the step, whatever the micro-batching: each pass adds
sum(row weight x row loss) / (units in the step), so batch_size = micro_batch x
accumulation steps (x processes) gives the same gradient as one big batch. A hybrid pass
takes at most 2 x micro_batch_size rows (those of micro_batch_size pairs), so an example
with many counterfactuals is spread over several passes instead of growing one.

Runs unchanged under `accelerate launch` (DistributedDataParallel): each process takes an
interleaved share of every step's units, gradients sync on the last micro-batch, and only
the main process writes checkpoints.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from leaf_engine.distill_batches import (
    Prepared,
    StudentKL,
    Tokens,
    Unit,
    prepare,
    row_losses,
    shared_vocab,
    teacher_rows,
    unit_weights,
    weighted_loss,
    weighted_rows,
)
from leaf_engine.distill_config import DistillConfig
from leaf_engine.distill_data import TrainExample, read_training_data, select, split
from leaf_engine.errors import ConfigError, InputError, ModelLoadError
from leaf_engine.models import LoadedModel, frozen, load_model, resolve_device
from leaf_engine.teacher_cache import TeacherCache, build_cache

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # progress, history and the run's plan, per checkpoint
OPTIMIZER_FILE = "optimizer.pt"  # optimizer, scheduler and RNG state; latest checkpoint only
TRAINING_FILES = (STATE_FILE, OPTIMIZER_FILE)  # a checkpoint's files beyond the model's own
RESULT_FILE = "result.json"
Phase = Literal["cache", "train", "validate"]


@dataclass(frozen=True)
class DistillProgress:
    """Reported after every optimizer step (and while the teacher cache is built)."""

    step: int  # optimizer steps done (or rows cached, in phase "cache")
    total_steps: int
    epoch: int  # 1-based epoch the step belongs to
    loss: float | None  # the step's loss (mean over its units)
    phase: Phase = "train"
    lr: float | None = None


@dataclass(frozen=True)
class EpochSummary:
    epoch: int
    train_loss: float  # mean of the epoch's step losses
    val_loss: float | None  # the training objective on the validation examples
    val_kd: float | None  # plain KD term on the validation originals (comparable across modes)
    checkpoint: str
    seconds: float


@dataclass(frozen=True)
class DistillResult:
    out: str
    best_checkpoint: str | None  # lowest validation loss (the last epoch without validation)
    last_checkpoint: str | None
    epochs: tuple[EpochSummary, ...]
    history: tuple[dict[str, float], ...]  # per step: step, epoch, loss, lr, grad_norm
    steps: int
    total_steps: int
    seconds: float
    stopped: bool  # should_stop() ended the run early; `last_checkpoint` resumes it
    data: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "best_checkpoint": self.best_checkpoint,
            "last_checkpoint": self.last_checkpoint,
            "epochs": [vars(e) for e in self.epochs],
            "history": list(self.history),
            "steps": self.steps,
            "total_steps": self.total_steps,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
            "data": self.data,
            "config": self.config,
        }



@dataclass
class TrainerState:
    """A run's progress, saved with every checkpoint (`trainer_state.json`) and read back to
    resume. `plan` is what must not change between a run and its resumption."""

    plan: dict[str, Any]
    step: int = 0  # optimizer steps done
    history: list[dict[str, float]] = field(default_factory=list)  # per step
    epochs: list[dict[str, Any]] = field(default_factory=list)  # EpochSummary fields
    best: str | None = None  # checkpoint with the lowest validation loss so far
    best_val: float | None = None

    @staticmethod
    def load(checkpoint: Path) -> TrainerState:
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        return TrainerState(plan=saved["plan"], step=int(saved["step"]),
                            history=saved["history"], epochs=saved["epochs"],
                            best=saved["best"], best_val=saved["best_val"])

    def save(self, checkpoint: Path, total_steps: int) -> None:
        (checkpoint / STATE_FILE).write_text(
            json.dumps({**asdict(self), "total_steps": total_steps}, indent=1))


@dataclass(frozen=True)
class _Hooks:
    """How a run talks to its caller."""

    progress: Callable[[DistillProgress], None] | None
    should_stop: Callable[[], bool] | None
    started: float  # perf_counter() when the call began: data preparation counts too


def distill(
    config: DistillConfig,
    *,
    teacher: LoadedModel | None = None,
    student: LoadedModel | None = None,
    progress: Callable[[DistillProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DistillResult:
    """Distill `teacher` into `student` as `config` says and return what happened.

    Models passed in are used as they are (the service keeps them loaded); the student is
    copied first, so the caller's model is never changed. Otherwise both are loaded from
    `config` (the bundled demo pair when unnamed). Data is validated before any model loads.
    """
    started = time.perf_counter()
    examples = select(read_training_data(config.data), level=config.level,
                      only_verified=config.only_verified,
                      counterfactuals=config.counterfactuals)
    if config.val_data:
        val = select(read_training_data(config.val_data), level=config.level,
                     only_verified=False, counterfactuals=config.counterfactuals)
        train = examples
    else:
        train, val = split(examples, config.val_fraction, config.seed)
    resume_dir = _find_checkpoint(Path(config.resume)) if config.resume else None
    plan = _plan(config)
    if resume_dir is not None:
        state = TrainerState.load(resume_dir)
        _check_plan(state.plan, plan)
    else:
        state = TrainerState(plan=plan)
    run = _Run.start(config)
    teacher, student = _models(config, run.device, teacher, student, resume_dir)
    return _Trainer(config, run, (teacher, student), (train, val), state,
                    _Hooks(progress, should_stop, started)).fit()


# ---------------------------------------------------------------------------- setup


@dataclass
class _Run:
    """Process topology: one process, or one of several under `accelerate launch`."""

    accelerator: Any
    device: torch.device

    @staticmethod
    def start(config: DistillConfig) -> _Run:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, PartialState

        wanted = resolve_device(config.device)
        cpu = wanted.type == "cpu"
        try:
            # bf16 autocast is applied by hand (see _autocast), so the accelerator's global
            # state is the same for every run in a long-lived worker process.
            acc = Accelerator(cpu=cpu, mixed_precision="no", device_placement=False)
        except ValueError:
            if PartialState().num_processes > 1:
                raise
            AcceleratorState._reset_state(reset_partial_state=True)  # one process: safe
            acc = Accelerator(cpu=cpu, mixed_precision="no", device_placement=False)
        device = acc.device if acc.num_processes > 1 else wanted
        return _Run(acc, device)

    @property
    def rank(self) -> int:
        return int(self.accelerator.process_index)

    @property
    def world(self) -> int:
        return int(self.accelerator.num_processes)

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over processes."""
        return self.accelerator.reduce(value, "sum") if self.world > 1 else value


def _models(
    config: DistillConfig, device: torch.device, teacher: LoadedModel | None,
    student: LoadedModel | None, resume_dir: Path | None,
) -> tuple[LoadedModel, LoadedModel]:
    if teacher is None:
        teacher = load_model(_name(config.teacher, 0), device=str(device),
                             prompt_template=config.prompt_template)
    elif teacher.device != device:
        teacher.model.to(device)
    if resume_dir is not None:
        if student is not None:
            log.warning("resuming: the student is loaded from %s, not the one passed in",
                        resume_dir)
        student = load_model(str(resume_dir), device=str(device), dtype="float32",
                             prompt_template=config.prompt_template)
    elif student is None:
        # fp32 master weights: AdamW on bf16 weights loses small updates.
        student = load_model(_name(config.student, 1), device=str(device), dtype="float32",
                             prompt_template=config.prompt_template)
    else:
        student = replace(student, model=_training_copy(student.model).to(device))
    return teacher, student


def _training_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An fp32 copy of a caller's student, to train and save.

    A GGUF file loaded with transformers' defaults has dense weights but stays marked as
    quantized, and transformers then refuses `.float()` and `save_pretrained`; such a model
    is rebuilt as a plain one from its config and weights. (`load_model` clears the mark.)
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return copy.deepcopy(model).float()
    if quantizer.quantization_config.quant_method != "gguf":
        raise ModelLoadError("the student is a quantized model; distillation trains dense "
                             "weights: load it without quantization")
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())  # copies into the new model's own tensors
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.eval()


def _name(name: str | None, which: int) -> str:
    """The model named, or the bundled demo teacher (0) or student (1)."""
    if name is not None:
        return name
    from leaf_engine.demo import demo_pair

    return demo_pair()[which]


def _autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to the peak over `warmup` steps, then cosine decay towards zero.

    The first step already moves (factor 1 / warmup), unlike schedules that start at 0.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------- resume


def _plan(config: DistillConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    digest = hashlib.sha256()
    for path in (config.data, config.val_data):
        if path:
            digest.update(Path(path).read_bytes())
    keys = ("mode", "hybrid_units", "counterfactuals", "level", "lam", "epochs", "lr",
            "batch_size", "max_length", "temperature", "warmup_steps", "seed", "val_fraction",
            "weight_decay", "only_verified", "teacher_cache_topk")
    return {"data_sha256": digest.hexdigest(), **{k: getattr(config, k) for k in keys}}


def _check_plan(saved: dict[str, Any], plan: dict[str, Any]) -> None:
    for key, value in plan.items():
        if saved.get(key) != value:
            what = "the data" if key == "data_sha256" else key
            raise ConfigError(f"resume: {what} differs from the checkpoint's run "
                              f"({saved.get(key)!r} there, {value!r} now)")


def _find_checkpoint(path: Path) -> Path:
    """`path` itself if it is a checkpoint, else the latest checkpoint inside it."""
    if (path / STATE_FILE).is_file():
        return path
    found = [d for d in path.iterdir() if (d / STATE_FILE).is_file()] if path.is_dir() else []
    if not found:
        raise ConfigError(f"resume: no checkpoint found in {path}", field="resume")
    return max(found, key=lambda d: json.loads((d / STATE_FILE).read_text())["step"])


# ---------------------------------------------------------------------------- training


class _Trainer:
    def __init__(
        self, config: DistillConfig, run: _Run, models: tuple[LoadedModel, LoadedModel],
        data: tuple[Sequence[TrainExample], Sequence[TrainExample]], state: TrainerState,
        hooks: _Hooks,
    ):
        self.config, self.run, self.state, self.hooks = config, run, state, hooks
        teacher, student = self.teacher, self.student = models
        train, val = data
        self.out = Path(config.out)
        self.vocab = shared_vocab(teacher, student)
        limits = [m.max_length for m in (teacher, student) if m.max_length]
        self.limit = min([config.max_length, *limits])
        self.train, dropped = prepare(train, teacher, student, self.limit)
        self.val, _ = prepare(val, teacher, student, self.limit)
        if not self.train:
            raise InputError(f"no training example fits in {self.limit} tokens")
        self.units = self._units(self.train)
        n_units = len(self.units)
        # Rows per pass: those of micro_batch_size units of at most two rows each, so an
        # example with many counterfactuals spreads over passes instead of growing one.
        paired = config.mode == "hybrid" and config.lam < 1.0
        self.pass_rows = config.micro_batch_size * (2 if paired else 1)
        self.steps_per_epoch = math.ceil(n_units / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.data = {"examples": len(train) + len(val), "train_examples": len(self.train),
                     "val_examples": len(self.val),
                     "counterfactuals": sum(len(e.counterfactuals) for e in self.train),
                     "units_per_epoch": n_units, "dropped_rows": dropped,
                     "processes": run.world}

        torch.manual_seed(config.seed)
        random.seed(config.seed)
        model = student.model
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.wrapper = StudentKL(model, temperature=config.temperature, vocab=self.vocab,
                                 chunk_rows=config.chunk_rows)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, warmup=config.warmup_steps,
                                    total=self.total_steps))
        if config.resume:
            self._load_optimizer(Path(config.resume))
        self.ddp = run.accelerator.prepare(self.wrapper)  # DDP when several processes
        self.cache: TeacherCache | None = None

    # ------------------------------------------------------------------ units

    def _units(self, examples: Sequence[Prepared]) -> list[Unit]:
        """An epoch's units: every counterfactual of every example, every epoch."""
        config = self.config
        if config.mode == "mix":
            return ([(e.original,) for e in examples]
                    + [(c,) for e in examples for c in e.counterfactuals])
        units: list[Unit] = []
        for e in examples:
            if not e.counterfactuals or config.lam == 1.0:  # lam = 1: they weigh nothing
                units.append((e.original,))
            elif config.hybrid_units == "example":
                units.append((e.original, *e.counterfactuals))
            else:
                units.extend((e.original, c) for c in e.counterfactuals)
        return units

    def _step_units(self, epoch: int, step: int) -> tuple[list[Unit], int]:
        """This process's units of one step, and how many units the step has in all."""
        order = list(range(len(self.units)))
        random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
        size = self.config.batch_size
        chosen = order[step * size : (step + 1) * size]
        mine = chosen[self.run.rank :: self.run.world]
        return [self.units[i] for i in mine], len(chosen)

    # ------------------------------------------------------------------ loop

    def fit(self) -> DistillResult:
        config = self.config
        stopped = False
        with frozen(self.teacher.model):
            if config.teacher_cache_topk:
                self.cache = self._build_cache()
            step = self.state.step
            while step < self.total_steps and not stopped:
                epoch, first = divmod(step, self.steps_per_epoch)
                epoch_started = time.perf_counter()
                self.wrapper.train()
                for batch in range(first, self.steps_per_epoch):
                    if self._stop_requested():
                        stopped = True
                        break
                    loss, lr, norm = self._step(epoch, batch)
                    step += 1
                    self.state.step = step
                    self.state.history.append({"step": step, "epoch": epoch + 1,
                                               "loss": loss, "lr": lr, "grad_norm": norm})
                    if self.hooks.progress is not None:
                        self.hooks.progress(DistillProgress(step, self.total_steps, epoch + 1,
                                                            loss, "train", lr))
                if stopped:
                    self._save(self.out / f"step-{step}")
                    break
                self._end_epoch(epoch, time.perf_counter() - epoch_started)
        return self._result(stopped)

    def _stop_requested(self) -> bool:
        should_stop = self.hooks.should_stop
        wanted = bool(should_stop()) if should_stop is not None else False
        if self.run.world > 1:  # every process must agree, or the others wait forever
            flag = torch.tensor([float(wanted)], device=self.run.device)
            wanted = bool(self.run.total(flag).item() > 0)
        return wanted

    def _step(self, epoch: int, batch: int) -> tuple[float, float, float]:
        config, run = self.config, self.run
        mine, n_step = self._step_units(epoch, batch)
        weight = 1.0
        if not mine:  # fewer units than processes: join the gradient sync with weight 0
            mine, weight = [self.units[0]], 0.0
        # Longest first: passes of similar lengths pad less.
        rows = sorted(weighted_rows(mine, config.lam), key=lambda rw: -len(rw[0]))
        size = self.pass_rows
        passes = [rows[i : i + size] for i in range(0, len(rows), size)]
        total = torch.zeros((), device=run.device)
        for j, chunk in enumerate(passes):
            sync = j == len(passes) - 1
            with nullcontext() if sync else run.accelerator.no_sync(self.ddp):
                with _autocast(run.device):
                    loss = weighted_loss(self.ddp, self.teacher, chunk,
                                         pad_id=self.student.pad_id, device=run.device,
                                         cache=self.cache)  # sum of unit losses (or parts)
                # Divide by the step's unit count, not the pass's; DDP averages over
                # processes, so multiply the world size back in.
                run.accelerator.backward(loss * (weight * run.world / n_step))
            total += loss.detach() * weight
        params = [p for p in self.wrapper.parameters() if p.requires_grad]
        norm = float("nan")
        if config.clip_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip_norm))
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(run.total(total).item() / n_step), lr, norm

    # ------------------------------------------------------------------ epochs

    def _end_epoch(self, epoch: int, seconds: float) -> None:
        val_loss, val_kd = self._validate()
        losses = [h["loss"] for h in self.state.history if h["epoch"] == epoch + 1]
        directory = self.out / f"epoch-{epoch + 1}"
        summary = {"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)),
                   "val_loss": val_loss, "val_kd": val_kd, "checkpoint": str(directory),
                   "seconds": round(seconds, 3)}
        self.state.epochs.append(summary)
        best = self.state.best_val
        if val_loss is None or best is None or val_loss < best:
            self.state.best, self.state.best_val = str(directory), val_loss
        log.info("epoch %d: train loss %.4f, validation loss %s", epoch + 1,
                 summary["train_loss"], "n/a" if val_loss is None else f"{val_loss:.4f}")
        self._save(directory)

    @torch.no_grad()
    def _validate(self) -> tuple[float | None, float | None]:
        """The training objective on the validation examples (the mean over their units),
        and the plain KD term on their originals."""
        if not self.val:
            return None, None
        config, run = self.config, self.run
        units = self._units(self.val)
        # Pairs share their original: each row is scored once (Tokens hash by identity).
        index: dict[Tokens, int] = {}
        for row in (r for u in units for r in u):
            index.setdefault(row, len(index))
        rows = list(index)
        mine = list(range(run.rank, len(rows), run.world))
        means = torch.zeros(len(rows), device=run.device)
        self.wrapper.eval()
        size = 2 * config.micro_batch_size
        for start in range(0, len(mine), size):
            chunk = mine[start : start + size]
            with _autocast(run.device):
                values = row_losses(self.wrapper, self.teacher, [rows[k] for k in chunk],
                                    pad_id=self.student.pad_id, device=run.device,
                                    cache=self.cache)
            means[torch.tensor(chunk, device=run.device)] = values
        self.wrapper.train()
        means = run.total(means).tolist()
        kd = sum(means[index[e.original]] for e in self.val) / len(self.val)
        losses = [sum(w * means[index[r]]
                      for r, w in zip(u, unit_weights(len(u), config.lam), strict=True))
                  for u in units]
        return sum(losses) / len(losses), kd

    # ------------------------------------------------------------------ cache

    def _build_cache(self) -> TeacherCache:
        config, run = self.config, self.run
        rows = [r.teacher for e in (*self.train, *self.val)
                for r in (e.original, *e.counterfactuals)]
        meta = {"teacher": self.teacher.identity, "temperature": config.temperature,
                "k": config.teacher_cache_topk, "vocab": self.vocab, "limit": self.limit}
        root = Path(config.cache_dir) if config.cache_dir else self.out / "teacher-cache"

        def report(done: int, total: int) -> None:
            if self.hooks.progress is not None:
                self.hooks.progress(DistillProgress(done, total, 0, None, "cache"))

        with _autocast(run.device):
            return build_cache(
                root, meta, rows, partial(teacher_rows, self.teacher),
                k=min(config.teacher_cache_topk, self.vocab), temperature=config.temperature,
                vocab=self.vocab, batch_rows=2 * config.micro_batch_size, rank=run.rank,
                world=run.world, barrier=run.barrier, progress=report,
            )

    # ------------------------------------------------------------------ checkpoints

    def _save(self, directory: Path) -> None:
        """A Hugging Face checkpoint (weights, config, tokenizer) plus the training state.

        Written to a temporary directory and renamed, so a crash never leaves half of one.
        Only the newest checkpoint keeps the optimizer state, the part needed to resume.
        """
        run = self.run
        run.barrier()
        if run.main:
            tmp = directory.with_name(f".{directory.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model = run.accelerator.unwrap_model(self.ddp).model
            model.save_pretrained(tmp)
            self.student.tokenizer.save_pretrained(tmp)
            torch.save({"optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all()
                        if torch.cuda.is_available() else []}, tmp / OPTIMIZER_FILE)
            self.state.save(tmp, self.total_steps)
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
            for other in self.out.iterdir():
                if other != directory and (other / OPTIMIZER_FILE).is_file():
                    (other / OPTIMIZER_FILE).unlink()
        run.barrier()

    def _load_optimizer(self, resume: Path) -> None:
        directory = _find_checkpoint(resume)
        path = directory / OPTIMIZER_FILE
        if not path.is_file():
            raise ConfigError(f"resume: {directory} has no optimizer state; resume from the "
                              "latest checkpoint of the run")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if saved["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        log.info("resuming from %s at step %d", directory, self.state.step)

    def _result(self, stopped: bool) -> DistillResult:
        epochs = tuple(EpochSummary(**e) for e in self.state.epochs)
        last = (str(self.out / f"step-{self.state.step}") if stopped
                else epochs[-1].checkpoint if epochs else None)
        result = DistillResult(
            out=str(self.out), best_checkpoint=self.state.best, last_checkpoint=last,
            epochs=epochs, history=tuple(self.state.history), steps=self.state.step,
            total_steps=self.total_steps, seconds=time.perf_counter() - self.hooks.started,
            stopped=stopped, data=self.data, config=self.config.to_dict(),
        )
        if self.run.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=1))
        return result

