"""From training rows to token ids, padded batches and the per-unit distillation loss.

A *unit* is what the batch sizes count: in hybrid mode an original row plus its
counterfactuals (all of them, or one per unit: `DistillConfig.hybrid_units`), in mix mode
a single row. Each unit's loss is

    hybrid:  lam * L_kd(original) + (1 - lam) * mean_i L_kd(counterfactual_i)
             (L_kd(original) alone when the unit has no counterfactual)
    mix:     L_kd(row)

where L_kd averages the per-token KL over the row's response tokens (`leaf_engine.losses`).
The loss is linear in the rows' L_kd, so a unit is trained as weighted rows
(`unit_weights`), and the rows of a step can be split across passes however memory needs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from leaf_engine.distill_data import TrainExample, TrainRow
from leaf_engine.errors import ContextTooLongError, IncompatibleModelsError, InputError
from leaf_engine.losses import (
    chunked_kl,
    chunked_topk_kl,
    example_means,
    linear_kl,
    linear_topk_kl,
)
from leaf_engine.models import LoadedModel, hidden_states, lm_head
from leaf_engine.padding import pad_right
from leaf_engine.teacher_cache import CachedRow, TeacherCache

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Tokens:
    """One row as each model sees it (same tokenizer; the templates may differ)."""

    student: CachedRow
    teacher: CachedRow

    def __len__(self) -> int:
        return max(len(self.student.ids), len(self.teacher.ids))


@dataclass(frozen=True, eq=False)
class Prepared:
    """An example with every row tokenized; rows that do not fit were dropped."""

    id: str
    original: Tokens
    counterfactuals: tuple[Tokens, ...]


Unit = tuple[Tokens, ...]  # (original, *counterfactuals) in hybrid mode, (row,) in mix mode


def vocab_size(loaded: LoadedModel) -> int:
    """Rows of the LM head (may exceed the tokenizer: vocabularies padded for speed)."""
    head = loaded.model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(loaded.model.config.vocab_size)


def shared_vocab(teacher: LoadedModel, student: LoadedModel) -> int:
    """The vocabulary both heads cover; padding rows beyond it are dropped from the KL."""
    from leaf_engine.models import same_tokenizer

    if not same_tokenizer(teacher.tokenizer, student.tokenizer):
        raise IncompatibleModelsError(
            f"'{teacher.name}' and '{student.name}' have different tokenizers; distillation "
            "matches distributions over one vocabulary, so both models must share a tokenizer"
        )
    shared = min(vocab_size(teacher), vocab_size(student))
    if len(student.tokenizer) > shared:
        raise IncompatibleModelsError(
            f"the tokenizer has {len(student.tokenizer)} tokens but one LM head has only "
            f"{shared} rows"
        )
    return shared


def encode_row(loaded: LoadedModel, row: TrainRow, limit: int) -> CachedRow | None:
    """Token ids and response positions, cut to `limit` tokens; None if no response token
    fits. The EOS token is a response token when the row's target ends the response."""
    try:
        enc = loaded.encode(row.instruction, row.target, output_prefix=row.output_prefix,
                            add_eos=row.final, truncate=True)
    except ContextTooLongError:
        return None
    ids, targets = enc.input_ids, enc.target_positions
    if len(ids) > limit:
        if targets[0] >= limit:
            return None
        ids = ids[:limit]
        targets = tuple(p for p in targets if p < limit)
    return CachedRow.of(ids, targets)


def prepare(
    examples: Sequence[TrainExample], teacher: LoadedModel, student: LoadedModel, limit: int
) -> tuple[list[Prepared], int]:
    """Tokenize every row for both models; return the examples and how many rows dropped."""
    same_view = teacher.template == student.template

    def both(row: TrainRow) -> Tokens | None:
        s = encode_row(student, row, limit)
        t = s if same_view or s is None else encode_row(teacher, row, limit)
        if s is None or t is None:
            return None
        if not np.array_equal(s.ids[s.targets], t.ids[t.targets]):
            raise IncompatibleModelsError(
                "teacher and student prompt templates tokenize a response differently; "
                "give both the same --prompt-template")
        return Tokens(s, t)

    out, dropped = [], 0
    for e in examples:
        try:
            original = both(e.original)
        except InputError as err:
            raise InputError(f"example '{e.id}': {err}") from None
        if original is None:
            dropped += 1 + len(e.counterfactuals)
            continue
        rows = []
        for c in e.counterfactuals:
            try:
                tokens = both(c)
            except InputError:  # pruning left no instruction token: nothing to train on
                tokens = None
            if tokens is None:
                dropped += 1
            else:
                rows.append(tokens)
        out.append(Prepared(e.id, original, tuple(rows)))
    if dropped:
        log.warning("dropped %d rows that do not fit in %d tokens or have no tokens left",
                    dropped, limit)
    return out, dropped


