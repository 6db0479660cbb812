from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from leaf_engine.prune import find_spans, remove_spans, span_pruned

TEXT = "Ann has 7 pens. The sky is blue. How many pens?"


def _tokens(text: str) -> list[tuple[int, int]]:
    # words and the whitespace between them, as a BPE tokenizer with space tokens would give
    return [m.span() for m in re.finditer(r"\S+|\s+", text)]


def _flags(text: str, words: set[str]) -> list[bool]:
    return [text[s:e] in words for s, e in _tokens(text)]


def test_runs_span_across_whitespace_only() -> None:
    spans = find_spans(TEXT, _tokens(TEXT), _flags(TEXT, {"The", "sky", "is", "blue.", "7"}))
    assert [TEXT[s:e] for s, e in spans] == ["7", "The sky is blue."]


def test_unflagged_visible_token_breaks_a_run() -> None:
    spans = find_spans(TEXT, _tokens(TEXT), _flags(TEXT, {"Ann", "7"}))
    assert [TEXT[s:e] for s, e in spans] == ["Ann", "7"]


def test_whitespace_gap_between_tokens_without_space_tokens() -> None:
    words = [m.span() for m in re.finditer(r"\S+", TEXT)]  # word-level tokenizer: no space tokens
    flags = [TEXT[s:e] in {"sky", "is"} for s, e in words]
    assert [TEXT[s:e] for s, e in find_spans(TEXT, words, flags)] == ["sky is"]


def test_span_and_collective_pruning() -> None:
    spans = [(8, 9), (16, 32)]  # "7", "The sky is blue."
    assert span_pruned(TEXT, spans) == ["Ann has pens. The sky is blue. How many pens?",
                                        "Ann has 7 pens. How many pens?"]
    assert remove_spans(TEXT, spans) == "Ann has pens. How many pens?"
    assert remove_spans(TEXT, []) == TEXT
    assert remove_spans(TEXT, [(0, 4)]) == "has 7 pens. The sky is blue. How many pens?"
    assert remove_spans(TEXT, [(32, len(TEXT))]) == "Ann has 7 pens. The sky is blue."


def test_closing_punctuation_keeps_its_place() -> None:
    text = "Tom has 12 apples. He gives 5 to Ann, twice (daily)."
    assert remove_spans(text, [(8, 17)]) == "Tom has. He gives 5 to Ann, twice (daily)."
    assert remove_spans(text, [(33, 36)]) == "Tom has 12 apples. He gives 5 to, twice (daily)."
    assert remove_spans(text, [(45, 50)]) == "Tom has 12 apples. He gives 5 to Ann, twice ()."
    # Line breaks before a cut stay: only spaces lean on the next word.
    assert remove_spans("Tom has\n12.", [(8, 10)]) == "Tom has\n."


def test_a_tidy_up_never_reaches_into_an_earlier_cut() -> None:
    # The cut of "b" would drop the spaces before it, but "a " is a cut of its own.
    assert remove_spans("a  b.", [(0, 2), (3, 4)]) == "."
    assert remove_spans("x a  b", [(2, 4), (5, 6)]) == "x"


def test_collective_cut_after_an_end_of_text_cut() -> None:
    # Cutting "b" at the end also takes the whitespace before it, including span (2, 3).
    assert remove_spans("a   b", [(2, 3), (4, 5)]) == "a"


@given(st.text(alphabet="ab \n", max_size=30), st.data())
def test_collective_pruning_never_fails(text: str, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.tuples(st.integers(0, len(text)), st.integers(0, len(text)))
                              .map(sorted), max_size=4))
    pruned = remove_spans(text, [(a, b) for a, b in cuts if a < b])
    assert len(pruned) <= len(text)


@given(st.text(alphabet="ab \n.", max_size=40), st.data())
def test_pruned_is_text_minus_span_plus_whitespace(text: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, len(text)))
    pruned = remove_spans(text, [(start, end)])
    # pruned == text[:s'] + text[e':] where s' <= start, e' >= end, and the extra is whitespace
    matches = [
        (s2, e2) for s2 in range(start + 1) for e2 in range(end, len(text) + 1)
        if text[:s2] + text[e2:] == pruned
        and not text[s2:start].strip() and not text[end:e2].strip()
    ]
    assert matches
