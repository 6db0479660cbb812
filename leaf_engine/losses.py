"""Pure loss functions: tensors in, tensors out.

Both the saliency loss and the distillation loss are computed from hidden-state rows
through the LM head chunk by chunk, so no (rows, vocabulary) logits tensor outlives one
chunk: each chunk's logits are recomputed in the backward pass (activation checkpointing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from leaf_engine.shapes import RD, R

Head = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_CHUNK_ROWS = 1024


def _nll_rows(hidden: RD, labels: R, head: Head) -> R:
    logits = head(hidden).float()  # (r, V); fp32 so bf16 heads do not lose the softmax
    return F.cross_entropy(logits, labels, reduction="none")


def chunked_nll(
    hidden: RD, labels: R, head: Head, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> R:
    """Per-row negative log-likelihood -log softmax(head(h_r))[y_r], shape (R,).

    Rows are processed `chunk_rows` at a time; with gradients on, each chunk is
    checkpointed, so peak memory holds one chunk's logits instead of all R x V of them.
    """
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    parts = []
    for start in range(0, hidden.shape[0], chunk_rows):
        h = hidden[start : start + chunk_rows]
        y = labels[start : start + chunk_rows]
        if torch.is_grad_enabled() and h.requires_grad:
            parts.append(checkpoint(_nll_rows, h, y, head, use_reentrant=False))
        else:
            parts.append(_nll_rows(h, y, head))
    return torch.cat(parts)
