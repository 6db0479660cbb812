"""What a flagged token or span is, in words: its category, its pattern keys, its snippet.

Categories are exclusive; a flagged token gets the first that applies, in this order:

1. `template`: the first or last visible token of a field of the scored context. The
   instruction's first and last token sit against the chat template's text (the user
   header before, the end of turn and assistant header after); at response level the
   earlier segments' first token follows the assistant header and their last one ends the
   context. A flag at such an edge may be about the position rather than the word.
2. `number`: contains a digit, or is an English number word ("seven", "hundred").
3. `punctuation`: no letter or digit at all.
4. `function`: a whole word in a fixed list of English function words (articles,
   pronouns, prepositions, conjunctions, auxiliaries, wh-words), any case.
5. `name`: starts with an upper-case letter (names and other capitalised words).
6. `other`: everything else.
"""

from __future__ import annotations

import re
from typing import Literal

Category = Literal["template", "number", "punctuation", "function", "name", "other"]
CATEGORIES: tuple[Category, ...] = ("number", "name", "function", "punctuation", "template",
                                    "other")
CATEGORY_LABELS: dict[Category, str] = {
    "number": "numbers",
    "name": "names / capitalised words",
    "function": "function words",
    "punctuation": "punctuation",
    "template": "template-adjacent",
    "other": "other",
}


def _words(*groups: str) -> frozenset[str]:
    return frozenset(word for group in groups for word in group.split())


NUMBER_WORDS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy "
    "eighty ninety hundred thousand million billion half twice dozen"
)
FUNCTION_WORDS = _words(
    # articles and determiners
    "a an the this that these those each every some any no all both either neither such "
    "much many more most few less least other another own same "
    # pronouns
    "i me my mine myself you your yours yourself yourselves he him his himself she her hers "
    "herself it its itself we us our ours ourselves they them their theirs themselves one "
    "who whom whose which what "
    # prepositions
    "of in on at by for with about against between into through during before after above "
    "below to from up down out off over under again via per than like as "
    # conjunctions and particles
    "and or but nor so yet if then else because while although though unless until since "
    "whether not also too very just only "
    # auxiliaries and modals
    "be is am are was were been being have has had having do does did doing will would "
    "shall should can could may might must "
    # wh-words and adverbs of place and time
    "how when where why there here now",
)
MAX_PATTERN_WORDS = 6  # a longer span's pattern is its first six words and an ellipsis
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def category(text: str, *, boundary: bool, whole_word: bool) -> Category:
    """The category of one flagged token. `boundary`: it is its field's first or last
    visible token; `whole_word`: no letter or digit touches it on either side."""
    word = text.strip()
    if boundary:
        return "template"
    lower = word.lower()
    if any(c.isdigit() for c in word) or (whole_word and lower in NUMBER_WORDS):
        return "number"
    if not any(c.isalnum() for c in word):
        return "punctuation"
    if whole_word and lower in FUNCTION_WORDS:
        return "function"
    if word[:1].isupper():
        return "name"
    return "other"


def is_whole_word(text: str, start: int, end: int) -> bool:
    """Whether text[start:end], less surrounding whitespace, is not part of a longer word."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return ((start == 0 or not text[start - 1].isalnum())
            and (end >= len(text) or not text[end].isalnum()))


def literal(text: str) -> str:
    """A span's literal pattern: whitespace collapsed, long spans cut to six words."""
    words = text.split()
    if len(words) > MAX_PATTERN_WORDS:
        return " ".join(words[:MAX_PATTERN_WORDS]) + " …"
    return " ".join(words)


def normalised(text: str) -> str:
    """A span's normalised pattern: the literal one in lower case, each number `<num>`."""
    return _NUMBER.sub("<num>", literal(text).lower())


def snippet(text: str, start: int, end: int, context: int) -> tuple[str, str, str]:
    """(before, flag, after): the flag and up to `context` characters either side, cut at
    whitespace where possible, an ellipsis marking a cut, whitespace collapsed."""
    lo, hi = max(0, start - context), min(len(text), end + context)
    before, after = text[lo:start], text[end:hi]
    if lo > 0:
        cut = before.find(" ")
        before = "…" + (before[cut + 1 :] if 0 <= cut < len(before) - 1 else before)
    if hi < len(text):
        cut = after.rfind(" ")
        after = (after[:cut] if cut > 0 else after) + "…"
    return _squash(before, keep_edges=True), _squash(text[start:end]), _squash(after,
                                                                            keep_edges=True)


def _squash(text: str, *, keep_edges: bool = False) -> str:
    out = " ".join(text.split())
    if keep_edges and out:
        out = (" " if text[:1].isspace() else "") + out + (" " if text[-1:].isspace() else "")
    return out
