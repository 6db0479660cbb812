from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leaf_engine.models import load_model
from leaf_engine.saliency import SaliencyInput, token_saliency
from tests import tiny

INPUTS = [
    SaliencyInput("Ann has 7 pens. She buys 5 more pens. How many pens?", "The answer is 12."),
    SaliencyInput("Bob had 12 apples.", "Step 1: add the numbers. Step 2: write the answer."),
    SaliencyInput("Please   answer\n\nthe question below:", "thanks!"),
    SaliencyInput("Add 2 and 3.", " The answer is 5.", output_prefix="Step 1: add."),
    SaliencyInput("How many?", "12"),
]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def loaded(request, model_dir: Path, bpe_tok):
    return load_model(str(tiny.save_pair(model_dir, request.param, bpe_tok, seed=4)),
                      device="cpu")


def test_batched_equals_one_at_a_time(loaded) -> None:
    batched = token_saliency(loaded, INPUTS, batch_size=64, with_surprisal=True)
    for x, b in zip(INPUTS, batched, strict=True):
        (single,) = token_saliency(loaded, [x], batch_size=1, with_surprisal=True)
        assert single.tokens == b.tokens
        assert np.max(np.abs(single.norms - b.norms)) < 1e-5
        np.testing.assert_allclose(single.surprisal, b.surprisal, atol=1e-5, equal_nan=True)
        assert np.all(b.norms > 0)


def test_matches_autograd_through_the_models_own_loss(loaded) -> None:
    """Saliency equals the embedding-gradient norm of the model's standard mean-NLL loss."""
    x = INPUTS[0]
    (ours,) = token_saliency(loaded, [x])
    enc = loaded.encode(x.instruction, x.target)
    ids = torch.tensor([list(enc.input_ids)])
    labels = torch.full_like(ids, -100)
    labels[0, list(enc.target_positions)] = ids[0, list(enc.target_positions)]
    model = loaded.model
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    loss = model(inputs_embeds=embeds, labels=labels).loss
    (grad,) = torch.autograd.grad(loss, embeds)
    reference = grad[0].norm(dim=-1)[list(enc.context_positions)].numpy()
    np.testing.assert_allclose(ours.norms, reference, rtol=1e-4, atol=1e-7)


def test_no_parameter_gradients_and_state_restored(loaded) -> None:
    model = loaded.model
    model.train()
    token_saliency(loaded, INPUTS[:2])
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


def test_progress_counts_every_input(loaded) -> None:
    seen: list[int] = []
    token_saliency(loaded, INPUTS, batch_size=2, progress=seen.append)
    assert sum(seen) == len(INPUTS) and len(seen) == 3
