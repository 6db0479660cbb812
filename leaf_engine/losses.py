"""Pure loss functions: tensors in, tensors out.

Both the saliency loss and the distillation loss are computed from hidden-state rows
through the LM head chunk by chunk, so no (rows, vocabulary) logits tensor outlives one
chunk: each chunk's logits are recomputed in the backward pass (activation checkpointing,
or for a plain linear head the custom backward of `_LinearRows`, which also gives the head
a single weight gradient instead of one per chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from leaf_engine.shapes import RD, RV, R

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


# ---------------------------------------------------------------------------- distillation
#
# Causal attention distillation (Guo et al., 2025, Sec. 2.1.1). For a response token y_t with
# context c (the instruction, or the instruction with confounders pruned), temperature tau:
#
#     p_T = softmax(z_T / tau),  p_S = softmax(z_S / tau)
#     D(t) = tau^2 * sum_v p_T(v | c, y_<t) * [log p_T(v | c, y_<t) - log p_S(v | c, y_<t)]
#     L_kd(c) = 1/|Y| * sum_{t in Y} D(t)                       (averaged over response tokens)
#     L = lam * L_kd(X) + (1 - lam) * L_kd(X \ A)                (the hybrid objective)
#
# The tau^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al.).

CHUNK_ELEMENTS = 2**25  # logits per chunk (128 MiB in fp32) when chunk_rows is not given
TAIL_FLOOR = -1e9  # log-mass of an empty tail: finite, so 0 * (a - b) never turns into NaN


def _log_softmax(logits: RV, temperature: float) -> RV:
    z = logits.float()  # (r, V); fp32 so a bf16 head does not lose the softmax
    if temperature != 1.0:
        z = z / temperature
    return F.log_softmax(z, dim=-1)


def kl_rows(student_logits: RV, teacher_logits: RV, *, temperature: float = 1.0) -> R:
    """Per-row forward KL(p_T || p_S) over the full vocabulary, scaled by tau^2.

    D_r = tau^2 * sum_v p_T(v) (log p_T(v) - log p_S(v)), p = softmax(logits / tau).
    Shapes: logits (R, V), result (R,). The teacher side carries no gradient.
    """
    return _kl(student_logits, _teacher_logprobs(teacher_logits, temperature), temperature)


def _teacher_logprobs(teacher_logits: RV, temperature: float) -> RV:
    with torch.no_grad():
        return _log_softmax(teacher_logits, temperature)  # (R, V)


def _kl(student_logits: RV, lpt: RV, temperature: float) -> R:
    # Elementwise log-ratios, not -H(p_T) - sum p_T log p_S: two sums of size ~H that
    # nearly cancel lose precision exactly when the KL is small. One einsum keeps few
    # (R, V) temporaries alive, which the chunked losses rely on.
    lps = _log_softmax(student_logits, temperature)  # (R, V)
    return torch.einsum("rv,rv->r", lpt.exp(), lpt - lps) * temperature**2


def topk_kl_rows(
    student_logits: RV, top_ids: torch.Tensor, top_logp: torch.Tensor, tail_logp: R, *,
    temperature: float = 1.0,
) -> R:
    """KL(p_T || p_S) with the teacher kept as its top-k log-probs plus the tail mass.

    Both distributions are coarsened to k + 1 buckets (the teacher's k most likely tokens and
    "everything else"), and the KL is taken between the coarsened distributions:

        D_r = tau^2 * [ sum_{v in K} p_T(v) (log p_T(v) - log p_S(v))
                        + p_T(tail) (log p_T(tail) - log p_S(tail)) ],
        p(tail) = 1 - sum_{v in K} p(v).

    It never exceeds the full KL (coarsening loses information) and equals it when the
    student's distribution over the tail is proportional to the teacher's, or when k = V.
    Shapes: student_logits (R, V), top_ids and top_logp (R, k) at temperature tau, tail (R,).
    """
    lps = _log_softmax(student_logits, temperature)  # (R, V)
    lps_top = lps.gather(1, top_ids.long())  # (R, k)
    # The student's own tail: logsumexp over the tokens outside the teacher's top-k.
    s_tail = torch.logsumexp(lps.scatter(1, top_ids.long(), TAIL_FLOOR), dim=-1)  # (R,)
    s_tail = s_tail.clamp(min=TAIL_FLOOR)
    top_logp = top_logp.float()
    tail_logp = tail_logp.float().clamp(min=TAIL_FLOOR)
    head = (top_logp.exp() * (top_logp - lps_top)).sum(-1)  # (R,)
    tail = tail_logp.exp() * (tail_logp - s_tail)  # (R,)
    return (head + tail) * temperature**2


def example_means(values: R, example: R, n_examples: int) -> torch.Tensor:
    """Mean of per-row `values` within each example: (R,) rows, (R,) example index -> (E,).

    Averaging within an example first (then across examples) makes an example's weight
    independent of its length and of which rows share its micro-batch.
    """
    sums = values.new_zeros(n_examples).index_add(0, example, values)  # (E,)
    counts = values.new_zeros(n_examples).index_add(0, example, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def hybrid_loss(
    original: torch.Tensor, counterfactual: torch.Tensor, lam: float,
    has_counterfactual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-example hybrid objective  L = lam * L_kd(X) + (1 - lam) * L_kd(X \\ A).

    `original` and `counterfactual` are per-example KD losses (E,). Examples without a
    counterfactual (`has_counterfactual` False) keep the plain term with full weight, L =
    L_kd(X): nothing was pruned, so X \\ A = X and both terms coincide.
    """
    mixed = lam * original + (1.0 - lam) * counterfactual
    if has_counterfactual is None:
        return mixed
    return torch.where(has_counterfactual, mixed, original)


