"""A prompt over a model's context: the error carries its figures, the field to shorten and
whether cutting the response would help, so callers word it without reading its message."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from leaf_engine.errors import ContextTooLongError, LeafError
from leaf_engine.models import LoadedModel, load_model
from tests import tiny

LIMIT = 24


@pytest.fixture(scope="module")
def short(model_dir: Path, bpe_tok) -> LoadedModel:
    path = tiny.save_pair(model_dir, "llama", bpe_tok, positions=LIMIT, seed=9)
    return load_model(str(path), device="cpu")


def _too_long(loaded: LoadedModel, instruction: str, output: str, *,
              truncate: bool = False) -> ContextTooLongError:
    with pytest.raises(ContextTooLongError) as caught:
        loaded.encode(instruction, output, truncate=truncate)
    return caught.value


def test_a_long_response_names_the_output_and_can_be_cut(short: LoadedModel) -> None:
    err = _too_long(short, "Ann has 7 pens.", "The answer is 12. " * 10)
    assert (err.field, err.truncatable, err.limit, err.model) == ("output", True, LIMIT,
                                                                  short.name)
    assert err.tokens > LIMIT and err.user_fault
    assert str(err) == f"example is {err.tokens} tokens, more than {short.name}'s context of 24"
    assert "--" not in str(err)  # the CLI adds the flag that helps; the service has none


def test_a_long_instruction_names_the_instruction(short: LoadedModel) -> None:
    err = _too_long(short, "Ann has 7 pens. " * 10, "12")
    assert (err.field, err.truncatable) == ("instruction", False)
    # Cutting the response cannot help a prompt that is too long on its own.
    cut = _too_long(short, "Ann has 7 pens. " * 10, "12", truncate=True)
    assert (cut.field, cut.truncatable) == ("instruction", False)


def test_it_survives_pickling() -> None:
    err = ContextTooLongError(tokens=300, limit=256, model="m", truncatable=True,
                              field="output")
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, LeafError) and str(again) == str(err)
    assert (again.tokens, again.limit, again.model, again.truncatable, again.field) == (
        300, 256, "m", True, "output")
