"""report.md: the report as Markdown that reads in a terminal as well as in a pull request.

Text from the records (patterns, examples, file names) is user data: it goes into code
spans, whose fence is longer than any backtick run in it, with table pipes escaped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from leaf_engine.report.schema import (
    Change,
    Comparison,
    Example,
    Patterns,
    Report,
    Segment,
    SegmentComparison,
    Verified,
)
from leaf_engine.report.tokens import CATEGORY_LABELS

BAR_WIDTH = 30
_EIGHTHS = " ▏▎▍▌▋▊▉"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def code(text: str) -> str:
    """`text` as an inline code span that survives backticks, pipes and newlines."""
    text = " ".join(text.split()).replace("|", "\\|")
    if not text:
        return "(empty)"
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def plain(value: str) -> str:
    """Plain Markdown text: characters that would link, embed HTML, open code or end a
    table cell are escaped (intraword underscores, as in `min_gap`, format nothing)."""
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", " ".join(value.split()))


def bar(value: float, top: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of `width` characters at most, in eighths of a character."""
    if top <= 0 or value <= 0:
        return ""
    eighths = round(8 * width * min(value, top) / top)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def fixed(v: Verified | None) -> str:
    return "–" if v is None else f"{pct(v.share)} ({v.fixed}/{v.checked})"


def example(ex: Example) -> str:
    where = " (response)" if ex.field == "output" else ""
    return f"{code(ex.id)}{where} {code(ex.before + '⟦' + ex.flag + '⟧' + ex.after)}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def params_line(params: dict[str, object]) -> str:
    """Detection parameters in words (plain text; the caller escapes it)."""
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "unknown"


def render_markdown(report: Report) -> str:
    lines = ["# LeaF confounder report", ""]
    lines.append(f"{code(report.source)}: {report.records:,} records; detection: "
                 f"{plain(params_line(report.params))}"
                 + ("" if report.params_consistent else " (parameters differ between records)")
                 + ".")
    for segment in report.segments:
        lines += ["", *_segment(segment)]
    if report.comparison is not None:
        lines += ["", *_comparison(report.comparison, report.source)]
    return "\n".join(lines) + "\n"


def _segment(s: Segment) -> list[str]:
    title = "Instruction" if s.segment == 0 else s.label.capitalize()
    lines = [f"## {title}", ""]
    lines.append(f"{s.prompts:,} prompts, {s.tokens:,} tokens scored; **{s.flags:,} flags** in "
                 f"{s.spans:,} spans ({s.flags / s.prompts:.2f} per prompt); "
                 f"{pct(s.prompts_flagged / s.prompts)} of prompts flagged.")
    if s.verified is not None:
        lines.append(f"Verified: pruning a flagged span let both models answer correctly in "
                     f"**{pct(s.verified.share)}** of the {s.verified.checked:,} checked "
                     f"prompts.")
    lines += ["", "### Most flagged patterns", "",
              "Normalised (lower case, numbers as `<num>`):", "", *_patterns(s.patterns),
              "", "Literal:", "", *_patterns(s.literal_patterns)]
    lines += ["", "### Flags by category", ""]
    lines += table(
        ["category", "flags", "share of flags", "per prompt", "share of prompts", "mean score",
         "fixed by pruning", "most flagged"],
        [[c.label, f"{c.flags:,}", pct(c.share_of_flags), f"{c.flags_per_prompt:.2f}",
          pct(c.share_of_prompts), num(c.mean_score), fixed(c.verified),
          ", ".join(f"{code(t.text)} {t.count}" for t in c.top[:5])]
         for c in s.categories])
    lines += ["", "In context (each flag with a neighbour either side, normalised):", ""]
    lines += [f"- {c.label}: " + ", ".join(f"{code(t.text)} {t.count}" for t in c.contexts[:5])
              for c in s.categories if c.contexts]
    lines += ["", "### Where flags fall (relative position in the prompt)", "", "```text",
              f"{'position':<9} {'flags':>6} {'of flags':>8} {'of tokens':>9} {'rate':>6}"]
    p = s.positions
    total_tokens, total_flags = sum(p.tokens) or 1, sum(p.flags) or 1
    top_share = max(p.flags) / total_flags
    for b in range(p.bins):
        label = f"{100 * b // p.bins}–{100 * (b + 1) // p.bins}%"
        lines.append(f"{label:<9} {p.flags[b]:>6,} {pct(p.flags[b] / total_flags):>8} "
                     f"{pct(p.tokens[b] / total_tokens):>9} {pct(p.flag_rate[b]):>6} "
                     f"{bar(p.flags[b] / total_flags, top_share)}")
    lines += ["```", "", "### Flags against tau (from the stored scores)", "", "```text",
              f"{'tau':<5} {'flags':>8} {'per prompt':>10} {'prompts':>8}"]
    top_rate = max(t.flags_per_prompt for t in s.tau_curve)
    for t in s.tau_curve:
        lines.append(f"{t.tau:<5.2f} {t.flags:>8,} {t.flags_per_prompt:>10.2f} "
                     f"{pct(t.share_of_prompts):>8} {bar(t.flags_per_prompt, top_rate)}")
    lines.append("```")
    return lines


