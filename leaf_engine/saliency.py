"""Gradient saliency: how strongly the response loss depends on each context token.

For an instruction X and response y, saliency(x_i) = || d L(y | X) / d e(x_i) ||_2, where
L is the mean negative log-likelihood of the response tokens and e(x_i) the input
embedding of token i. Examples are batched with right padding, sorted by length to cut
padding; each example's loss is averaged over its own response tokens and the batch loss
is their sum, so every example's gradient is exactly what it would be alone.

Batches are sized by memory, not by a fixed row count. `ActivationCost` estimates, from the
model's shape, the bytes one pass keeps alive per padded token (the activations backward
needs, and their gradients); rows join a batch while its estimate stays within the
activation budget (`DEFAULT_CPU_BUDGET` on a CPU, `GPU_BUDGET_FRACTION` of the free device
memory on a GPU) and `batch_size` rows. So memory stays near the weights plus the budget
whatever the model: a 135M model batches a few rows of ~150 tokens, the demo pair 64. On a
CPU, past a few rows a bigger batch buys memory and no speed: a 135M model is compute-bound
(benchmarks/real_models.py measures it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from leaf_engine.losses import DEFAULT_CHUNK_ROWS, chunked_nll
from leaf_engine.models import Encoded, LoadedModel, frozen, hidden_states, lm_head
from leaf_engine.padding import pad_right
from leaf_engine.records import ContextToken

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64  # most rows per pass; on real models the activation budget binds first
DEFAULT_CPU_BUDGET = 1 << 30  # bytes of activations per pass on a CPU
GPU_BUDGET_FRACTION = 0.5  # of the device memory free when a run starts
LOGITS_SHARE = 4  # one chunk of vocabulary logits gets at most 1/4 of the budget
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


@dataclass(frozen=True)
class ActivationCost:
    """Estimated bytes a saliency pass holds, from the model's shape.

    Per padded token and layer, backward keeps about 6 hidden-sized and 3 MLP-sized vectors
    (norm inputs, q/k/v after rotary, the gated MLP's two branches and their product) and,
    where padding sends attention through the unfused path, one probability per head and
    position of the row. Once per pass come the embeddings, the last hidden states and the
    transient gradients of the layer being differentiated (about 4 of each size). Fitted on
    a CPU in fp32 against the peak RSS of Llama-shaped models (SmolLM2-135M's shape, 30
    layers of 576/1536 with 9 heads, and variants with 2-8 layers, wider hidden, MLP and
    head counts, rows of 150-1200 tokens): within about 20% and mostly above. Fused attention
    kernels on a GPU store less, so there the estimate errs on the safe side.
    """

    per_token: float  # bytes per padded token, attention probabilities aside
    per_token_position: float  # bytes per padded token per position of its row (attention)
    per_logit_row: float  # bytes per response token in one chunk of vocabulary logits

    @staticmethod
    def of(model: torch.nn.Module, dtype: torch.dtype) -> ActivationCost:
        config = model.config
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        hidden = _config_int(config, "hidden_size", "n_embd", "d_model")
        if hidden is None:
            hidden = model.get_input_embeddings().embedding_dim
        layers = _config_int(config, "num_hidden_layers", "n_layer", "num_layers") or 1
        heads = _config_int(config, "num_attention_heads", "n_head") or 1
        inner = _config_int(config, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden
        vocab = _config_int(config, "vocab_size") or model.get_input_embeddings().num_embeddings
        element = torch.empty((), dtype=dtype).element_size()
        return ActivationCost(
            per_token=(layers * (6 * hidden + 3 * inner) + 4 * (hidden + inner)) * element,
            per_token_position=(layers + 4) * heads * element,
            # fp32 logits, their log-softmax, and the gradient of each (recomputed per chunk).
            per_logit_row=4 * vocab * 4,
        )

    def batch_bytes(self, rows: int, width: int) -> float:
        """Estimated bytes of a batch of `rows` rows padded to `width` tokens."""
        return rows * width * (self.per_token + self.per_token_position * width)

    def plan(self, budget: int) -> BatchPlan:
        """Split `budget` bytes between a chunk of logits and the layers' activations."""
        chunk = int(budget / LOGITS_SHARE // self.per_logit_row)
        chunk = max(1, min(DEFAULT_CHUNK_ROWS, chunk))
        return BatchPlan(self, max(0, budget - chunk * self.per_logit_row), chunk)


@dataclass(frozen=True)
class BatchPlan:
    """How many rows of a given width go in one pass, and the logits chunk size."""

    cost: ActivationCost
    layer_budget: float  # bytes left for the layers' activations
    logit_rows: int  # response tokens per chunk of logits

    def rows(self, width: int, max_rows: int) -> int:
        """Rows of `width` padded tokens that fit; at least 1 (a row is never split)."""
        fit = int(self.layer_budget // max(1.0, self.cost.batch_bytes(1, width)))
        return max(1, min(max_rows, fit))


def default_budget(device: torch.device) -> int:
    """Activation bytes per pass when none is given: `DEFAULT_CPU_BUDGET` on a CPU, and
    `GPU_BUDGET_FRACTION` of what is free on a GPU (where bigger batches do run faster)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * GPU_BUDGET_FRACTION)
    return DEFAULT_CPU_BUDGET


def token_saliency(
    loaded: LoadedModel,
    inputs: Sequence[SaliencyInput],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    activation_budget: int | None = None,
    with_surprisal: bool = False,
    truncate: bool = False,
    progress: Progress | None = None,
) -> list[Saliency]:
    """Saliency of every context token of every input, in input order.

    A pass takes at most `batch_size` rows and, by estimate, `activation_budget` bytes of
    activations (None: `default_budget` of the model's device); a row bigger than the
    budget runs alone.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if activation_budget is not None and activation_budget < 1:
        raise ValueError("activation_budget must be >= 1 byte")
    encoded = [
        loaded.encode(x.instruction, x.target, output_prefix=x.output_prefix, truncate=truncate)
        for x in inputs
    ]
    budget = activation_budget if activation_budget is not None else default_budget(
        loaded.device)
    plan = ActivationCost.of(loaded.model, loaded.dtype).plan(budget)
    # Longest first: similar lengths share a batch, the first row of a batch sets its
    # padded width, and an out-of-memory shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    results: list[Saliency | None] = [None] * len(encoded)
    with frozen(loaded.model):
        start = 0
        max_rows = batch_size
        while start < len(order):
            size = plan.rows(len(encoded[order[start]]), max_rows)
            batch = order[start : start + size]
            try:
                scored = _batch_saliency(loaded, [encoded[i] for i in batch], with_surprisal,
                                         plan.logit_rows)
            except torch.cuda.OutOfMemoryError:
                if len(batch) == 1:
                    raise
                # The estimate was too generous for this device: from here on at most half
                # the rows that failed (later rows are no longer, so half the memory).
                max_rows = max(1, len(batch) // 2)
                log.warning("out of memory with %d rows per batch; retrying with %d",
                            len(batch), max_rows)
                torch.cuda.empty_cache()
                continue
            for i, result in zip(batch, scored, strict=True):
                results[i] = result
            start += len(batch)
            if progress is not None:
                progress(len(batch))
    return [r for r in results if r is not None]


def _config_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _batch_saliency(
    loaded: LoadedModel, batch: Sequence[Encoded], with_surprisal: bool, logit_rows: int
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
    nll = chunked_nll(hidden[b_idx, p_idx - 1], ids[b_idx, p_idx], head,
                      chunk_rows=logit_rows)  # (R,)
    loss = (nll * torch.tensor(weights, device=device)).sum()
    (grad,) = torch.autograd.grad(loss, embeds)  # (B, T, D)
    norms = grad.float().norm(dim=-1).cpu().numpy().astype(np.float64)  # (B, T)

    surprisal = None
    if with_surprisal:
        surprisal = _context_surprisal(hidden.detach(), ids, batch, head, logit_rows)
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
    hidden: torch.Tensor, ids: torch.Tensor, batch: Sequence[Encoded], head: Callable,
    logit_rows: int,
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
    nll = chunked_nll(hidden[b_idx, p_idx - 1], ids[b_idx, p_idx], head,
                      chunk_rows=logit_rows).cpu().numpy()
    lookup = {(b, p): float(v) for b, p, v in zip(rows_b, rows_p, nll, strict=True)}
    return [
        np.array([lookup.get((b, p), np.nan) for p in enc.context_positions], dtype=np.float64)
        for b, enc in enumerate(batch)
    ]
