"""Loading causal LMs with fast tokenizers, prompt templating, and encoding with offsets.

Every position that matters (instruction tokens, earlier response tokens, target tokens) is
found from the tokenizer's character offsets, never from fixed positions in a template.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from leaf_engine.errors import ContextTooLongError, InputError, ModelLoadError
from leaf_engine.identity import fingerprint
from leaf_engine.records import ContextToken
from leaf_engine.sources import ModelSource, gguf_architecture, label, locate, require_gguf

log = logging.getLogger(__name__)

DEFAULT_PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_UNBOUNDED = 1_000_000  # tokenizers report ~1e30 as model_max_length when they know no limit


@dataclass(frozen=True)
class PromptTemplate:
    """How an instruction becomes the text that precedes the response.

    Either the tokenizer's chat template (a single user turn plus the generation prompt) or a
    plain string with one `{instruction}` placeholder.
    """

    plain: str | None  # None: use the tokenizer's chat template

    @staticmethod
    def plain_template(template: str) -> PromptTemplate:
        if template.count("{instruction}") != 1:
            raise InputError("--prompt-template must contain '{instruction}' exactly once")
        return PromptTemplate(plain=template)

    @property
    def kind(self) -> str:
        return "chat" if self.plain is None else "plain"

    def render(self, tokenizer: Any, instruction: str) -> tuple[str, int]:
        """Return the prompt text and the character offset of the instruction inside it."""
        if self.plain is not None:
            head, tail = self.plain.split("{instruction}")
            return head + instruction + tail, len(head)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
        start = text.find(instruction)
        if start < 0:
            raise InputError(
                "the chat template rewrites the instruction text (e.g. trims it), so its tokens "
                "cannot be located; pass --prompt-template instead"
            )
        return text, start

    @property
    def adds_special_tokens(self) -> bool:
        # Chat templates write BOS and friends themselves; plain templates rely on the tokenizer.
        return self.plain is not None


@dataclass(frozen=True)
class Encoded:
    """Token ids of `prompt + output_prefix + target`, with the positions that matter."""

    input_ids: tuple[int, ...]
    context_positions: tuple[int, ...]  # positions of instruction / output-prefix tokens
    context_tokens: tuple[ContextToken, ...]  # same order as context_positions
    target_positions: tuple[int, ...]  # positions whose token is a response (loss) token

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class LoadedModel:
    """A causal LM, its fast tokenizer and how prompts are built for it."""

    name: str
    model: nn.Module
    tokenizer: Any
    template: PromptTemplate
    identity: str  # stable content hash for cache keys
    max_length: int | None
    source: str = ""  # where it was loaded from: a directory, a .gguf file or a hub id
    # One line for the user when the model has no chat template and a plain one is used.
    template_note: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def encode(
        self,
        instruction: str,
        target: str,
        *,
        output_prefix: str = "",
        add_eos: bool = False,
        truncate: bool = False,
    ) -> Encoded:
        return encode(self, instruction, target, output_prefix=output_prefix, add_eos=add_eos,
                      truncate=truncate)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ModelLoadError(f"unknown device '{device}' (use auto, cpu or cuda)") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on a GPU that supports it. Explicit names win."""
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in names:
        raise ModelLoadError(f"unknown dtype '{dtype}' (use auto, {', '.join(sorted(names))})")
    return names[dtype]


def model_identity(location: str, is_local: bool, config: Any, dtype: torch.dtype) -> str:
    """A content hash that changes when the weights, config or dtype change."""
    digest = hashlib.sha256()
    digest.update(fingerprint(location).encode())
    digest.update(str(dtype).encode())
    if not is_local:
        digest.update(f"@{getattr(config, '_commit_hash', None)}".encode())
    return digest.hexdigest()[:24]


def _context_limit(config: Any, tokenizer: Any) -> int | None:
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < _UNBOUNDED]
    return min(usable) if usable else None


