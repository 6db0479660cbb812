"""The corpus report as typed results; `Report.to_dict()` is report.json (docs/report.md).

Shares are fractions in [0, 1]; a share is None where its denominator is 0 (no prompt was
verified, no token fell in a bin). Counts of patterns and top tokens are exact unless their
table says `truncated`; then `count - count_error <= true count <= count`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SCHEMA = "leaf.report/1"
TAUS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


@dataclass(frozen=True)
class Verified:
    """Prompts whose flagged spans were verified (`leaf detect --verify`), and of those the
    prompts where pruning one such span let the teacher and the student answer correctly."""

    checked: int
    fixed: int
    share: float | None  # fixed / checked


@dataclass(frozen=True)
class Example:
    """A flag in context: `before + flag + after` is a snippet of the record's `field`."""

    id: str
    line: int  # 1-based line of the record in its JSONL file
    field: str  # "instruction", or "output" (earlier response segments) at response level
    start: int  # the flag's characters in that field
    end: int
    before: str
    flag: str
    after: str


@dataclass(frozen=True)
class Pattern:
    """A flagged span's text (literal, or normalised) and what came with it."""

    pattern: str
    count: int  # flagged spans with this pattern
    count_error: int
    prompts: int  # prompts with at least one such span
    prompts_error: int
    share_of_prompts: float
    mean_score: float | None  # mean over spans of the mean score of their flagged tokens
    verified: Verified | None
    examples: tuple[Example, ...]


@dataclass(frozen=True)
class Patterns:
    rows: tuple[Pattern, ...]  # the top ones, most counted first
    held: int  # distinct patterns the bounded table holds
    truncated: bool  # some were evicted: counts are bounds (see `count_error`)
    capacity: int


@dataclass(frozen=True)
class TokenCount:
    text: str  # a flagged token's text, whitespace stripped
    count: int
    count_error: int


@dataclass(frozen=True)
class CategoryRow:
    category: str
    label: str
    flags: int  # flagged tokens in this category
    share_of_flags: float | None
    flags_per_prompt: float
    prompts: int  # prompts with at least one
    share_of_prompts: float
    mean_score: float | None
    verified: Verified | None  # over prompts with a verified span holding such a flag
    top: tuple[TokenCount, ...]  # its most flagged tokens
    contexts: tuple[TokenCount, ...]  # flags with a neighbour either side: "is ⟦<num>⟧ years"


@dataclass(frozen=True)
class Positions:
    """Visible tokens and flags by relative position: bin = floor(bins · i / n) for the
    i-th of a context's n visible tokens (0-based)."""

    bins: int
    tokens: tuple[int, ...]
    flags: tuple[int, ...]
    flag_rate: tuple[float | None, ...]  # flags / tokens per bin


@dataclass(frozen=True)
class TauPoint:
    """Tokens that a threshold tau would flag: visible tokens with score <= tau."""

    tau: float
    flags: int
    flags_per_prompt: float
    prompts_flagged: int
    share_of_prompts: float


@dataclass(frozen=True)
class Segment:
    """Everything for one context: segment 0 is the instruction; segment k >= 1 (response
    level) is the instruction plus the response's first k segments, predicting the next."""

    segment: int
    label: str
    prompts: int
    tokens: int  # visible scored tokens
    flags: int  # flagged tokens, as the records say (the run's own threshold)
    spans: int
    prompts_flagged: int
    verified: Verified | None
    categories: tuple[CategoryRow, ...]
    positions: Positions
    tau_curve: tuple[TauPoint, ...]
    patterns: Patterns  # normalised: lower case, numbers as <num>
    literal_patterns: Patterns


@dataclass(frozen=True)
class Change:
    """One pattern or category in this run against the other. `count` is spans (patterns)
    or flagged tokens (categories); `share` is the share of prompts with at least one."""

    key: str
    count: int
    count_against: int
    per_prompt: float
    per_prompt_against: float
    share: float
    share_against: float
    delta_share: float  # share - share_against: > 0 grew in this run


@dataclass(frozen=True)
class TauChange:
    tau: float
    flags_per_prompt: float
    flags_per_prompt_against: float


@dataclass(frozen=True)
class SegmentComparison:
    segment: int
    prompts: int
    prompts_against: int
    flags_per_prompt: float
    flags_per_prompt_against: float
    categories: tuple[Change, ...]  # every category, in the report's order
    patterns: tuple[Change, ...]  # normalised; the largest changes in share first
    literal_patterns: tuple[Change, ...]
    tau_curve: tuple[TauChange, ...]


@dataclass(frozen=True)
class Comparison:
    against: str  # the other run's records file
    records_against: int
    params_against: dict[str, Any]
    segments: tuple[SegmentComparison, ...]  # segments present in both runs


@dataclass(frozen=True)
class Report:
    schema: str
    source: str  # the records file
    records: int
    params: dict[str, Any]  # the first record's detection parameters
    params_consistent: bool  # every record had the same parameters
    segments: tuple[Segment, ...]
    comparison: Comparison | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
