"""Splitting a response into 2 or 3 segments at sentence or step boundaries.

For response-level detection, segment k is predicted from the instruction plus segments
before k. Boundaries sit on the whitespace before a new sentence or line, so each later
segment starts with that whitespace, which is how BPE tokenizers attach it to the next word.
"""

from __future__ import annotations

import re

Span = tuple[int, int]
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n\s*")
_ANY_SPACE = re.compile(r"\s+")


def split_response(output: str, segments: int) -> list[Span]:
    """Split `output` into at most `segments` character spans covering all of it.

    Cut points are the sentence or line boundaries closest to equal shares of the text;
    a response with no such boundary falls back to word boundaries, and one with no
    whitespace at all stays whole.
    """
    if segments < 1:
        raise ValueError("segments must be >= 1")
    body = output.rstrip()
    candidates = [m.start() for m in _SENTENCE_END.finditer(body) if 0 < m.start() < len(body)]
    if len(candidates) < segments - 1:
        candidates = [m.start() for m in _ANY_SPACE.finditer(body) if 0 < m.start() < len(body)]
    cuts: list[int] = []
    for k in range(1, segments):
        goal = len(body) * k / segments
        free = [c for c in candidates if c not in cuts and (not cuts or c > cuts[-1])]
        if not free:
            break
        cuts.append(min(free, key=lambda c: abs(c - goal)))
    bounds = [0, *cuts, len(output)]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