def auto_chunk_rows(vocab: int, chunk_rows: int | None) -> int:
    return chunk_rows if chunk_rows else max(1, CHUNK_ELEMENTS // max(1, vocab))


def _kl_from_student_logits(
    z: RV, h_t: RD, head_t: Head, temperature: float, vocab: int
) -> R:
    with torch.no_grad():  # the head's padding rows beyond `vocab` are dropped
        lpt = _teacher_logprobs(head_t(h_t)[:, :vocab], temperature)  # (r, V)
    return _kl(z, lpt, temperature)


def _kl_chunk(
    h_s: RD, h_t: RD, head_s: Head, head_t: Head, temperature: float, vocab: int
) -> R:
    return _kl_from_student_logits(head_s(h_s)[:, :vocab], h_t, head_t, temperature, vocab)


def chunked_kl(
    student_hidden: RD, student_head: Head, teacher_hidden: RD, teacher_head: Head, *,
    temperature: float = 1.0, vocab: int | None = None, chunk_rows: int | None = None,
) -> R:
    """Per-row KL(p_T || p_S) from hidden states, applying both LM heads chunk by chunk.

    Same value as `kl_rows(student_head(h_s), teacher_head(h_t))` restricted to the first
    `vocab` logits (the shared vocabulary, when the teacher's head is padded wider than the
    student's), but only one chunk's (rows, V) logits exist at a time: with gradients on,
    each chunk is checkpointed and recomputed in the backward pass. The teacher's hidden
    rows and head get no gradient. Shapes: hidden (R, D_S) and (R, D_T), result (R,).
    """
    if student_hidden.shape[0] != teacher_hidden.shape[0]:
        raise ValueError("student and teacher must give the same number of rows")
    if student_hidden.shape[0] == 0:
        return student_hidden.new_zeros(0, dtype=torch.float32)
    teacher_hidden = teacher_hidden.detach()
    if vocab is None:
        vocab = _width(student_head, student_hidden)
    rows = auto_chunk_rows(vocab, chunk_rows)
    parts = []
    for start in range(0, student_hidden.shape[0], rows):
        h_s = student_hidden[start : start + rows]
        h_t = teacher_hidden[start : start + rows]
        args = (h_s, h_t, student_head, teacher_head, temperature, vocab)
        if torch.is_grad_enabled():
            parts.append(checkpoint(_kl_chunk, *args, use_reentrant=False))
        else:
            parts.append(_kl_chunk(*args))
    return torch.cat(parts)


def _topk_chunk(
    h_s: RD, ids: torch.Tensor, logp: torch.Tensor, tail: R, head_s: Head, temperature: float,
    vocab: int,
) -> R:
    return topk_kl_rows(head_s(h_s)[:, :vocab], ids, logp, tail, temperature=temperature)


def chunked_topk_kl(
    student_hidden: RD, student_head: Head, top_ids: torch.Tensor, top_logp: torch.Tensor,
    tail_logp: R, *, temperature: float = 1.0, vocab: int | None = None,
    chunk_rows: int | None = None,
) -> R:
    """`topk_kl_rows` from student hidden rows (R, D), the student head applied chunk by chunk
    (checkpointed like `chunked_kl`), against cached teacher top-k log-probs (R, k)."""
    if student_hidden.shape[0] == 0:
        return student_hidden.new_zeros(0, dtype=torch.float32)
    if vocab is None:
        vocab = _width(student_head, student_hidden)
    rows = auto_chunk_rows(vocab, chunk_rows)
    parts = []
    for start in range(0, student_hidden.shape[0], rows):
        piece = slice(start, start + rows)
        args = (student_hidden[piece], top_ids[piece], top_logp[piece], tail_logp[piece],
                student_head, temperature, vocab)
        if torch.is_grad_enabled():
            parts.append(checkpoint(_topk_chunk, *args, use_reentrant=False))
        else:
            parts.append(_topk_chunk(*args))
    return torch.cat(parts)


@torch.no_grad()
def teacher_topk(
    teacher_hidden: RD, teacher_head: Head, k: int, *, temperature: float = 1.0,
    vocab: int | None = None, chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, R]:
    """The teacher's k most likely tokens per row at temperature tau, chunk by chunk.

    Returns (ids (R, k) int32, log-probs (R, k) fp32, tail log-mass (R,) fp32), where the tail
    is log(1 - sum of the top-k probabilities), computed as a logsumexp so it stays exact
    when it is tiny.
    """
    if vocab is None:
        vocab = _width(teacher_head, teacher_hidden)
    if not 0 < k <= vocab:
        raise ValueError(f"k must be in [1, {vocab}], got {k}")
    rows = auto_chunk_rows(vocab, chunk_rows)
    ids, logp, tail = [], [], []
    for start in range(0, teacher_hidden.shape[0], rows):
        lp = _log_softmax(teacher_head(teacher_hidden[start : start + rows])[:, :vocab],
                          temperature)  # (r, V)
        values, index = lp.topk(k, dim=-1)  # (r, k)
        rest = torch.logsumexp(lp.scatter(1, index, TAIL_FLOOR), dim=-1)  # (r,)
        ids.append(index.to(torch.int32))
        logp.append(values)
        tail.append(rest.clamp(min=TAIL_FLOOR))
    if not ids:
        empty = teacher_hidden.new_zeros((0, k), dtype=torch.float32)
        return empty.to(torch.int32), empty, teacher_hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(ids), torch.cat(logp), torch.cat(tail)


# ---------------------------------------------------------------------------- fused linear heads

RowsFn = Callable[[torch.Tensor, slice], torch.Tensor]  # (chunk logits (r, V), rows) -> (r,)
# (chunk logits (r, V), rows, d loss / d values (r,)) -> d loss / d logits (r, V)
GradFn = Callable[[torch.Tensor, slice, torch.Tensor], torch.Tensor]


class _LinearRows(torch.autograd.Function):
    """Per-row values f(h W^T + b) over row chunks, for a plain linear LM head.

    Forward keeps nothing but its inputs. Backward recomputes one chunk's logits at a time,
    takes the gradient of f w.r.t. them, and turns it into gradients for the hidden rows and
    for W and b, accumulating W's gradient in one (V, D) fp32 buffer in place. Checkpointing
    each chunk instead would hand autograd one (V, D) gradient per chunk to sum, so twice
    that memory; here W gets a single gradient.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(  # type: ignore[override]
        ctx: Any, hidden: RD, weight: torch.Tensor, bias: torch.Tensor | None, rows_fn: RowsFn,
        grad_fn: GradFn | None, vocab: int, chunk_rows: int,
    ) -> R:
        ctx.save_for_backward(hidden, weight, bias)
        ctx.rows_fn, ctx.grad_fn = rows_fn, grad_fn
        ctx.vocab, ctx.chunk_rows = vocab, chunk_rows
        with torch.no_grad():
            parts = [rows_fn(_linear_logits(hidden[piece], weight, bias, vocab), piece)
                     for piece in _pieces(hidden.shape[0], chunk_rows)]
        return torch.cat(parts)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad_out: R) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias = ctx.saved_tensors
        vocab = ctx.vocab
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=weight.device) \
            if need_b else None
        for piece in _pieces(hidden.shape[0], ctx.chunk_rows):
            h = hidden[piece]
            g = _logits_grad(ctx, _linear_logits(h, weight, bias, vocab), piece,
                             grad_out[piece])  # (r, V) fp32
            if grad_h is not None:
                grad_h[piece] = g.to(weight.dtype) @ weight[:vocab]  # (r, D)
            if grad_w is not None:
                grad_w[:vocab].addmm_(g.T, h.float())  # in place: no per-chunk (V, D) copy
            if grad_b is not None:
                grad_b += g.sum(0)
        if grad_w is not None and grad_w.dtype != weight.dtype:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            full = torch.zeros(bias.shape, dtype=bias.dtype, device=bias.device)
            full[:vocab] = grad_b
            grad_b = full
        return grad_h, grad_w, grad_b, None, None, None, None


def _logits_grad(ctx: Any, z: RV, piece: slice, grad_out: R) -> RV:
    if ctx.grad_fn is not None:
        return ctx.grad_fn(z, piece, grad_out).float()
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        values = ctx.rows_fn(z, piece)  # (r,)
    (g,) = torch.autograd.grad(values, z, grad_out)  # (r, V)
    return g.float()


def _linear_logits(h: RD, weight: torch.Tensor, bias: torch.Tensor | None, vocab: int) -> RV:
    return F.linear(h.to(weight.dtype), weight[:vocab], None if bias is None else bias[:vocab])


def _pieces(rows: int, chunk_rows: int) -> list[slice]:
    return [slice(start, start + chunk_rows) for start in range(0, rows, chunk_rows)]


def linear_rows(
    hidden: RD, weight: torch.Tensor, bias: torch.Tensor | None, rows_fn: RowsFn, *,
    grad_fn: GradFn | None = None, vocab: int | None = None, chunk_rows: int | None = None,
) -> R:
    """`rows_fn` applied to the logits `hidden @ weight[:vocab].T (+ bias)` chunk by chunk,
    with the memory-bounded backward of `_LinearRows`. `grad_fn`, if given, is the analytic
    gradient of the rows w.r.t. the logits (else autograd through `rows_fn`). Shapes:
    hidden (R, D), weight (V', D) with V' >= vocab, result (R,)."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    vocab = vocab or weight.shape[0]
    rows = auto_chunk_rows(vocab, chunk_rows)
    if not torch.is_grad_enabled():
        return torch.cat([rows_fn(_linear_logits(hidden[p], weight, bias, vocab), p)
                          for p in _pieces(hidden.shape[0], rows)])
    return _LinearRows.apply(hidden, weight, bias, rows_fn, grad_fn, vocab, rows)


def linear_kl(
    student_hidden: RD, weight: torch.Tensor, bias: torch.Tensor | None,
    teacher_hidden: RD, teacher_head: Head, *, temperature: float = 1.0,
    vocab: int | None = None, chunk_rows: int | None = None,
) -> R:
    """`chunked_kl` for a student whose LM head is a plain linear layer (weight, bias):
    the same values, with a custom backward that never holds more than one chunk's logits
    and gives the head a single weight gradient."""
    teacher_hidden = teacher_hidden.detach()
    vocab = vocab or weight.shape[0]

    def rows(z: RV, piece: slice) -> R:
        return _kl_from_student_logits(z, teacher_hidden[piece], teacher_head, temperature,
                                       vocab)

    def grad(z: RV, piece: slice, grad_out: R) -> RV:
        # d/dz [tau^2 KL(p_T || softmax(z / tau))] = tau * (p_S - p_T), computed in place.
        with torch.no_grad():
            pt = _log_softmax(teacher_head(teacher_hidden[piece])[:, :vocab],
                              temperature).exp_()  # (r, V)
            g = _log_softmax(z, temperature).exp_()  # (r, V) p_S
            return g.sub_(pt).mul_(grad_out[:, None] * temperature)

    return linear_rows(student_hidden, weight, bias, rows, grad_fn=grad, vocab=vocab,
                       chunk_rows=chunk_rows)


def linear_topk_kl(
    student_hidden: RD, weight: torch.Tensor, bias: torch.Tensor | None,
    top_ids: torch.Tensor, top_logp: torch.Tensor, tail_logp: R, *,
    temperature: float = 1.0, vocab: int | None = None, chunk_rows: int | None = None,
) -> R:
    """`chunked_topk_kl` for a plain linear student head (see `linear_kl`)."""

    def rows(z: RV, piece: slice) -> R:
        return topk_kl_rows(z, top_ids[piece], top_logp[piece], tail_logp[piece],
                            temperature=temperature)

    return linear_rows(student_hidden, weight, bias, rows, vocab=vocab, chunk_rows=chunk_rows)


def _width(head: Head, hidden: RD) -> int:
    with torch.no_grad():
        return int(head(hidden[:1]).shape[-1])
