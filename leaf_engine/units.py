"""Words, sentences, and token values pooled onto them. Needs numpy only.

Pruning removes whole words, whatever the tokenizer. A *word* is a run of letters, digits or
underscores, joined by apostrophes or hyphens ("don't", "well-known"), or a number with its
separators, an optional leading currency sign or minus, and a trailing percent sign ("1,000",
"12.5", "$5", "-3", "50%"). Every other visible character is *punctuation*, a unit of one
character that is never flagged, so "Tom has 12 apples." pruned of "12 apples" keeps its ".".
Words and punctuation together are the *pieces* of a text; whitespace belongs to neither.

A word's saliency is the root mean square of the gradient norms of the tokens it overlaps:

    g(w) = sqrt( (1/|T_w|) * sum_{i in T_w} ||dL/de(x_i)||^2 )

that is, the L2 norm of the stacked gradients of its tokens divided by sqrt(|T_w|). The plain
L2 norm grows like sqrt(|T_w|), so a tokenizer that splits "2024" into four digits would make
it look twice as salient as one that keeps it whole; the root mean square does not depend on
the split when the pieces are equally salient, and equals the token's own norm for a word of
one token. (The norm of the mean gradient would need the full gradient vectors, and it
shrinks with the split when the pieces' gradients point different ways: the bias flips.)
A token that overlaps several pieces counts toward each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from leaf_engine.records import ContextToken

Span = tuple[int, int]
Pool = Literal["rms", "sum"]

_PIECE = re.compile(
    r"(?:[$€£¥]|(?<!\w)-(?=\d))?"  # a currency sign, or the minus of a negative number
    r"\w+(?:(?:['’-]|(?<=\d)[.,](?=\d))\w+)*"  # joined by ' or -, or 1,000 / 12.5 separators
    r"%?"
    r"|[^\w\s]"  # any other visible character: punctuation, one piece each
)
_SENTENCE = re.compile(r"[^\s].*?(?:[.!?](?=\s|$)|\n|$)", re.S)
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


def pieces(text: str) -> list[Span]:
    """The words and punctuation characters of `text`, as character spans, in order."""
    return [m.span() for m in _PIECE.finditer(text)]


def sentences(text: str) -> list[Span]:
    """Sentences of `text`: up to a terminal mark followed by space, a newline, or the end."""
    return [m.span() for m in _SENTENCE.finditer(text)]


def is_word(text: str) -> bool:
    """Whether a piece (or token) holds a letter or digit: only those are ever flagged."""
    return _LETTER_OR_DIGIT.search(text) is not None


def spans_of(texts: Mapping[str, str], unit: Literal["word", "sentence"]
             ) -> tuple[ContextToken, ...]:
    """Every piece (unit word) or sentence of each field's text, field by field."""
    find = pieces if unit == "word" else sentences
    return tuple(ContextToken(field, start, end)  # type: ignore[arg-type]
                 for field, text in texts.items() for start, end in find(text))


def members(
    tokens: Sequence[ContextToken], units: Sequence[ContextToken], texts: Mapping[str, str]
) -> list[list[int]]:
    """For each unit, the indices of the tokens that share a visible character with it."""
    owner: dict[str, np.ndarray] = {}
    for field, text in texts.items():
        owner[field] = np.full(len(text), -1, dtype=np.int64)
    for k, unit in enumerate(units):
        owner[unit.field][unit.start : unit.end] = k
    out: list[list[int]] = [[] for _ in units]
    for i, tok in enumerate(tokens):
        text = texts[tok.field]
        hit = {int(k) for p, k in enumerate(owner[tok.field][tok.start : tok.end], tok.start)
               if k >= 0 and not text[p].isspace()}
        for k in sorted(hit):
            out[k].append(i)
    return out


def pool(values: np.ndarray, groups: Sequence[Sequence[int]], how: Pool) -> np.ndarray:
    """Per group, the root mean square (saliency) or the sum (surprisal: -log p of a word is
    the sum over its tokens) of `values`. NaN values are skipped; a group with none is NaN."""
    out = np.full(len(groups), np.nan, dtype=np.float64)
    for k, idx in enumerate(groups):
        v = values[list(idx)]
        v = v[np.isfinite(v)]
        if v.size:
            out[k] = float(np.sqrt(np.mean(v**2))) if how == "rms" else float(v.sum())
    return out


def to_words(
    tokens: Sequence[ContextToken], values: np.ndarray, texts: Mapping[str, str], how: Pool, *,
    words: Sequence[ContextToken] | None = None,
) -> tuple[tuple[ContextToken, ...], np.ndarray]:
    """Per-token `values` pooled onto `words` (default: the pieces `tokens` cover). A word
    no token reaches gets NaN."""
    if words is None:
        every = spans_of(texts, "word")
        words = tuple(w for w, g in zip(every, members(tokens, every, texts), strict=True) if g)
    return tuple(words), pool(values, members(tokens, words, texts), how)


def words_cut(text: str, cuts: Sequence[Span]) -> list[str]:
    """The words of `text` that a cut starts or ends strictly inside, in text order."""
    out = []
    for start, end in pieces(text):
        if is_word(text[start:end]) and any(start < p < end for a, b in cuts for p in (a, b)):
            out.append(text[start:end])
    return out
