from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leaf_engine.models import LoadedModel, PromptTemplate, load_model
from leaf_engine.saliency import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CPU_BUDGET,
    ActivationCost,
    SaliencyInput,
    token_saliency,
)
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


def _batches(loaded, inputs, **kwargs) -> tuple[list, list[int]]:
    seen: list[int] = []
    return token_saliency(loaded, inputs, progress=seen.append, **kwargs), seen


def test_a_small_budget_splits_batches_and_changes_no_score(loaded) -> None:
    plan = ActivationCost.of(loaded.model, loaded.dtype).plan(1)
    widest = max(len(loaded.encode(x.instruction, x.target, output_prefix=x.output_prefix))
                 for x in INPUTS)
    one_row = ActivationCost.of(loaded.model, loaded.dtype).batch_bytes(1, widest)
    # Room for two of the widest rows: at most two rows per pass, whatever batch_size says.
    budget = int(2.5 * one_row + (1 - plan.layer_budget))
    scored, seen = _batches(loaded, INPUTS, batch_size=64, activation_budget=budget)
    assert sum(seen) == len(INPUTS) and max(seen) <= 2 and len(seen) >= 3
    alone, _ = _batches(loaded, INPUTS, batch_size=1)
    for a, b in zip(alone, scored, strict=True):
        np.testing.assert_allclose(a.norms, b.norms, atol=1e-5)


def test_a_row_bigger_than_the_budget_runs_alone(loaded) -> None:
    scored, seen = _batches(loaded, INPUTS, activation_budget=1)
    assert seen == [1] * len(INPUTS) and all(np.all(s.norms > 0) for s in scored)


def test_bad_budget_is_refused(loaded) -> None:
    with pytest.raises(ValueError, match="activation_budget"):
        token_saliency(loaded, INPUTS, activation_budget=0)


def _meta_model(**shape: int):
    """A model of a real shape on the meta device: its config and dtype, no memory."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(LlamaConfig(**shape))


SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152}


def test_the_estimate_scales_with_the_models_shape() -> None:
    small = ActivationCost.of(_meta_model(**SMOLLM2_135M), torch.float32)
    deeper = ActivationCost.of(_meta_model(**{**SMOLLM2_135M, "num_hidden_layers": 60}),
                               torch.float32)
    half = ActivationCost.of(_meta_model(**SMOLLM2_135M), torch.bfloat16)
    assert deeper.batch_bytes(4, 150) > 1.9 * small.batch_bytes(4, 150)
    assert half.batch_bytes(4, 150) < 0.6 * small.batch_bytes(4, 150)
    # Attention makes a row's cost grow faster than its length.
    assert small.batch_bytes(1, 1200) > 8 * small.batch_bytes(1, 150)


def test_default_budget_on_a_135m_model_batches_a_few_rows_within_it() -> None:
    cost = ActivationCost.of(_meta_model(**SMOLLM2_135M), torch.float32)
    plan = cost.plan(DEFAULT_CPU_BUDGET)
    rows = plan.rows(150, DEFAULT_BATCH_SIZE)
    # Fitted on this shape: about 1.1 MiB per token of a 150-token row, so 64 rows of it
    # (the old fixed batch) would be ~10 GiB; the budget keeps a handful.
    assert 2 <= rows <= 8
    total = cost.batch_bytes(rows, 150) + plan.logit_rows * cost.per_logit_row
    assert total <= DEFAULT_CPU_BUDGET
    assert plan.rows(4000, DEFAULT_BATCH_SIZE) == 1


def test_default_budget_keeps_the_demo_pair_at_full_batches() -> None:
    from leaf_engine.demo import demo_pair

    for path in demo_pair():
        loaded = load_model(path, device="cpu")
        plan = ActivationCost.of(loaded.model, loaded.dtype).plan(DEFAULT_CPU_BUDGET)
        assert plan.rows(128, DEFAULT_BATCH_SIZE) == DEFAULT_BATCH_SIZE


def _out_of_memory_above(rows: int):
    """A forward pre-hook acting as a device that holds at most `rows` rows."""

    def hook(module, args, kwargs) -> None:
        if kwargs["inputs_embeds"].shape[0] > rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test device)")

    return hook


def test_out_of_memory_halves_the_rows_and_changes_no_score(loaded) -> None:
    body = loaded.model.get_decoder()
    handle = body.register_forward_pre_hook(_out_of_memory_above(2), with_kwargs=True)
    try:
        scored, seen = _batches(loaded, INPUTS, batch_size=8)
    finally:
        handle.remove()
    assert seen == [2, 2, 1]
    alone, _ = _batches(loaded, INPUTS, batch_size=1)
    for a, b in zip(alone, scored, strict=True):
        np.testing.assert_allclose(a.norms, b.norms, atol=1e-5)


def test_out_of_memory_on_one_row_is_raised(loaded) -> None:
    body = loaded.model.get_decoder()
    handle = body.register_forward_pre_hook(_out_of_memory_above(0), with_kwargs=True)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError):
            token_saliency(loaded, INPUTS)
    finally:
        handle.remove()
    assert all(p.requires_grad for p in loaded.model.parameters())


@pytest.mark.slow
def test_peak_memory_of_a_pass_stays_within_its_budget() -> None:
    """Measured, not estimated: the resident set of a pass over SmolLM2-135M-wide layers
    (4 of them) grows by at most the budget, not by what 16 rows at once take (~500 MiB)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.tiny import bpe_tokenizer

    tok = bpe_tokenizer()
    shape = {**SMOLLM2_135M, "num_hidden_layers": 4, "vocab_size": len(tok)}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**shape)).eval()
    loaded = LoadedModel("wide", model, tok, PromptTemplate(plain=None), "wide", 4096)
    words = ["Ann", "has", "7", "pens", "and", "Bob", "had", "12", "apples"]
    inputs = [SaliencyInput(" ".join(words[(i + j) % len(words)] for j in range(60)),
                            "The answer is 12.") for i in range(16)]
    budget = 96 * 2**20
    token_saliency(loaded, inputs[:1])  # allocator warm-up
    with open("/proc/self/status") as handle:
        base = next(int(x.split()[1]) * 1024 for x in handle if x.startswith("VmRSS:"))
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    _, seen = _batches(loaded, inputs, activation_budget=budget)
    with open("/proc/self/status") as handle:
        peak = next(int(x.split()[1]) * 1024 for x in handle if x.startswith("VmHWM:"))
    assert max(seen) < len(inputs)
    cost = ActivationCost.of(model, loaded.dtype)
    assert cost.batch_bytes(16, 150) > 4 * budget  # what one fixed batch of 16 would need
    assert peak - base < budget
