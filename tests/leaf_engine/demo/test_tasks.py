from __future__ import annotations

import re

import pytest

from leaf_engine.demo.tasks import NUMBERED, PLAIN, final_number, generate, vocabulary
from leaf_engine.demo.tokenizer import build_tokenizer


def test_ground_truth_spans_point_at_distractors_and_their_numbers() -> None:
    problems = generate("test", 300, seed=3)
    assert {p.distractors for p in problems} == {0, 1, 2}
    for p in problems:
        assert len(p.distractor_spans) == p.distractors
        sentences = [p.instruction[s:e] for s, e in p.distractor_spans]
        patterns = [re.escape(t).replace(r"\{n\}", r"\d+") for t in NUMBERED + PLAIN]
        for sentence in sentences:
            assert sentence.endswith(".")
            # every recorded sentence is one the generator's distractor templates can produce
            assert any(re.fullmatch(re.sub(r"\\\{\w+\\\}", r"\\w+", pat), sentence)
                       for pat in patterns), sentence
        for s, e in p.key_spans:
            assert p.instruction[s:e].isdigit()
            assert any(ds <= s and e <= de for ds, de in p.distractor_spans)
        # the story's own numbers and the answer are never a distractor's number
        a, b = re.findall(r"\d+", p.output)[:2]
        keys = {p.instruction[s:e] for s, e in p.key_spans}
        assert not keys & {a, b, p.answer}
        assert final_number(p.output) == p.answer
        removed = p.instruction
        for s, e in sorted(p.distractor_spans, reverse=True):
            removed = removed[:s] + removed[e + 1:]
        assert len(re.findall(r"\d+", removed)) == 2  # without distractors: the two operands


def test_splits_are_seeded_and_disjoint_streams() -> None:
    assert generate("train", 20, seed=1) == generate("train", 20, seed=1)
    assert generate("train", 20, seed=1) != generate("train", 20, seed=2)
    assert [p.instruction for p in generate("train", 50)] != \
        [p.instruction for p in generate("test", 50)]
    with pytest.raises(ValueError, match="split"):
        generate("dev", 1)


def test_distractor_controls() -> None:
    assert all(p.distractors == 2 for p in generate("test", 20, distractors=2))
    plain = generate("test", 50, distractors=2, numbered_share=0.0)
    assert all(p.key_spans == [] for p in plain)
    arithmetic = generate("test", 200)
    for p in arithmetic:
        a, op, b = re.match(r"(\d+) ([+-]) (\d+)", p.output).groups()
        assert int(p.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0


def test_tokenizer_covers_every_word_one_token_each() -> None:
    tok = build_tokenizer()
    assert tok.is_fast and tok.chat_template
    for p in generate("test", 200):
        ids = tok(p.instruction + " " + p.output, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
    assert len(set(vocabulary())) == len(vocabulary())
