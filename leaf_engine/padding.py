"""Right-padded batches: the one place that turns token-id rows into (B, T) tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Padded:
    """Ids and attention mask (B, T), and for each target token its (row, position):
    `rows_b[i], rows_p[i]` index the i-th target in `ids`."""

    ids: torch.Tensor  # (B, T) long
    mask: torch.Tensor  # (B, T) long, 1 on real tokens
    rows_b: torch.Tensor  # (R,) long
    rows_p: torch.Tensor  # (R,) long


def pad_right(
    ids: Sequence[Sequence[int] | np.ndarray], targets: Sequence[Sequence[int] | np.ndarray],
    *, pad_id: int, device: torch.device | str,
) -> Padded:
    """Pad `ids` on the right with `pad_id` to the longest row; targets are positions."""
    width = max(len(row) for row in ids)
    batch = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, T)
    rows_b: list[int] = []
    rows_p: list[int] = []
    for b, (row, positions) in enumerate(zip(ids, targets, strict=True)):
        batch[b, : len(row)] = torch.as_tensor(np.asarray(row, dtype=np.int64))
        mask[b, : len(row)] = 1
        rows_b.extend([b] * len(positions))
        rows_p.extend(int(p) for p in positions)
    return Padded(batch.to(device), mask.to(device),
                  torch.tensor(rows_b, dtype=torch.long, device=device),
                  torch.tensor(rows_p, dtype=torch.long, device=device))
