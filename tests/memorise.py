"""Tiny models trained to reproduce given responses exactly: real models with known outputs,
for testing generation and answer checking end to end."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tests import tiny

ADD = "Ann has 7 pens. She buys 5 more pens."
SUB = "Bob had 12 apples and gave 4 to Carl."
CODE = "Write add."
STUDENT = [(ADD, "Step 1: add the numbers. The answer is 13."), (SUB, "The answer is 8."),
           (CODE, "```python\ndef add(a, b):\n    return a + b\n```")]
TEACHER = [(ADD, "The answer is 12."), (SUB, "The answer is 8."),
           (CODE, "```python\ndef add(a, b):\n    return a + b\n```")]


def memorised_pair(root: Path, tokenizer) -> tuple[Path, Path]:
    """(teacher, student) that answer ADD, SUB and CODE as TEACHER and STUDENT say: on ADD
    the teacher is right (12) and the student wrong (13)."""
    return (memorised_model(root, "teacher", tokenizer, TEACHER, seed=1),
            memorised_model(root, "student", tokenizer, STUDENT, seed=2))


def memorised_model(root: Path, name: str, tokenizer, pairs: Sequence[tuple[str, str]], *,
                    seed: int = 0, max_steps: int = 400) -> Path:
    """Train a tiny Llama until greedy decoding of each instruction gives its response.
    Reuses the model if `root` already has it."""
    path = root / f"memorised-{name}"
    if (path / "config.json").is_file():
        return path
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread hand-offs
    try:
        _train(path, tokenizer, pairs, seed=seed, max_steps=max_steps)
    finally:
        torch.set_num_threads(threads)
    return path


def _train(path: Path, tokenizer, pairs: Sequence[tuple[str, str]], *, seed: int,
           max_steps: int) -> None:
    from leaf_engine.models import LoadedModel, PromptTemplate

    model = tiny.build_model("llama", len(tokenizer), hidden=64, layers=2, seed=seed).train()
    loaded = LoadedModel("memorised", model, tokenizer, PromptTemplate(plain=None), "m", 256)
    encoded = [loaded.encode(instruction, response, add_eos=True)
               for instruction, response in pairs]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), loaded.pad_id)  # (B, T)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(encoded), width), -100)  # (B, T)
    for b, e in enumerate(encoded):
        ids[b, : len(e)] = torch.tensor(e.input_ids)
        mask[b, : len(e)] = 1
        labels[b, list(e.target_positions)] = ids[b, list(e.target_positions)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(seed)
    targets = labels[:, 1:] != -100  # (B, T-1): positions whose next token is trained
    for _ in range(max_steps):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        # Every response token the argmax under teacher forcing, with a margin (low loss) so
        # that padding's rounding differences cannot flip it: greedy decoding then
        # reproduces the responses exactly.
        right = (out.logits[:, :-1].argmax(-1) == labels[:, 1:])[targets].all()
        if right and out.loss.item() < 0.05:
            break
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
