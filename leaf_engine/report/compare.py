"""Two runs side by side (`leaf report A --against B`): which patterns and categories grew
or shrank, per prompt, between B (the other run) and A (this one).

Shares are per prompt, so runs of different sizes compare. Patterns are looked up in the
full bounded tables, not only in the top rows: a pattern in one run's top that the other
run flags rarely shows the other run's real (small) count, not a zero.
"""

from __future__ import annotations

from leaf_engine.report.aggregate import PatternTally, ReportBuilder, SegmentTally
from leaf_engine.report.counter import BoundedCounter
from leaf_engine.report.schema import Change, Comparison, SegmentComparison, TauChange
from leaf_engine.report.tokens import CATEGORIES

CANDIDATES = 4  # patterns considered: this many times `top` from each run's table


def compare(this: ReportBuilder, other: ReportBuilder, *, against: str) -> Comparison:
    """How `this` run differs from `other`, for every segment both have."""
    top = this.config.top
    segments = tuple(
        _segment(this.segments[k], other.segments[k], top)
        for k in sorted(set(this.segments) & set(other.segments))
    )
    return Comparison(against=against, records_against=other.records,
                      params_against=other.params or {}, segments=segments)


def _change(key: str, count: int, count_against: int, prompts: int, prompts_against: int,
            total: int, total_against: int) -> Change:
    share, share_against = prompts / total, prompts_against / total_against
    return Change(key=key, count=count, count_against=count_against,
                  per_prompt=count / total, per_prompt_against=count_against / total_against,
                  share=share, share_against=share_against,
                  delta_share=share - share_against)


def _segment(a: SegmentTally, b: SegmentTally, top: int) -> SegmentComparison:
    categories = tuple(
        _change(c, a.category_flags[c], b.category_flags[c], a.category_prompts[c],
                b.category_prompts[c], a.prompts, b.prompts)
        for c in CATEGORIES
    )
    curve_a, curve_b = a.result().tau_curve, b.result().tau_curve
    return SegmentComparison(
        segment=a.segment, prompts=a.prompts, prompts_against=b.prompts,
        flags_per_prompt=a.flags / a.prompts, flags_per_prompt_against=b.flags / b.prompts,
        categories=categories,
        patterns=_patterns(a.patterns, b.patterns, a.prompts, b.prompts, top),
        literal_patterns=_patterns(a.literal_patterns, b.literal_patterns, a.prompts,
                                   b.prompts, top),
        tau_curve=tuple(TauChange(p.tau, p.flags_per_prompt, q.flags_per_prompt)
                        for p, q in zip(curve_a, curve_b, strict=True)),
    )


def _patterns(a: BoundedCounter[PatternTally], b: BoundedCounter[PatternTally],
              total: int, total_against: int, top: int) -> tuple[Change, ...]:
    keys = {k for k, _ in a.top(CANDIDATES * top)} | {k for k, _ in b.top(CANDIDATES * top)}
    changes = []
    for key in keys:
        mine, theirs = a.get(key), b.get(key)
        change = _change(key, mine.count if mine else 0, theirs.count if theirs else 0,
                         mine.prompts if mine else 0, theirs.prompts if theirs else 0,
                         total, total_against)
        if change.delta_share or change.per_prompt != change.per_prompt_against:
            changes.append(change)
    changes.sort(key=lambda c: (-abs(c.delta_share), -abs(c.per_prompt - c.per_prompt_against),
                                c.key))
    return tuple(changes[:top])
