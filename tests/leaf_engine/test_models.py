from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from leaf_engine.errors import ContextTooLongError, InputError, ModelLoadError
from leaf_engine.models import (
    DEFAULT_PLAIN_TEMPLATE,
    PromptTemplate,
    frozen,
    hidden_states,
    lm_head,
    load_model,
    same_tokenizer,
)
from leaf_engine.sources import tokenizer_fingerprint
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


# ---------------------------------------------------------------------------- sources, templates


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny Llama saved twice: as a Hugging Face directory and as a .gguf file."""
    from tests.tiny_gguf import write_llama_gguf

    root = tmp_path_factory.mktemp("gguf")
    tok = tiny.bpe_tokenizer()
    model = tiny.build_model("llama", len(tok), seed=5)
    directory = root / "hf"
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory, write_llama_gguf(root / "tiny.gguf", model, tok,
                                       chat_template=tiny.CHAT_TEMPLATE)


def test_gguf_loads_as_its_checkpoint_and_saves(gguf_pair: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    directory, gguf = gguf_pair
    plain = load_model(str(directory), device="cpu")
    loaded = load_model(str(gguf), device="cpu", name="tiny-gguf")
    assert (loaded.name, loaded.source) == ("tiny-gguf", str(gguf))
    assert loaded.template.kind == "chat" and loaded.template_note is None
    assert loaded.max_length == plain.max_length == 256
    assert loaded.identity != plain.identity
    enc = loaded.encode("Ann has 7 pens.", "The answer is 12.")
    assert enc == plain.encode("Ann has 7 pens.", "The answer is 12.")
    ids = torch.tensor([list(enc.input_ids)])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, plain.model(ids).logits)
    # transformers' GGUF tokenizer adds GPT-2's '<|endoftext|>' past the vocabulary; dropped.
    assert len(loaded.tokenizer) == len(plain.tokenizer) == loaded.model.config.vocab_size
    # A GGUF-loaded model is an ordinary one: it saves, and the copy loads back the same.
    loaded.model.save_pretrained(tmp_path / "copy")
    loaded.tokenizer.save_pretrained(tmp_path / "copy")
    again = load_model(str(tmp_path / "copy"), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, plain.model(ids).logits)
    assert tokenizer_fingerprint(str(tmp_path / "copy")) == tokenizer_fingerprint(str(gguf))
    assert same_tokenizer(again.tokenizer, loaded.tokenizer)
    assert load_model(str(gguf), device="cpu", dtype="bfloat16").dtype == torch.bfloat16


def test_gguf_refusals_name_the_model(gguf_pair: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf

    from tests.tiny_gguf import tokenizer_metadata

    odd = tmp_path / "private" / "odd.gguf"
    odd.parent.mkdir()
    writer = gguf.GGUFWriter(str(odd), "bogusarch")
    writer.add_token_list(tokenizer_metadata(tiny.bpe_tokenizer())["tokens"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="architecture 'bogusarch'") as err:
        load_model(str(odd), name="odd")
    assert "'odd'" in str(err.value) and "private" not in str(err.value)
    monkeypatch.setitem(sys.modules, "gguf", None)  # what `import gguf` sees uninstalled
    with pytest.raises(ModelLoadError, match=r"leaf-focus\[gguf\]"):
        load_model(str(gguf_pair[1]), name="tiny-gguf")


def test_errors_name_the_model_by_name(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    with pytest.raises(ModelLoadError) as missing:
        load_model(str(tmp_path / "hidden" / "nope"), name="teacher-x")
    bert = tmp_path / "hidden" / "bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(bert)
    with pytest.raises(ModelLoadError) as encoder:
        load_model(str(bert), name="student-y")
    empty = tmp_path / "hidden" / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as no_config:
        load_model(str(empty), name="student-z")
    for err, name in ((missing, "teacher-x"), (encoder, "student-y"), (no_config, "student-z")):
        assert f"'{name}'" in str(err.value) and "hidden" not in str(err.value), err.value


def test_prompt_template_applies_to_models_without_a_chat_template(
        model_dir: Path, bpe_tok) -> None:
    chat = str(tiny.save_pair(model_dir, "llama", bpe_tok, seed=11))
    bare = str(tiny.save_pair(model_dir / "bare", "llama", tiny.bpe_tokenizer(chat=False),
                              seed=11))
    given = "Q: {instruction}\nA:"
    kept = load_model(chat, device="cpu", prompt_template=given)
    assert kept.template.kind == "chat" and kept.template_note is None
    forced = load_model(chat, device="cpu", prompt_template=given, force_template=True)
    assert forced.template.plain == given and forced.template_note is None
    fallback = load_model(bare, device="cpu", name="bare-model")
    assert fallback.template.plain == DEFAULT_PLAIN_TEMPLATE
    assert fallback.template_note is not None and "\n" not in fallback.template_note
    assert "'bare-model' has no chat template" in fallback.template_note
    custom = load_model(bare, device="cpu", prompt_template=given)
    assert custom.template.plain == given and repr(given) in (custom.template_note or "")


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_gguf_loads_with_its_chat_template(smollm2: Path) -> None:
    loaded = load_model(str(smollm2), device="cpu", name="smollm2")
    assert loaded.template.kind == "chat" and loaded.template_note is None
    assert loaded.max_length == 8192 and loaded.dtype == torch.float32
    assert len(loaded.tokenizer) == loaded.model.config.vocab_size == 49152
    enc = loaded.encode("Ann has 24 muffins.", "She has 24.")
    text = loaded.tokenizer.decode(list(enc.input_ids))
    assert "<|im_start|>user\nAnn has 24 muffins.<|im_end|>" in text
    with torch.no_grad():
        logits = loaded.model(torch.tensor([list(enc.input_ids)])).logits
    assert torch.isfinite(logits).all()
