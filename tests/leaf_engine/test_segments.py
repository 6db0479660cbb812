from __future__ import annotations

import itertools

import pytest

from leaf_engine.segments import split_response

STEPS = "Step 1: add 7 and 5. Step 2: that is 12. Step 3: so Ann has 12 pens. The answer is 12."


@pytest.mark.parametrize("n", [2, 3])
def test_segments_cover_the_output_at_sentence_boundaries(n: int) -> None:
    spans = split_response(STEPS, n)
    assert len(spans) == n
    assert spans[0][0] == 0 and spans[-1][1] == len(STEPS)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    for start, _ in spans[1:]:
        assert STEPS[start] == " " and STEPS[start - 1] in ".:"


def test_roughly_equal_shares() -> None:
    (a, b), (c, d) = split_response(STEPS, 2)
    assert abs((b - a) - (d - c)) < len(STEPS) / 3


def test_falls_back_to_words_and_keeps_unsplittable_whole() -> None:
    assert len(split_response("add seven and five to get twelve", 3)) == 3
    assert split_response("12", 2) == [(0, 2)]
    assert split_response("one\ntwo", 2) == [(0, 3), (3, 7)]