def load_model(
    source: str,
    *,
    name: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    prompt_template: str | None = None,
    force_template: bool = False,
) -> LoadedModel:
    """Load a causal LM with its fast tokenizer from a Hugging Face directory, a hub id (the
    local cache only when HF_HUB_OFFLINE=1) or a `.gguf` file (dequantised to `dtype`).

    `name` is what messages and records call the model (default: `source`); with a name, no
    message shows the source's path. The tokenizer's chat template builds prompts; the plain
    `prompt_template` is for a model without one, unless `force_template` puts it first.
    Remote code is never run. Errors are one line: a missing path, a model that is not a
    causal LM, a tokenizer without offsets (slow), a GGUF file transformers cannot read
    raise `ModelLoadError`.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    who = label(source, name)
    given = None if prompt_template is None else PromptTemplate.plain_template(prompt_template)
    located = locate(source, name=name)
    options: dict[str, Any] = {"trust_remote_code": False}
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        options["local_files_only"] = True
    if located.kind == "gguf":
        require_gguf(who)
        options["gguf_file"] = located.gguf_file
    where = located.directory
    try:
        config = AutoConfig.from_pretrained(where, **options)
    except (OSError, ValueError) as err:
        raise ModelLoadError(_config_problem(located, who, err)) from None
    archs = getattr(config, "architectures", None) or []
    # Some encoders (BERT) have a causal-LM class too; the saved architecture says what it is.
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (
        archs and not any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)
    ):
        kind = archs[0] if archs else config.model_type
        raise ModelLoadError(f"{who} is a {kind} model, not a causal language model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **options)
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"cannot load the tokenizer of {who}: "
                             f"{_reason(err, located, who)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"the tokenizer of {who} is a slow tokenizer; LeaF needs a fast "
                             "tokenizer (tokenizer.json) for character offsets")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, **_dtype_kwarg(torch_dtype), **_gguf_dequantised(located), **options
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load the weights of {who}: "
                             f"{_reason(err, located, who)}") from None
    if located.kind == "gguf":
        _forget_gguf(model)
        tokenizer = _without_invented_tokens(tokenizer, int(config.vocab_size))
    model.to(torch_device).eval()
    template, note = _choose_template(tokenizer, given, force_template, who)
    return LoadedModel(
        name=name if name is not None else source,
        model=model,
        tokenizer=tokenizer,
        template=template,
        identity=model_identity(located.location, located.is_local, config, torch_dtype),
        max_length=_context_limit(config, tokenizer),
        source=located.location,
        template_note=note,
    )


def _choose_template(tokenizer: Any, given: PromptTemplate | None, force: bool,
                     who: str) -> tuple[PromptTemplate, str | None]:
    """The model's chat template, unless it has none or `force` asks for the plain one (the
    given template, else the default); and the one-line note owed to the user when a model
    without a chat template falls back to a plain template."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if has_chat and not force:
        if given is not None:
            log.info("%s has a chat template; the plain prompt template applies only to "
                     "models without one (force_template puts it first)", who)
        return PromptTemplate(plain=None), None
    template = given or PromptTemplate(plain=DEFAULT_PLAIN_TEMPLATE)
    if has_chat:
        return template, None
    note = (f"{who} has no chat template; its prompts use the plain template "
            f"{template.plain!r}")
    log.info("%s", note)
    return template, note


def _gguf_dequantised(located: ModelSource) -> dict[str, Any]:
    """Ask for plain dense weights: LeaF takes gradients through every layer and trains
    students, which quantized GGUF blocks do not allow."""
    if located.kind != "gguf":
        return {}
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers before 5 always dequantises GGUF weights
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _forget_gguf(model: nn.Module) -> None:
    """Make a dequantised GGUF model an ordinary one. Its weights are plain tensors by now,
    but transformers still marks it quantized and then refuses `save_pretrained`, which a
    distilled student needs."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _without_invented_tokens(tokenizer: Any, rows: int) -> Any:
    """The tokenizer without added tokens past the model's vocabulary. Building a tokenizer
    from a GGUF file, transformers adds its class's defaults (GPT-2's '<|endoftext|>') when
    the file lacks them: ids the model has no row for, which text containing them would
    index out of range, and which make the tokenizer longer than the LM head (distillation
    refuses that). llama.cpp, which wrote the file, has no such tokens either."""
    invented = {str(token) for i, token in tokenizer.added_tokens_decoder.items() if i >= rows}
    if not invented:
        return tokenizer
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="leaf-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp)
        spec_file, config_file = Path(tmp) / "tokenizer.json", Path(tmp) / "tokenizer_config.json"
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < rows]
        spec_file.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for key, value in list(config.items()):
            if isinstance(value, str) and value in invented:
                config[key] = None
            elif isinstance(value, list):
                config[key] = [v for v in value if v not in invented]
        config_file.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)


def _config_problem(located: ModelSource, who: str, err: BaseException) -> str:
    if located.kind == "gguf":
        arch = gguf_architecture(located.location)
        text = str(err)
        if arch is not None and ("not supported" in text or "Supported:" in text):
            import transformers

            return (f"{who} is a GGUF file of architecture '{arch}', which transformers "
                    f"{transformers.__version__} cannot load from GGUF")
        return f"cannot read a model config from the GGUF file {who}: {_reason(err, located, who)}"
    where = "directory" if located.is_local else "hub id (offline, or no such repository?)"
    return f"cannot load a model config from {where} {who}: {_reason(err, located, who)}"


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def _reason(err: BaseException, located: ModelSource, who: str) -> str:
    """The first line of a loading error, with the model's paths replaced by its name."""
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    for path in sorted({located.location, located.directory}, key=len, reverse=True):
        line = line.replace(path, who)
    return line


