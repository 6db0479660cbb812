"""Gradient saliency: how strongly the response loss depends on each context token.

For an instruction X and response y, saliency(x_i) = || d L(y | X) / d e(x_i) ||_2, where
L is the mean negative log-likelihood of the response tokens and e(x_i) the input
embedding of token i. Examples are batched with right padding, sorted by length to cut
padding; each example's loss is averaged over its own response tokens and the batch loss
is their sum, so every example's gradient is exactly what it would be alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leaf_engine.losses import chunked_nll
from leaf_engine.models import Encoded, LoadedModel, frozen, hidden_states, lm_head
from leaf_engine.padding import pad_right
from leaf_engine.records import ContextToken

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
Progress = Callable[[int], None]  # called with the number of examples just finished


@dataclass(frozen=True)
class SaliencyInput:
    """Score the context (instruction, then `output_prefix`) for predicting `target`."""

    instruction: str
    target: str
    output_prefix: str = ""


@dataclass(frozen=True)
class Saliency:
    """Raw per-token scores for one input, in context order."""

    tokens: tuple[ContextToken, ...]
    norms: np.ndarray  # (N,) L2 norm of the loss gradient at each context token's embedding
    surprisal: np.ndarray | None  # (N,) -log p(x_i | x_<i); NaN where nothing precedes x_i


def token_saliency(
    loaded: LoadedModel,
    inputs: Sequence[SaliencyInput],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    with_surprisal: bool = False,
    truncate: bool = False,
    progress: Progress | None = None,
) -> list[Saliency]:
    """Saliency of every context token of every input, in input order."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    encoded = [
        loaded.encode(x.instruction, x.target, output_prefix=x.output_prefix, truncate=truncate)
        for x in inputs
    ]
    # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[Saliency | None] = [None] * len(encoded)
    with frozen(loaded.model):
        start = 0
        size = batch_size
        while start < len(order):
            batch = order[start : start + size]
            try:
                scored = _batch_saliency(loaded, [encoded[i] for i in batch], with_surprisal)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                size = max(1, size // 2)
                log.warning("out of memory at batch size %d; retrying with %d", size * 2, size)
                torch.cuda.empty_cache()
                continue
            for i, result in zip(batch, scored, strict=True):
                results[i] = result
            start += len(batch)
            if progress is not None:
                progress(len(batch))
    return [r for r in results if r is not None]


def _batch_saliency(
    loaded: LoadedModel, batch: Sequence[Encoded], with_surprisal: bool
) -> list[Saliency]:
    model = loaded.model
    device = loaded.device
    padded = pad_right([e.input_ids for e in batch], [e.target_positions for e in batch],
                       pad_id=loaded.pad_id, device=device)
    ids, mask, b_idx, p_idx = padded.ids, padded.mask, padded.rows_b, padded.rows_p
    # Each example's loss is the mean over its own response tokens.
    weights = [1.0 / len(e.target_positions) for e in batch for _ in e.target_positions]
    head = lm_head(model)

    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # (B, T, D)
    hidden = hidden_states(model, embeds, mask)  # (B, T, D)
    # The logits at position p-1 predict the token at p.
    nll = chunked_nll(hidden[b_idx, p_idx - 1], ids[b_idx, p_idx], head)  # (R,)
    loss = (nll * torch.tensor(weights, device=device)).sum()
    (grad,) = torch.autograd.grad(loss, embeds)  # (B, T, D)
    norms = grad.float().norm(dim=-1).cpu().numpy().astype(np.float64)  # (B, T)

    surprisal = None
    if with_surprisal:
        surprisal = _context_surprisal(hidden.detach(), ids, batch, head)
    out = []
    for b, enc in enumerate(batch):
        pos = list(enc.context_positions)
        out.append(Saliency(
            tokens=enc.context_tokens,
            norms=norms[b, pos],
            surprisal=None if surprisal is None else surprisal[b],
        ))
    return out


@torch.no_grad()
def _context_surprisal(
    hidden: torch.Tensor, ids: torch.Tensor, batch: Sequence[Encoded], head: Callable
) -> list[np.ndarray]:
    """-log p(x_i | x_<i) for every context token; NaN for a token at position 0."""
    rows_b, rows_p = [], []
    for b, enc in enumerate(batch):
        for p in enc.context_positions:
            if p > 0:
                rows_b.append(b)
                rows_p.append(p)
    b_idx = torch.tensor(rows_b, device=hidden.device, dtype=torch.long)
    p_idx = torch.tensor(rows_p, device=hidden.device, dtype=torch.long)
    nll = chunked_nll(hidden[b_idx, p_idx - 1], ids[b_idx, p_idx], head).cpu().numpy()
    lookup = {(b, p): float(v) for b, p, v in zip(rows_b, rows_p, nll, strict=True)}
    return [
        np.array([lookup.get((b, p), np.nan) for p in enc.context_positions], dtype=np.float64)
        for b, enc in enumerate(batch)
    ]
