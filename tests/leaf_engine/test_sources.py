from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leaf_engine.errors import ModelLoadError
from leaf_engine.sources import locate, tokenizer_fingerprint
from tests import tiny
from tests.tiny_gguf import write_llama_gguf


@pytest.fixture(scope="module")
def gguf_and_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Llama as a .gguf file, and its tokenizer saved as a Hugging Face directory."""
    root = tmp_path_factory.mktemp("sources")
    tok = tiny.bpe_tokenizer()
    model = tiny.build_model("llama", len(tok), seed=4)
    directory = root / "hf"
    tok.save_pretrained(directory)
    return write_llama_gguf(root / "tiny.gguf", model, tok), directory


def test_locate_tells_directories_gguf_files_and_hub_ids_apart(
        gguf_and_dir: tuple[Path, Path], tmp_path: Path) -> None:
    gguf, directory = gguf_and_dir
    assert locate(str(directory)).kind == "dir"
    found = locate(str(gguf))
    assert (found.kind, found.directory, found.gguf_file) == ("gguf", str(gguf.parent),
                                                              "tiny.gguf")
    assert locate("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        locate(str(fake))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"GGUX")
    with pytest.raises(ModelLoadError, match=r"not a \.gguf file"):
        locate(str(other))
    with pytest.raises(ModelLoadError, match="not found"):
        locate(str(tmp_path / "missing.gguf"))


def test_errors_name_the_model_not_its_path(tmp_path: Path) -> None:
    fake = tmp_path / "secret-dir" / "m.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"nope")
    for source in (str(fake), str(tmp_path / "secret-dir" / "missing")):
        with pytest.raises(ModelLoadError) as err:
            tokenizer_fingerprint(source, name="teacher-7b")
        assert "'teacher-7b'" in str(err.value) and "secret-dir" not in str(err.value)


def test_gguf_and_its_saved_tokenizer_share_a_fingerprint(
        gguf_and_dir: tuple[Path, Path], model_dir: Path) -> None:
    gguf, directory = gguf_and_dir
    print_gguf = tokenizer_fingerprint(str(gguf))
    assert print_gguf == tokenizer_fingerprint(str(directory)) == tokenizer_fingerprint(
        str(gguf))
    # Other vocabularies (word level; a smaller BPE) differ.
    words = model_dir / "words-tok"
    tiny.word_tokenizer().save_pretrained(words)
    smaller = model_dir / "bpe-200-tok"
    tiny.bpe_tokenizer(vocab_size=200).save_pretrained(smaller)
    prints = {print_gguf, tokenizer_fingerprint(str(words)), tokenizer_fingerprint(str(smaller))}
    assert len(prints) == 3


def test_fingerprint_without_tokenizer_json(gguf_and_dir: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    """vocab.json + merges.txt (a GPT-2 style directory) read as the same vocabulary."""
    _, directory = gguf_and_dir
    spec = json.loads((directory / "tokenizer.json").read_text())
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (legacy / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (legacy / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {
        str(t["id"]): {"content": t["content"], "special": t["special"]}
        for t in spec["added_tokens"]}}))
    assert tokenizer_fingerprint(str(legacy)) == tokenizer_fingerprint(str(directory))
    (legacy / "vocab.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        tokenizer_fingerprint(str(legacy))


def test_gguf_without_the_gguf_package_names_the_extra(
        gguf_and_dir: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # what `import gguf` sees uninstalled
    with pytest.raises(ModelLoadError, match=r"pip install 'leaf-focus\[gguf\]'"):
        tokenizer_fingerprint(str(gguf_and_dir[0]))


def test_sources_never_import_torch_or_transformers(gguf_and_dir: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    """The API process computes fingerprints: in a fresh interpreter, reading a directory,
    a GGUF file and a hub id from the (local) cache loads neither torch nor transformers."""
    gguf, directory = gguf_and_dir
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").write_text((directory / "tokenizer.json").read_text())
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    script = (
        "import sys\n"
        "from leaf_engine.errors import ModelLoadError\n"
        "from leaf_engine.sources import tokenizer_fingerprint as fp\n"
        f"a, b, c = fp({str(gguf)!r}), fp({str(directory)!r}), fp('org/tiny')\n"
        "assert a == b == c, (a, b, c)\n"
        "try:\n"
        "    fp('org/absent', name='absent')\n"
        "except ModelLoadError as err:\n"
        "    assert 'not in the local Hugging Face cache' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('an uncached hub id has no fingerprint')\n"
        "loaded = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).parents[2], timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_fingerprint(smollm2: Path) -> None:
    from leaf_engine.demo import demo_pair

    first = tokenizer_fingerprint(str(smollm2))
    assert first == tokenizer_fingerprint(str(smollm2))
    assert first not in {tokenizer_fingerprint(p) for p in demo_pair()}