def encode(
    loaded: LoadedModel,
    instruction: str,
    target: str,
    *,
    output_prefix: str = "",
    add_eos: bool = False,
    truncate: bool = False,
) -> Encoded:
    """Tokenize `template(instruction) + output_prefix + target` and classify every token.

    A token overlapping the target is a target token (a BPE merge across the boundary makes
    it carry response text). A token overlapping the instruction or the output prefix is a
    context token, its offsets clipped to that field. Template and special tokens (zero-width
    offsets) are neither.
    """
    tokenizer = loaded.tokenizer
    prompt, instr_start = loaded.template.render(tokenizer, instruction)
    text = prompt + output_prefix + target
    instr = (instr_start, instr_start + len(instruction))
    prefix = (len(prompt), len(prompt) + len(output_prefix))
    tgt_start = prefix[1]
    enc = tokenizer(text, return_offsets_mapping=True,
                    add_special_tokens=loaded.template.adds_special_tokens)
    ids = list(enc["input_ids"])
    ctx_pos: list[int] = []
    ctx_tok: list[ContextToken] = []
    tgt_pos: list[int] = []
    for pos, (start, end) in enumerate(enc["offset_mapping"]):
        if end <= start:
            continue
        if end > tgt_start:
            tgt_pos.append(pos)
        elif start < instr[1] and end > instr[0]:
            ctx_pos.append(pos)
            ctx_tok.append(ContextToken("instruction", max(start, instr[0]) - instr[0],
                                        min(end, instr[1]) - instr[0]))
        elif start < prefix[1] and end > prefix[0]:
            ctx_pos.append(pos)
            ctx_tok.append(ContextToken("output", max(start, prefix[0]) - prefix[0],
                                        min(end, prefix[1]) - prefix[0]))
    if add_eos and tokenizer.eos_token_id is not None:
        tgt_pos.append(len(ids))
        ids.append(int(tokenizer.eos_token_id))
    if not ctx_pos:
        raise InputError("the instruction has no tokens after templating")
    if not tgt_pos:
        raise InputError("the response has no tokens after templating")
    limit = loaded.max_length
    if limit is not None and len(ids) > limit:
        if not truncate or tgt_pos[0] >= limit:
            truncatable = tgt_pos[0] < limit
            instruction = sum(tok.field == "instruction" for tok in ctx_tok)
            output = len(ctx_tok) - instruction + len(tgt_pos)
            # The field to shorten: the instruction when the prompt alone leaves no room for
            # the response, else whichever of the two holds more tokens.
            field = ("instruction" if not truncatable or instruction >= output
                     else "output")
            raise ContextTooLongError(tokens=len(ids), limit=limit, model=loaded.name,
                                      truncatable=truncatable, field=field)
        ids = ids[:limit]
        tgt_pos = [p for p in tgt_pos if p < limit]
        keep = [i for i, p in enumerate(ctx_pos) if p < limit]
        ctx_pos = [ctx_pos[i] for i in keep]
        ctx_tok = [ctx_tok[i] for i in keep]
    if tgt_pos[0] == 0:
        raise InputError("the response starts at the first token; the template gives no prompt")
    return Encoded(tuple(ids), tuple(ctx_pos), tuple(ctx_tok), tuple(tgt_pos))


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients for the duration; both restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def decoder(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (hidden states out, no LM head)."""
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if body is None:
        body = model.get_decoder()
    return body


def lm_head(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hidden rows (R, D) -> logits (R, V), including the post-processing some models apply."""
    head = model.get_output_embeddings()
    config = model.config
    scale = getattr(config, "logit_scale", None)
    cap = getattr(config, "final_logit_softcapping", None)

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        logits = head(hidden)
        if isinstance(scale, (int, float)) and scale != 1:
            logits = logits * scale
        if isinstance(cap, (int, float)) and cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return apply


def hidden_states(
    model: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Last hidden states (B, T, D) from input embeddings, with no logits computed."""
    out = decoder(model)(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                         use_cache=False)
    return out.last_hidden_state


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when both tokenizers map text to the same ids (vocabulary and pre-tokenization)."""
    if a is b:
        return True
    try:
        return json.loads(a.backend_tokenizer.to_str()) == json.loads(b.backend_tokenizer.to_str())
    except AttributeError:
        return a.get_vocab() == b.get_vocab()
