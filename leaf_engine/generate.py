"""Greedy generation, batched with left padding."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from leaf_engine.eval_config import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS
from leaf_engine.models import LoadedModel, frozen

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Prompt:
    """An instruction, and optionally the start of the response to continue from."""

    instruction: str
    output_prefix: str = ""


@dataclass(frozen=True)
class Generation:
    text: str  # the generated continuation, special tokens removed
    error: str | None = None  # why nothing was generated (the prompt does not fit)


def greedy(
    loaded: LoadedModel, prompts: Sequence[Prompt], *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Greedy continuations of `prompts` (chat template applied), in order.

    Prompts are sorted by length so a batch pads little; padding is on the left so every
    row's next token sits in the last column. A prompt that leaves no room in the model's
    context gets an empty generation with an error instead of failing the whole batch.
    """
    tok = loaded.tokenizer
    encoded: list[list[int]] = []
    for p in prompts:
        text = loaded.template.render(tok, p.instruction)[0] + p.output_prefix
        encoded.append(list(tok(text, add_special_tokens=loaded.template.adds_special_tokens)
                            ["input_ids"]))
    results: list[Generation | None] = [None] * len(prompts)
    limit = loaded.max_length
    runnable = []
    for i, ids in enumerate(encoded):
        if limit is not None and len(ids) >= limit:
            results[i] = Generation("", f"prompt of {len(ids)} tokens fills the context of "
                                        f"{limit}")
        else:
            runnable.append(i)
    order = sorted(runnable, key=lambda i: -len(encoded[i]))
    config = _generation_config(loaded, max_new_tokens)
    with frozen(loaded.model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), loaded.pad_id, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
            for b, i in enumerate(batch):
                ids[b, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[b, width - len(encoded[i]):] = 1
            config.max_new_tokens = max_new_tokens
            if limit is not None:  # stop at the end of the context, not past it
                config.max_new_tokens = max(1, min(max_new_tokens, limit - width))
            out = loaded.model.generate(
                input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
                generation_config=config,
            )  # (B, T + new)
            texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
            for i, text in zip(batch, texts, strict=True):
                results[i] = Generation(text)
            if progress is not None:
                progress(len(batch))
    if progress is not None and len(runnable) < len(prompts):
        progress(len(prompts) - len(runnable))
    return [r if r is not None else Generation("", "not generated") for r in results]


def _generation_config(loaded: LoadedModel, max_new_tokens: int):
    """The model's own generation config (its stop tokens) made greedy."""
    from transformers import GenerationConfig

    base = getattr(loaded.model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    config.do_sample = False
    config.num_beams = 1
    for name in ("temperature", "top_p", "top_k", "min_p", "typical_p"):
        if hasattr(config, name):
            setattr(config, name, None)
    config.max_new_tokens = max_new_tokens
    config.pad_token_id = loaded.pad_id
    eos = config.eos_token_id
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if loaded.tokenizer.eos_token_id is not None and loaded.tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(int(loaded.tokenizer.eos_token_id))
    config.eos_token_id = eos_ids or None
    return config
