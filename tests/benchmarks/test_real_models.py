"""The pieces of benchmarks/real_models.py that decide its figures, on tiny models: the
pilot's ground truth and scoring, and the models it derives from SmolLM2."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from benchmarks.real_models import derived_model, first_number, pilot_problems, without_spans
from leaf_engine.models import load_model
from tests import tiny


def test_pilot_spans_are_exactly_the_distracting_sentences() -> None:
    problems = pilot_problems(40, seed=3)
    assert {p["distractors"] for p in problems} == {0, 1, 2, 3}
    for p in problems:
        text = p["instruction"]
        assert len(p["distractor_spans"]) == p["distractors"]
        name = re.match(r"How many \w+ does (\w+) have\?", text.rsplit(". ", 1)[-1])
        assert name is not None, text
        clean = without_spans(text, p["distractor_spans"])
        # What is left is the one fact and the question about it.
        fact, question = clean.split(". ")
        assert fact.startswith(f"{name[1]} has {p['answer']} ") and question.startswith("How")
        assert first_number(clean) == p["answer"]
        for start, end in p["distractor_spans"]:
            assert text[end - 1] == "." and f"{name[1]} has {p['answer']} " not in text[start:end]


def test_first_number_is_the_answer_of_a_look_up() -> None:
    assert first_number("Eve has 14 marbles.\n1") == "14"
    assert first_number("He is 11 years old. Finn has 5") == "11"
    assert first_number("none") is None


def test_derived_models_keep_chosen_layers_or_take_a_new_shape(tmp_path: Path, bpe_tok) -> None:
    source = load_model(str(tiny.save_pair(tmp_path, "llama", bpe_tok, layers=3, seed=5)),
                        device="cpu")
    cut = load_model(str(derived_model(source, tmp_path / "cut", keep=[0, 2])), device="cpu")
    assert cut.model.config.num_hidden_layers == 2
    theirs, ours = source.model.model.layers, cut.model.model.layers
    for new, old in ((0, 0), (1, 2)):
        for a, b in zip(ours[new].parameters(), theirs[old].parameters(), strict=True):
            assert torch.equal(a, b)
    assert torch.equal(cut.model.get_input_embeddings().weight,
                       source.model.get_input_embeddings().weight)
    assert cut.tokenizer.get_vocab() == source.tokenizer.get_vocab()
    wide = load_model(str(derived_model(source, tmp_path / "wide",
                                        shape={"hidden_size": 64, "num_hidden_layers": 4})),
                      device="cpu")
    assert (wide.model.config.hidden_size, wide.model.config.num_hidden_layers) == (64, 4)
