"""Tiny Llama models written as GGUF files (as llama.cpp's converter writes them), for tests
of GGUF loading that need no real model: fp32 tensors, a byte-level BPE vocabulary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# llama.cpp's token types (gguf.TokenType): what `add_gguf_special_tokens` in transformers reads.
_NORMAL, _CONTROL = 1, 3


def _rope_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows with each head's two rotary halves interleaved; transformers'
    GGUF loader undoes exactly this."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def tokenizer_metadata(tokenizer: Any) -> dict[str, Any]:
    """The `tokenizer.ggml.*` values of a byte-level BPE fast tokenizer."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    specials = {t["id"] for t in spec["added_tokens"] if t["special"]}
    for added in spec["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return {"tokens": tokens, "merges": merges,
            "token_type": [_CONTROL if i in specials else _NORMAL for i in range(len(tokens))]}


def write_llama_gguf(path: Path, model: Any, tokenizer: Any, *, chat_template: str | None = None,
                     architecture: str = "llama", pre: str = "gpt2") -> Path:
    """Write a transformers Llama model and its byte-level BPE tokenizer as one GGUF file."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    meta = tokenizer_metadata(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["token_type"])
    writer.add_token_merges(meta["merges"])
    for kind in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, {"unk": "add_unk_token_id"}.get(kind, f"add_{kind}_token_id"))(
                token_id)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        base, _, suffix = name.rpartition(".")
        data = tensor.detach().float().numpy().copy()
        if base.endswith("self_attn.q_proj"):
            data = _rope_interleave(data, config.num_attention_heads)
        elif base.endswith("self_attn.k_proj"):
            data = _rope_interleave(data, config.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
