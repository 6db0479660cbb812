"""Where a model comes from (a Hugging Face directory, a `.gguf` file, a hub id) and what its
tokenizer is, without torch or transformers.

The service's API process uses this to refuse a job that cannot succeed (a distillation
between models with different vocabularies) before any worker loads a model;
`leaf_engine.models.load_model` uses `locate` to decide how to load one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from leaf_engine.errors import ModelLoadError

GGUF_EXTRA = "pip install 'leaf-focus[gguf]'"
GGUF_MAGIC = b"GGUF"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# llama.cpp's tokenizer.ggml.model -> the tokenizers model transformers builds from it
# (`transformers.integrations.gguf`): sentencepiece vocabularies become BPE with merges.
_GGUF_KINDS = {"gpt2": "bpe", "llama": "bpe", "gemma4": "bpe", "t5": "unigram"}
# llama.cpp's token types: control tokens are special, user-defined ones plain added tokens.
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4
_SCORE_DIGITS = 4  # unigram scores: GGUF stores float32, tokenizer.json float64

SourceKind = Literal["dir", "gguf", "hub"]


@dataclass(frozen=True)
class ModelSource:
    """A located model: `location` is a resolved directory, a resolved `.gguf` file, or a hub id."""

    kind: SourceKind
    location: str

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"

    @property
    def directory(self) -> str:
        """What `from_pretrained` is given: the directory (a GGUF file's own), or the hub id."""
        return str(Path(self.location).parent) if self.kind == "gguf" else self.location

    @property
    def gguf_file(self) -> str | None:
        """The GGUF file's name inside `directory`, for `from_pretrained(gguf_file=...)`."""
        return Path(self.location).name if self.kind == "gguf" else None


def label(source: str, name: str | None = None) -> str:
    """How messages name a model: by its given name, never by a path, when it has one."""
    return f"'{name}'" if name is not None else f"'{source}'"


def locate(source: str, *, name: str | None = None) -> ModelSource:
    """Decide what `source` is. A missing path that cannot be a hub id, a file that is not
    GGUF, or a path that is neither raises `ModelLoadError` naming the model by `name`."""
    who = label(source, name)
    path = Path(source).expanduser()
    if path.is_dir():
        return ModelSource("dir", str(path.resolve()))
    if path.is_file():
        if _has_gguf_header(path):
            return ModelSource("gguf", str(path.resolve()))
        if path.suffix.lower() == ".gguf":
            raise ModelLoadError(f"model {who} is not a GGUF file: it does not start with "
                                 "the GGUF header")
        raise ModelLoadError(f"model {who} is a file, but not a .gguf file; give a model "
                             "directory, a hub id or a .gguf file")
    if path.exists():
        raise ModelLoadError(f"model {who} is neither a directory nor a .gguf file")
    if (_HUB_ID.match(source) and not source.startswith((".", "/", "~"))
            and not source.lower().endswith(".gguf")):
        return ModelSource("hub", source)
    if name is not None:
        raise ModelLoadError(f"model {who} not found: its path does not exist")
    raise ModelLoadError(f"model path not found: {source}")


def _has_gguf_header(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def require_gguf(who: str) -> Any:
    """The `gguf` package, or a `ModelLoadError` that says which extra installs it."""
    try:
        import gguf
    except ImportError:
        raise ModelLoadError(f"model {who} is a GGUF file, and reading GGUF files needs the "
                             f"gguf package: {GGUF_EXTRA}") from None
    return gguf


def gguf_architecture(path: str) -> str | None:
    """`general.architecture` of a GGUF file (None if unreadable); reads metadata only."""
    try:
        fields = _gguf_fields(path, "x")
    except ModelLoadError:
        return None
    value = fields.get("general.architecture")
    return value if isinstance(value, str) else None


def _gguf_fields(path: str, who: str) -> dict[str, Any]:
    """A GGUF file's metadata values by key. The reader maps the file and parses only the
    headers here; no tensor data is read."""
    gguf = require_gguf(who)
    try:
        reader = gguf.GGUFReader(path, "r")
        return {key: field.contents() for key, field in reader.fields.items()}
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the GGUF file of model {who}: "
                             f"{_first_line(err)}") from None


# ---------------------------------------------------------------------------- tokenizers


def tokenizer_fingerprint(source: str, *, name: str | None = None) -> str:
    """A hash of the vocabulary a model's tokenizer maps text to: its kind (BPE, unigram,
    word level), its base tokens by id, the BPE merges (unigram scores), and which of those
    ids are special or added tokens.

    A `.gguf` file and a directory its tokenizer was saved to get the same fingerprint: both
    are reduced to that vocabulary first. Left out, because the two formats do not spell them
    alike: the normalizer and pre-tokenizer (a GGUF file names its pre-tokenizer, tokenizer.json
    spells it out) and added tokens beyond the base vocabulary (transformers adds defaults such
    as '<|endoftext|>' when it builds a tokenizer from a GGUF file). Two tokenizers that differ
    only there, which is rare, share a fingerprint; `leaf_engine.models.same_tokenizer` on the
    loaded tokenizers still tells them apart. A hub id is read from the local Hugging Face
    cache only. Raises `ModelLoadError`.
    """
    located = locate(source, name=name)
    who = label(source, name)
    if located.kind == "gguf":
        vocab = _gguf_vocabulary(_gguf_fields(located.location, who), who)
    else:
        directory = (Path(located.location) if located.kind == "dir"
                     else _cached_snapshot(located.location, who))
        vocab = _directory_vocabulary(directory, who)
    blob = json.dumps(vocab, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _vocabulary(kind: str, tokens: dict[int, str], merges: list[str], special: set[int],
                added: set[int], scores: dict[int, float] | None = None) -> dict[str, Any]:
    """The comparable form; `special` and `added` count only ids of the base vocabulary."""
    return {"kind": kind, "tokens": sorted(tokens.items()), "merges": merges,
            "special": sorted(special & tokens.keys()),
            "added": sorted((added - special) & tokens.keys()),
            "scores": None if scores is None else sorted(
                (i, round(s, _SCORE_DIGITS)) for i, s in scores.items())}


def _gguf_vocabulary(fields: dict[str, Any], who: str) -> dict[str, Any]:
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ModelLoadError(f"the GGUF file of model {who} has no tokenizer (no "
                             "tokenizer.ggml.tokens)")
    kind = str(fields.get("tokenizer.ggml.model", "unknown"))
    if kind == "gpt2":
        # transformers respells a byte-level token written in plain text into the byte
        # alphabet the merges use; do the same, so a saved copy compares equal.
        alphabet = _byte_alphabet()
        letters = set(alphabet.values())
        tokens = [t if set(t) <= letters else "".join(alphabet[b] for b in t.encode("utf-8"))
                  for t in tokens]
    types = fields.get("tokenizer.ggml.token_type") or []
    scores = fields.get("tokenizer.ggml.scores")
    normal_kind = _GGUF_KINDS.get(kind, kind)
    return _vocabulary(
        normal_kind, dict(enumerate(tokens)), list(fields.get("tokenizer.ggml.merges") or []),
        {i for i, t in enumerate(types) if t == _GGUF_CONTROL},
        {i for i, t in enumerate(types) if t in (_GGUF_CONTROL, _GGUF_USER_DEFINED)},
        dict(enumerate(scores)) if normal_kind == "unigram" and scores else None)


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _directory_vocabulary(directory: Path, who: str) -> dict[str, Any]:
    spec_file = directory / "tokenizer.json"
    if spec_file.is_file():
        return _tokenizer_json_vocabulary(_read_json(spec_file, who), who)
    special, added = _configured_added_tokens(directory, who)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    if vocab_file.is_file():
        vocab = _read_json(vocab_file, who)
        merges = ([line for line in merges_file.read_text(encoding="utf-8").splitlines()
                   if line and not line.startswith("#version")]
                  if merges_file.is_file() else [])
        return _vocabulary("bpe" if merges else "wordlevel", {int(i): t for t, i in vocab.items()},
                           merges, special, added)
    model_file = directory / "tokenizer.model"
    if model_file.is_file():
        # A sentencepiece model: its protobuf is compared byte for byte.
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
        return _vocabulary(f"sentencepiece:{digest}", {}, [], special, added)
    raise ModelLoadError(f"model {who} has no tokenizer files (tokenizer.json, vocab.json or "
                         "tokenizer.model)")


def _tokenizer_json_vocabulary(spec: dict[str, Any], who: str) -> dict[str, Any]:
    model = spec.get("model") or {}
    kind = str(model.get("type", "unknown")).lower()
    vocab = model.get("vocab")
    scores: dict[int, float] | None = None
    if isinstance(vocab, dict):
        tokens = {int(i): str(t) for t, i in vocab.items()}
    elif isinstance(vocab, list):  # unigram: [token, score] pairs in id order
        tokens = {i: str(pair[0]) for i, pair in enumerate(vocab)}
        scores = {i: float(pair[1]) for i, pair in enumerate(vocab)}
    else:
        raise ModelLoadError(f"the tokenizer.json of model {who} has no vocabulary")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    added_tokens = spec.get("added_tokens") or []
    return _vocabulary(kind, tokens, merges,
                       {int(t["id"]) for t in added_tokens if t.get("special")},
                       {int(t["id"]) for t in added_tokens}, scores)


def _configured_added_tokens(directory: Path, who: str) -> tuple[set[int], set[int]]:
    """(special ids, added ids) as tokenizer_config.json and added_tokens.json list them, for
    directories without a tokenizer.json."""
    special: set[int] = set()
    added: set[int] = set()
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        for key, token in (_read_json(config_file, who).get("added_tokens_decoder") or {}).items():
            added.add(int(key))
            if token.get("special"):
                special.add(int(key))
    added_file = directory / "added_tokens.json"
    if added_file.is_file():
        added.update(int(i) for i in _read_json(added_file, who).values())
    return special, added


def _cached_snapshot(repo_id: str, who: str) -> Path:
    """The local Hugging Face cache's snapshot of `repo_id` that holds its tokenizer."""
    from huggingface_hub import try_to_load_from_cache

    for file in ("tokenizer.json", "vocab.json", "tokenizer.model"):
        found = try_to_load_from_cache(repo_id, file)
        if isinstance(found, str):
            return Path(found).parent
    raise ModelLoadError(f"the tokenizer of model {who} is not in the local Hugging Face "
                         "cache; download the model first")


def _read_json(path: Path, who: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the {path.name} of model {who}: "
                             f"{_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    if isinstance(err, OSError):  # its text names the file's path; the reason is enough
        return err.strerror or type(err).__name__
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
