"""Tiny transformers models and fast tokenizers built locally for tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "Ann has 7 pens. She buys 5 more pens. How many pens does Ann have now?",
    "Bob had 12 apples and gave 4 to Carl. The sky is blue today.",
    "Step 1: add the numbers. Step 2: write the answer. The answer is 12.",
    "Please   answer\n\nthe question below:\tthanks!  Numbers like 3, 14 and 159 matter.",
    "def add(a, b):\n    return a + b\n",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<unk>"]


def bpe_tokenizer(*, chat: bool = True, vocab_size: int = 300):
    """A byte-level BPE tokenizer (GPT-2 style, so whitespace-only tokens exist)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def word_tokenizer(*, chat: bool = True):
    """A word-level tokenizer over the corpus words plus punctuation."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    splitter = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                        pre_tokenizers.Punctuation()])
    for line in CORPUS:
        for word, _ in splitter.pre_tokenize_str(line):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = splitter
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(arch: str, vocab_size: int, *, hidden: int = 32, layers: int = 2, seed: int = 0,
                positions: int = 256):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    common = {"vocab_size": vocab_size, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "llama":
        config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=positions, **common)
    elif arch == "qwen2":
        config = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=positions, **common)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=positions,
                            **common)
    else:
        raise ValueError(arch)
    return AutoModelForCausalLM.from_config(config).eval()


def save_pair(root: Path, arch: str, tokenizer, *, seed: int = 0, hidden: int = 32,
              layers: int = 2, positions: int = 256) -> Path:
    """Save a model and tokenizer in Hugging Face format; return the directory."""
    path = root / f"{arch}-{hidden}x{layers}-s{seed}"
    model = build_model(arch, len(tokenizer), hidden=hidden, layers=layers, seed=seed,
                        positions=positions)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