def _patterns(table_: Patterns) -> list[str]:
    if not table_.rows:
        return ["(no flagged spans)"]
    rows = [[str(i), code(p.pattern), _bounded(p.count, p.count_error),
             _bounded(p.prompts, p.prompts_error), pct(p.share_of_prompts), num(p.mean_score),
             fixed(p.verified), example(p.examples[0]) if p.examples else ""]
            for i, p in enumerate(table_.rows, start=1)]
    out = table(["#", "pattern", "spans", "prompts", "share of prompts", "mean score",
                 "fixed by pruning", "example"], rows)
    if table_.truncated:
        out += ["", f"(more than {table_.capacity:,} distinct patterns: the least frequent "
                    "were evicted, so counts are upper bounds, ±error shown)"]
    return out


def _bounded(count: int, error: int) -> str:
    return f"{count:,}" if not error else f"{count:,} ±{error:,}"


def _comparison(c: Comparison, source: str) -> list[str]:
    lines = ["## Comparison", "",
             f"This run ({code(source)}) against {code(c.against)} ({c.records_against:,} "
             f"records; detection: {plain(params_line(c.params_against))}). A positive change "
             "means more in this run; shares are of prompts."]
    for s in c.segments:
        lines += ["", *_segment_comparison(s)]
    return lines


def _segment_comparison(s: SegmentComparison) -> list[str]:
    name = "Instruction" if s.segment == 0 else f"Response segment {s.segment + 1}"
    lines = [f"### {name}", "",
             f"Flags per prompt: {s.flags_per_prompt:.2f} here, "
             f"{s.flags_per_prompt_against:.2f} there "
             f"({s.flags_per_prompt - s.flags_per_prompt_against:+.2f}).", ""]
    lines += table(["category", "flags per prompt", "against", "change", "share of prompts",
                    "against", "change"],
                   [[CATEGORY_LABELS[c.key], f"{c.per_prompt:.2f}", f"{c.per_prompt_against:.2f}",
                     f"{c.per_prompt - c.per_prompt_against:+.2f}", pct(c.share),
                     pct(c.share_against), _signed_pct(c.delta_share)]
                    for c in s.categories])
    for title, changes in (("Patterns that changed most (normalised)", s.patterns),
                           ("Literal patterns that changed most", s.literal_patterns)):
        lines += ["", f"{title}:", ""]
        lines += _changes(changes) if changes else ["(no change)"]
    lines += ["", "Flags per prompt against tau:", "", "```text",
              f"{'tau':<5} {'here':>6} {'there':>6} {'change':>7}"]
    for t in s.tau_curve:
        lines.append(f"{t.tau:<5.2f} {t.flags_per_prompt:>6.2f} "
                     f"{t.flags_per_prompt_against:>6.2f} "
                     f"{t.flags_per_prompt - t.flags_per_prompt_against:>+7.2f}")
    lines.append("```")
    return lines


def _changes(changes: Sequence[Change]) -> list[str]:
    return table(["pattern", "spans", "against", "share of prompts", "against", "change", ""],
                 [[code(c.key), f"{c.count:,}", f"{c.count_against:,}", pct(c.share),
                   pct(c.share_against), _signed_pct(c.delta_share),
                   "grew" if c.delta_share > 0 or (c.delta_share == 0 and c.per_prompt >
                                                   c.per_prompt_against) else "shrank"]
                  for c in changes])


def _signed_pct(x: float) -> str:
    return f"{100 * x:+.1f} pp"
