"""Distillation losses against mathematical identities on random CPU tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leaf_engine.losses import (
    chunked_kl,
    chunked_topk_kl,
    example_means,
    hybrid_loss,
    kl_rows,
    linear_kl,
    linear_topk_kl,
    teacher_topk,
    topk_kl_rows,
)


def naive_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """Textbook reference: full probabilities, torch's own kl_div, times tau^2."""
    log_q = F.log_softmax(student_logits / t, dim=-1)
    p = F.softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_q, p, reduction="none").sum(-1) * t * t


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(7, 50, generator=gen) * 3, torch.randn(7, 50, generator=gen) * 3


def test_identical_logits_give_zero(logits) -> None:
    s, _ = logits
    assert torch.allclose(kl_rows(s, s.clone()), torch.zeros(7), atol=1e-6)
    # Shifting all logits of a row by a constant leaves the distribution unchanged.
    assert torch.allclose(kl_rows(s, s + 4.0, temperature=2.0), torch.zeros(7), atol=1e-5)


def test_kl_matches_reference_and_is_positive(logits) -> None:
    s, t = logits
    for temp in (0.5, 1.0, 3.0):
        ours = kl_rows(s, t, temperature=temp)
        assert torch.allclose(ours, naive_kl(s, t, temp), atol=1e-5)
        assert (ours > 0).all()


def test_temperature_scaling(logits) -> None:
    s, t = logits
    # tau^2 * KL(softmax(t / tau) || softmax(s / tau)) equals tau^2 times the tau = 1 KL of
    # the pre-divided logits: the temperature enters only through the logits and the factor.
    for temp in (0.5, 2.0, 4.0):
        scaled = kl_rows(s, t, temperature=temp)
        plain = kl_rows(s / temp, t / temp, temperature=1.0)
        assert torch.allclose(scaled, plain * temp**2, atol=1e-5)
    # A high temperature flattens both distributions, so the unscaled KL shrinks.
    assert (kl_rows(s, t, temperature=8.0) / 64 < kl_rows(s, t)).all()


def test_gradient_wrt_student_logits_is_softmax_difference(logits) -> None:
    s, t = logits
    s = s.clone().requires_grad_(True)
    temp = 2.0
    kl_rows(s, t, temperature=temp).sum().backward()
    expected = temp * (F.softmax(s.detach() / temp, -1) - F.softmax(t / temp, -1))
    assert torch.allclose(s.grad, expected, atol=1e-6)


def test_hybrid_weights() -> None:
    orig = torch.tensor([1.0, 2.0, 3.0])
    cf = torch.tensor([10.0, 20.0, 30.0])
    assert torch.equal(hybrid_loss(orig, cf, 1.0), orig)
    assert torch.equal(hybrid_loss(orig, cf, 0.0), cf)
    assert torch.allclose(hybrid_loss(orig, cf, 0.25), 0.25 * orig + 0.75 * cf)
    has = torch.tensor([True, False, True])
    mixed = hybrid_loss(orig, cf, 0.5, has)
    assert mixed.tolist() == [5.5, 2.0, 16.5]  # no counterfactual: the plain term alone


def test_example_means_average_within_then_across() -> None:
    values = torch.tensor([1.0, 3.0, 10.0, 0.0])
    example = torch.tensor([0, 0, 1, 2])
    assert example_means(values, example, 4).tolist() == [2.0, 10.0, 0.0, 0.0]


def _heads(d_s: int, d_t: int, vocab_s: int, vocab_t: int):
    torch.manual_seed(1)
    head_s = torch.nn.Linear(d_s, vocab_s, bias=False)
    head_t = torch.nn.Linear(d_t, vocab_t, bias=False).requires_grad_(False)
    return head_s, head_t


@pytest.mark.parametrize("chunk_rows", [1, 4, 64])
def test_chunked_matches_full_logits_in_value_and_gradient(chunk_rows: int) -> None:
    head_s, head_t = _heads(16, 24, 40, 40)
    gen = torch.Generator().manual_seed(2)
    h_s = torch.randn(13, 16, generator=gen, requires_grad=True)
    h_t = torch.randn(13, 24, generator=gen)
    temp = 1.5

    ref = naive_kl(head_s(h_s), head_t(h_t), temp)
    ref.mean().backward()
    ref_grad_h, ref_grad_w = h_s.grad.clone(), head_s.weight.grad.clone()
    h_s.grad, head_s.weight.grad = None, None

    ours = chunked_kl(h_s, head_s, h_t, head_t, temperature=temp, chunk_rows=chunk_rows)
    ours.mean().backward()
    assert torch.allclose(ours, ref.detach(), atol=1e-5)
    assert torch.allclose(h_s.grad, ref_grad_h, atol=1e-5)
    assert torch.allclose(head_s.weight.grad, ref_grad_w, atol=1e-5)
    assert head_t.weight.grad is None


