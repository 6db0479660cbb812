"""Training the demo teacher/student pair from scratch, deterministically, on a laptop CPU.

The teacher sees problems with 0-2 distracting sentences and learns to ignore them; the
student is smaller and sees clean problems only, so it learns "combine the numbers in the
prompt" and is misled by a distractor's number. That gap is what LeaF detects.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from leaf_engine.demo.tasks import Problem, final_number, generate
from leaf_engine.demo.tokenizer import build_tokenizer
from leaf_engine.models import LoadedModel, PromptTemplate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSpec:
    """One demo model: its shape, its data and its optimisation."""

    name: str
    hidden: int  # model width
    layers: int
    heads: int
    intermediate: int  # MLP width
    mix: tuple[float, float, float]  # share of training problems with 0, 1, 2 distractors
    numbered_share: float  # chance that a training distractor carries a number
    steps: int
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    seed: int = 0


TEACHER = TrainSpec("teacher", hidden=128, layers=4, heads=4, intermediate=256,
                    mix=(0.2, 0.4, 0.4), numbered_share=0.8, steps=1000)
# The student sees sentences that carry no number, so it learns to skip those, but never a
# number it must ignore: a distractor's number is then exactly what misleads it.
STUDENT = TrainSpec("student", hidden=64, layers=2, heads=4, intermediate=128,
                    mix=(0.4, 0.3, 0.3), numbered_share=0.0, steps=800, seed=1)
MAX_POSITIONS = 128
Progress = Callable[[str, int, int, float], None]  # (model name, step, total, loss)


def _config(spec: TrainSpec, vocab_size: int, tokenizer: Any) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        intermediate_size=spec.intermediate, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )


def _batches(loaded: LoadedModel, problems: Sequence[Problem], batch_size: int,
             rng: random.Random) -> Any:
    """Endless shuffled batches of (ids, mask, labels) for response-only LM training."""
    encoded = [loaded.encode(p.instruction, p.output, add_eos=True) for p in problems]
    order = list(range(len(encoded)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [encoded[i] for i in order[start : start + batch_size]]
            width = max(len(e) for e in chunk)
            ids = torch.full((len(chunk), width), loaded.pad_id)  # (B, T)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100)
            for b, e in enumerate(chunk):
                ids[b, : len(e)] = torch.tensor(e.input_ids)
                mask[b, : len(e)] = 1
                labels[b, list(e.target_positions)] = ids[b, list(e.target_positions)]
            yield ids, mask, labels


def train_model(spec: TrainSpec, out_dir: Path, *, progress: Progress | None = None) -> Path:
    """Train one demo model and save it (weights + tokenizer) to `out_dir / spec.name`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer()
    model = AutoModelForCausalLM.from_config(_config(spec, len(tokenizer), tokenizer))
    loaded = LoadedModel(spec.name, model, tokenizer, PromptTemplate(plain=None), spec.name,
                         MAX_POSITIONS)
    rng = random.Random(spec.seed)
    problems = generate("train", spec.steps * spec.batch_size // 4, seed=spec.seed, mix=spec.mix,
                        numbered_share=spec.numbered_share)
    batches = _batches(loaded, problems, spec.batch_size, rng)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)

    def schedule(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        done = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    for step in range(spec.steps):
        ids, mask, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if progress is not None:
            progress(spec.name, step + 1, spec.steps, loss.item())
    model.eval()
    path = out_dir / spec.name
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def generate_answers(loaded: LoadedModel, instructions: Sequence[str], *,
                     batch_size: int = 128, max_new_tokens: int = 16) -> list[str]:
    """Greedy responses to the demo's short problems."""
    from leaf_engine.generate import Prompt, greedy

    return [g.text for g in greedy(loaded, [Prompt(x) for x in instructions],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size)]


def accuracy_by_distractors(loaded: LoadedModel, problems: Sequence[Problem]) -> dict[int, float]:
    """Exact final-number accuracy per distractor count."""
    answers = generate_answers(loaded, [p.instruction for p in problems])
    hits: dict[int, list[bool]] = {}
    for p, a in zip(problems, answers, strict=True):
        hits.setdefault(p.distractors, []).append(final_number(a) == p.answer)
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def train_pair(out_dir: Path, *, progress: Progress | None = None,
               test_per_group: int = 300) -> dict[str, Any]:
    """Rebuild both demo models into `out_dir` and write REPORT.json with their accuracy.

    CPU kernels are deterministic for a fixed thread count, so the same machine rebuilds the
    same weights; torch's "deterministic algorithms" mode would only slow training ~2.5x.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for spec in (TEACHER, STUDENT):
        train_model(spec, out_dir, progress=progress)
    return write_report(out_dir, seconds=time.perf_counter() - started,
                        test_per_group=test_per_group)


def write_report(out_dir: Path, *, seconds: float | None = None,
                 test_per_group: int = 300) -> dict[str, Any]:
    """Measure both models on fixed test problems and write REPORT.json beside them."""
    from leaf_engine.models import load_model

    test = [p for k in (0, 1, 2) for p in generate("test", test_per_group, seed=0, distractors=k)]
    report: dict[str, Any] = {"train_seconds": None if seconds is None else round(seconds, 1),
                              "test_problems_per_group": test_per_group,
                              "specs": {s.name: asdict(s) for s in (TEACHER, STUDENT)}}
    for spec in (TEACHER, STUDENT):
        loaded = load_model(str(out_dir / spec.name), device="cpu")
        report[spec.name] = {
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "accuracy": {f"{k} distractors": round(v, 3) for k, v in
                         accuracy_by_distractors(loaded, test).items()},
        }
    (out_dir / "REPORT.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
