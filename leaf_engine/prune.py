"""Turning flagged tokens into spans, and spans into counterfactual prompts.

Removal is by character offsets. The only other change is a whitespace tidy-up at each
cut: when a span is removed, the whitespace run right after it is dropped if whitespace (or
the start of the text) already precedes the cut; the whitespace run right before it is
dropped if the cut reaches the end of the text, and the spaces right before it (not line
breaks) if closing punctuation follows, so "Tom has 12 apples." pruned of "12 apples" reads
"Tom has." So for every span (s, e) the pruned text is `text[:s'] + text[e':]` with
`text[s':s]` and `text[e:e']` whitespace only.
"""

from __future__ import annotations

from collections.abc import Sequence

Span = tuple[int, int]


def find_spans(
    text: str, offsets: Sequence[tuple[int, int]], flags: Sequence[bool]
) -> list[Span]:
    """Contiguous runs of flagged tokens, as character spans of `text`.

    A run continues across anything that is only whitespace (unflagged whitespace tokens
    included) and ends at the first unflagged token with visible text.
    """
    spans: list[Span] = []
    current: list[int] | None = None
    for (start, end), flagged in sorted(zip(offsets, flags, strict=True)):
        if flagged:
            if current is not None and not text[current[1] : start].strip():
                current[1] = max(current[1], end)
            else:
                if current is not None:
                    spans.append((current[0], current[1]))
                current = [start, end]
        elif current is not None and text[start:end].strip():
            spans.append((current[0], current[1]))
            current = None
    if current is not None:
        spans.append((current[0], current[1]))
    return spans


_CLOSING = frozenset(".,;:!?)]}")  # punctuation that leans on the word before it


def _widen(text: str, span: Span, floor: int = 0) -> Span:
    """The span plus the whitespace the tidy-up removes with it, never reaching left of
    `floor` (the end of the previous cut)."""
    start, end = span
    if start == 0 or text[start - 1].isspace():
        while end < len(text) and text[end].isspace():
            end += 1
    if end == len(text):
        while start > floor and text[start - 1].isspace():
            start -= 1
    elif text[end] in _CLOSING:
        while start > floor and text[start - 1] in " \t":
            start -= 1
    return start, end


def remove_spans(text: str, spans: Sequence[Span]) -> str:
    """`text` without any of `spans` (collective pruning), whitespace tidied at each cut."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out = text
    # Right to left keeps earlier offsets valid; no tidy-up reaches into an earlier span.
    for i in range(len(merged) - 1, -1, -1):
        start, end = merged[i]
        s, e = _widen(out, (start, end), merged[i - 1][1] if i else 0)
        out = out[:s] + out[e:]
    return out


def span_pruned(text: str, spans: Sequence[Span]) -> list[str]:
    """One counterfactual per span (span pruning, the paper's choice)."""
    return [remove_spans(text, [span]) for span in spans]
