from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leaf_engine.errors import ContextTooLongError, InputError, ModelLoadError
from leaf_engine.models import PromptTemplate, frozen, hidden_states, lm_head, load_model
from tests import tiny


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def arch_model(request, model_dir: Path, bpe_tok):
    return load_model(str(tiny.save_pair(model_dir, request.param, bpe_tok, seed=3)),
                      device="cpu")


def test_encode_locates_instruction_and_target_by_offsets(arch_model) -> None:
    instruction = "Ann has 7 pens.  She buys 5 more pens."
    output = "Step 1: add. The answer is 12."
    enc = arch_model.encode(instruction, output)
    tok = arch_model.tokenizer
    # Context tokens slice back to the text of the token ids they came from.
    for pos, ct in zip(enc.context_positions, enc.context_tokens, strict=True):
        assert ct.field == "instruction"
        assert tok.decode([enc.input_ids[pos]]) == instruction[ct.start : ct.end]
    covered = "".join(instruction[c.start : c.end] for c in enc.context_tokens)
    assert covered == instruction
    # Target tokens decode to exactly the response; template tokens are in neither set.
    assert tok.decode([enc.input_ids[p] for p in enc.target_positions]) == output
    assert enc.target_positions[0] > max(enc.context_positions) + 1  # "<|assistant|>\n" between
    assert enc.input_ids[0] == tok.bos_token_id


def test_output_prefix_tokens_are_context_with_output_offsets(arch_model) -> None:
    enc = arch_model.encode("Add 2 and 3.", " The answer is 5.", output_prefix="Step 1: add.")
    fields = [c.field for c in enc.context_tokens]
    assert fields[0] == "instruction" and fields[-1] == "output"
    prefix = [c for c in enc.context_tokens if c.field == "output"]
    assert "".join("Step 1: add."[c.start : c.end] for c in prefix) == "Step 1: add."


def test_plain_template_and_missing_chat_template(model_dir: Path) -> None:
    tok = tiny.bpe_tokenizer(chat=False)
    path = tiny.save_pair(model_dir / "plain", "llama", tok)
    loaded = load_model(str(path), device="cpu")
    assert loaded.template.kind == "plain"  # falls back to the documented default
    custom = load_model(str(path), device="cpu", prompt_template="Q: {instruction}\nA:")
    enc = custom.encode("Ann has 7 pens.", " 7")
    text = custom.tokenizer.decode(list(enc.input_ids))
    assert text.startswith("Q: Ann has 7 pens.\nA:")
    with pytest.raises(InputError, match="exactly once"):
        load_model(str(path), device="cpu", prompt_template="no placeholder")


def test_chat_template_that_rewrites_the_instruction_is_refused(bpe_tok) -> None:
    template = PromptTemplate(plain=None)
    tok = tiny.bpe_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(InputError, match="--prompt-template"):
        template.render(tok, "ann has pens")


def test_load_errors_are_one_line(model_dir: Path, tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel, ByT5Tokenizer

    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "nope"))
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(bert)
    with pytest.raises(ModelLoadError, match="BertModel model, not a causal language model"):
        load_model(str(bert))
    slow = tmp_path / "slow"
    tiny.build_model("llama", 384).save_pretrained(slow)
    ByT5Tokenizer().save_pretrained(slow)
    with pytest.raises(ModelLoadError, match="slow tokenizer") as err:
        load_model(str(slow))
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="cannot load a model config"):
        load_model(str(empty))


def test_context_limit(model_dir: Path, bpe_tok) -> None:
    loaded = load_model(str(tiny.save_pair(model_dir, "llama", bpe_tok, positions=24, seed=9)),
                        device="cpu")
    long_output = "The answer is 12. " * 10
    with pytest.raises(ContextTooLongError) as too_long:
        loaded.encode("Ann has 7 pens.", long_output)
    assert too_long.value.truncatable and too_long.value.field == "output"
    enc = loaded.encode("Ann has 7 pens.", long_output, truncate=True)
    assert len(enc) == 24 and enc.target_positions[-1] == 23
    with pytest.raises(ContextTooLongError):
        loaded.encode("Ann has 7 pens. " * 10, "12", truncate=True)  # the prompt alone is too long


def test_frozen_restores_state(arch_model) -> None:
    model = arch_model.model
    model.train()
    next(model.parameters()).requires_grad_(True)
    with frozen(model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


def test_lm_head_on_hidden_rows_matches_full_logits(arch_model) -> None:
    model = arch_model.model
    ids = torch.tensor([list(arch_model.encode("Ann has 7 pens.", "12").input_ids)])
    with torch.no_grad():
        full = model(input_ids=ids).logits  # (1, T, V)
        embeds = model.get_input_embeddings()(ids)
        rows = lm_head(model)(hidden_states(model, embeds, torch.ones_like(ids))[0])
    torch.testing.assert_close(rows, full[0], atol=1e-5, rtol=1e-5)