def test_padded_teacher_vocab_is_truncated_to_the_shared_vocab() -> None:
    head_s, head_t = _heads(8, 8, 30, 36)  # the teacher's head has 6 padding rows
    with torch.no_grad():
        head_t.weight[30:] = 50.0  # padding that would dominate the softmax if it were kept
    h_s, h_t = torch.randn(5, 8), torch.randn(5, 8)
    ours = chunked_kl(h_s, head_s, h_t, head_t, vocab=30, chunk_rows=2)
    ref = naive_kl(head_s(h_s), head_t(h_t)[:, :30], 1.0)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_topk_with_full_k_is_the_full_kl(logits) -> None:
    s, t = logits
    ids, logp, tail = teacher_topk(t, torch.nn.Identity(), 50, temperature=2.0)
    assert torch.allclose(topk_kl_rows(s, ids, logp, tail, temperature=2.0),
                          naive_kl(s, t, 2.0), atol=1e-5)


def test_topk_is_exact_when_tails_are_proportional_and_a_lower_bound_otherwise(logits) -> None:
    s, t = logits
    k = 5
    ids, logp, tail = teacher_topk(t, torch.nn.Identity(), k)
    assert torch.allclose(tail.exp() + logp.exp().sum(-1), torch.ones(7),
                          atol=1e-6)
    # A student that equals the teacher up to a per-row shift on the tail tokens has the
    # same conditional tail distribution; coarsening then loses nothing.
    proportional = s.clone()
    rest = torch.ones_like(t, dtype=torch.bool).scatter(1, ids.long(), False)
    proportional[rest] = (t + 1.7)[rest]
    assert torch.allclose(topk_kl_rows(proportional, ids, logp, tail),
                          naive_kl(proportional, t, 1.0), atol=1e-5)
    # In general the coarsened KL is a lower bound (data processing inequality).
    assert (topk_kl_rows(s, ids, logp, tail) <= naive_kl(s, t, 1.0) + 1e-9).all()
    assert (topk_kl_rows(t, ids, logp, tail).abs() < 1e-5).all()


def test_chunked_topk_matches_unchunked_gradient() -> None:
    head_s, head_t = _heads(8, 8, 30, 30)
    h_s = torch.randn(9, 8, requires_grad=True)
    h_t = torch.randn(9, 8)
    ids, logp, tail = teacher_topk(h_t, head_t, 4, chunk_rows=2)
    ref = topk_kl_rows(head_s(h_s), ids, logp, tail)
    ref.sum().backward()
    ref_grad = h_s.grad.clone()
    h_s.grad = None
    ours = chunked_topk_kl(h_s, head_s, ids, logp, tail, chunk_rows=2)
    ours.sum().backward()
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(h_s.grad, ref_grad, atol=1e-6)
    assert torch.isfinite(h_s.grad).all()


@pytest.mark.parametrize("chunk_rows", [1, 5, 64])
def test_fused_linear_head_matches_full_logits_for_every_input(chunk_rows: int) -> None:
    gen = torch.Generator().manual_seed(3)
    weight = (torch.randn(44, 16, generator=gen) * 0.3).requires_grad_(True)
    bias = torch.randn(44, generator=gen).requires_grad_(True)
    h_s = torch.randn(13, 16, generator=gen, requires_grad=True)
    h_t = torch.randn(13, 24, generator=gen)
    head_t = torch.nn.Linear(24, 48).requires_grad_(False)  # padded: 4 rows wider
    weights = torch.rand(13, generator=gen)  # a weighted sum, as the trainer takes
    temp = 1.7

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.autograd.grad(loss, [h_s, weight, bias], retain_graph=True))

    logits = F.linear(h_s, weight[:40], bias[:40])
    ref = naive_kl(logits, head_t(h_t)[:, :40], temp)
    ref_grads = grads((ref * weights).sum())
    ours = linear_kl(h_s, weight, bias, h_t, head_t, temperature=temp, vocab=40,
                     chunk_rows=chunk_rows)
    assert torch.allclose(ours, ref.detach(), atol=1e-5)
    for got, want in zip(grads((ours * weights).sum()), ref_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    # Rows of W and b beyond the shared vocabulary get exactly zero gradient.
    assert grads(ours.sum())[1][40:].abs().max() == 0
    with torch.no_grad():
        assert torch.allclose(linear_kl(h_s, weight, bias, h_t, head_t, temperature=temp,
                                        vocab=40, chunk_rows=chunk_rows), ref, atol=1e-5)


def test_fused_linear_topk_matches_unfused() -> None:
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(30, 8, generator=gen, requires_grad=True)
    h_s = torch.randn(9, 8, generator=gen, requires_grad=True)
    ids, logp, tail = teacher_topk(torch.randn(9, 30, generator=gen), torch.nn.Identity(), 5)
    ref = topk_kl_rows(h_s @ weight.T, ids, logp, tail, temperature=2.0)
    ref_grads = torch.autograd.grad(ref.sum(), [h_s, weight])
    ours = linear_topk_kl(h_s, weight, None, ids, logp, tail, temperature=2.0, chunk_rows=4)
    assert torch.allclose(ours, ref.detach(), atol=1e-6)
    for got, want in zip(torch.autograd.grad(ours.sum(), [h_s, weight]), ref_grads,
                         strict=True):
        assert torch.allclose(got, want, atol=1e-6)