def _pad(rows: Sequence[CachedRow], pad_id: int, device: torch.device):
    padded = pad_right([r.ids for r in rows], [r.targets for r in rows], pad_id=pad_id,
                       device=device)
    return padded.ids, padded.mask, padded.rows_b, padded.rows_p


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The LM head when it is a plain linear layer (logits = h W^T + b, nothing after)."""
    head = model.get_output_embeddings()
    config = model.config
    scale = getattr(config, "logit_scale", None)
    if not isinstance(head, nn.Linear) or getattr(config, "final_logit_softcapping", None) or (
            isinstance(scale, (int, float)) and scale != 1):
        return None
    return head


class StudentKL(nn.Module):
    """The student plus the loss head: per-token KL against the teacher.

    Wrapping both in one module keeps every student parameter inside `forward`, which is
    what DistributedDataParallel (under `accelerate launch`) needs to sync gradients.
    """

    def __init__(self, model: nn.Module, *, temperature: float, vocab: int,
                 chunk_rows: int | None):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.vocab = vocab
        self.chunk_rows = chunk_rows

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows_b: torch.Tensor,
        rows_p: torch.Tensor, teacher_hidden: torch.Tensor | None = None,
        teacher_head: object = None, top: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, T, D)
        hidden = hidden_states(self.model, embeds, attention_mask)  # (B, T, D)
        # The state at p - 1 predicts the token at p; only response rows reach the LM head.
        rows = hidden[rows_b, rows_p - 1]  # (R, D)
        kwargs = {"temperature": self.temperature, "vocab": self.vocab,
                  "chunk_rows": self.chunk_rows}
        linear = linear_head(self.model)
        if linear is not None:  # the fused head: one weight gradient, not one per chunk
            if top is not None:
                return linear_topk_kl(rows, linear.weight, linear.bias, *top, **kwargs)
            return linear_kl(rows, linear.weight, linear.bias, teacher_hidden, teacher_head,
                             **kwargs)  # (R,)
        head = lm_head(self.model)  # softcapping or a logit scale: checkpoint each chunk
        if top is not None:
            return chunked_topk_kl(rows, head, *top, **kwargs)  # (R,)
        return chunked_kl(rows, head, teacher_hidden, teacher_head, **kwargs)  # (R,)


@torch.no_grad()
def teacher_rows(
    teacher: LoadedModel, rows: Sequence[CachedRow]
) -> tuple[torch.Tensor, object]:
    """The teacher's hidden states (R, D) at the positions that predict each response token,
    rows concatenated in order, and its LM head."""
    ids, mask, rows_b, rows_p = _pad(rows, teacher.pad_id, teacher.device)
    embeds = teacher.model.get_input_embeddings()(ids)  # (B, T, D)
    hidden = hidden_states(teacher.model, embeds, mask)  # (B, T, D)
    return hidden[rows_b, rows_p - 1], lm_head(teacher.model)  # (R, D)


def row_losses(
    student: nn.Module, teacher: LoadedModel, rows: Sequence[Tokens], *, pad_id: int,
    device: torch.device, cache: TeacherCache | None = None,
) -> torch.Tensor:
    """L_kd of each row, shape (rows,): one teacher and one student pass over all rows."""
    ids, mask, rows_b, rows_p = _pad([r.student for r in rows], pad_id, device)
    if cache is not None:
        top = tuple(t.to(device) for t in cache.lookup([r.teacher.key for r in rows]))
        kl = student(ids, mask, rows_b, rows_p, top=top)  # (R,)
    else:
        hidden, head = teacher_rows(teacher, [r.teacher for r in rows])
        kl = student(ids, mask, rows_b, rows_p, teacher_hidden=hidden, teacher_head=head)
    return example_means(kl.float(), rows_b, len(rows))  # (rows,)


def unit_weights(size: int, lam: float) -> tuple[float, ...]:
    """The weight of each row of a unit of `size` rows (original first) in its loss

        L = lam * L_kd(X) + (1 - lam) * (1/k) * sum_i L_kd(X \\ A_i),   k = size - 1,

    so the k counterfactuals share the (1 - lam) term; a unit of one row weighs 1.
    """
    if size == 1:
        return (1.0,)
    k = size - 1
    return (lam, *((1.0 - lam) / k,) * k)


def weighted_rows(units: Sequence[Unit], lam: float) -> list[tuple[Tokens, float]]:
    """Every row of `units` with its weight: the units' losses sum to the weighted sum of
    the rows' L_kd."""
    return [(row, w) for u in units for row, w in zip(u, unit_weights(len(u), lam),
                                                        strict=True)]


def weighted_loss(
    student: nn.Module, teacher: LoadedModel, rows: Sequence[tuple[Tokens, float]], *,
    pad_id: int, device: torch.device, cache: TeacherCache | None = None,
) -> torch.Tensor:
    """sum_r w_r * L_kd(row r), a scalar: one teacher and one student pass over the rows."""
    means = row_losses(student, teacher, [r for r, _ in rows], pad_id=pad_id, device=device,
                       cache=cache)  # (R,)
    weights = torch.tensor([w for _, w in rows], device=device, dtype=means.dtype)  # (R,)
    return (means * weights).sum()
