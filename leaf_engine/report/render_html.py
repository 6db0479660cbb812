"""report.html: one self-contained page (inline CSS and SVG, no script, nothing fetched).

Everything from the records is user data and is escaped on the way in (`e`), including
what ends up inside SVG labels (`svg` escapes its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from leaf_engine.report import svg
from leaf_engine.report.render_md import params_line, pct
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

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;padding:0 1rem;
color:#111827;line-height:1.45}
h1{font-size:1.5rem}h2{margin-top:2.5rem;border-bottom:1px solid #e5e7eb}h3{margin-top:1.8rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border-bottom:1px solid #e5e7eb;padding:.25rem .5rem;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code{background:#f3f4f6;padding:0 .2rem;border-radius:3px}
mark{background:#fde68a;padding:0 .1rem}
.ex{color:#374151;font-size:.8rem}.muted{color:#6b7280}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem}
.grew{color:#c2410c}.shrank{color:#1d4ed8}
"""


def e(text: object) -> str:
    return escape(str(text), quote=True)


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _fixed(v: Verified | None) -> str:
    return "–" if v is None else f"{pct(v.share)} ({v.fixed}/{v.checked})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]],
           numeric: Sequence[int] = ()) -> str:
    """A table from already-escaped cells; columns in `numeric` align right."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _example(ex: Example) -> str:
    where = ", response" if ex.field == "output" else ""
    return (f'<div class="ex"><code>{e(ex.id)}</code> (line {ex.line}{where}): '
            f"{e(ex.before)}<mark>{e(ex.flag)}</mark>{e(ex.after)}</div>")


def render_html(report: Report) -> str:
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width,initial-scale=1">',
             f"<title>LeaF confounder report: {e(report.source)}</title>",
             f"<style>{CSS}</style></head><body>",
             "<h1>LeaF confounder report</h1>",
             f"<p><code>{e(report.source)}</code>: {report.records:,} records; detection: "
             f"{e(params_line(report.params))}"
             + ("" if report.params_consistent else
                " <em>(parameters differ between records)</em>") + ".</p>"]
    for segment in report.segments:
        parts.append(_segment(segment))
    if report.comparison is not None:
        parts.append(_comparison(report.comparison, report.source))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _segment(s: Segment) -> str:
    title = "Instruction" if s.segment == 0 else s.label.capitalize()
    out = [f"<h2>{e(title)}</h2>",
           f"<p>{s.prompts:,} prompts, {s.tokens:,} tokens scored; <strong>{s.flags:,} "
           f"flags</strong> in {s.spans:,} spans ({s.flags / s.prompts:.2f} per prompt); "
           f"{pct(s.prompts_flagged / s.prompts)} of prompts flagged.</p>"]
    if s.verified is not None:
        out.append(f"<p>Verified: pruning a flagged span let both models answer correctly in "
                   f"<strong>{pct(s.verified.share)}</strong> of the {s.verified.checked:,} "
                   "checked prompts.</p>")
    p = s.positions
    total_tokens, total_flags = sum(p.tokens) or 1, sum(p.flags) or 1
    bins = [f"{100 * b // p.bins}%" for b in range(p.bins)]
    out.append('<div class="charts">')
    out.append(svg.hbars([c.label for c in s.categories], [c.flags for c in s.categories],
                         lambda v: f"{v:,.0f}", "Flags by category"))
    out.append(svg.columns(bins, [f / total_flags for f in p.flags],
                           [t / total_tokens for t in p.tokens],
                           "Flags by relative position in the prompt",
                           ("share of flags", "share of tokens")))
    out.append(svg.lines([t.tau for t in s.tau_curve],
                         [("flags per prompt", [t.flags_per_prompt for t in s.tau_curve])],
                         "Flags per prompt against tau", "tau", "flags per prompt"))
    out.append("</div>")
    out += ["<h3>Most flagged patterns</h3>",
            "<p>Normalised (lower case, numbers as <code>&lt;num&gt;</code>):</p>",
            _patterns(s.patterns), "<p>Literal:</p>", _patterns(s.literal_patterns)]
    out.append("<h3>Flags by category</h3>")
    out.append(_table(
        ["category", "flags", "share of flags", "per prompt", "share of prompts",
         "mean score", "fixed by pruning", "most flagged"],
        [[e(c.label), f"{c.flags:,}", pct(c.share_of_flags), f"{c.flags_per_prompt:.2f}",
          pct(c.share_of_prompts), _num(c.mean_score), _fixed(c.verified),
          ", ".join(f"<code>{e(t.text)}</code> {t.count}" for t in c.top[:5])]
         for c in s.categories], numeric=(1, 2, 3, 4, 5)))
    out.append("<p>In context (each flag with a neighbour either side, normalised):</p><ul>"
               + "".join(f"<li>{e(c.label)}: " + ", ".join(
                   f"<code>{e(t.text)}</code> {t.count}" for t in c.contexts[:5]) + "</li>"
                         for c in s.categories if c.contexts) + "</ul>")
    out.append("<h3>Where flags fall</h3>")
    out.append(_table(
        ["position", "flags", "share of flags", "share of tokens", "flag rate"],
        [[f"{100 * b // p.bins}–{100 * (b + 1) // p.bins}%", f"{p.flags[b]:,}",
          pct(p.flags[b] / total_flags), pct(p.tokens[b] / total_tokens),
          pct(p.flag_rate[b])] for b in range(p.bins)], numeric=(1, 2, 3, 4)))
    out.append("<h3>Flags against tau</h3><p class=muted>Visible tokens with score &le; tau, "
               "from the stored scores (no model call).</p>")
    out.append(_table(["tau", "flags", "per prompt", "prompts flagged"],
                      [[f"{t.tau:.2f}", f"{t.flags:,}", f"{t.flags_per_prompt:.2f}",
                        pct(t.share_of_prompts)] for t in s.tau_curve], numeric=(0, 1, 2, 3)))
    return "\n".join(out)


def _patterns(table: Patterns) -> str:
    if not table.rows:
        return "<p class=muted>(no flagged spans)</p>"
    rows = [[str(i), f"<code>{e(p.pattern)}</code>",
             f"{p.count:,}" + (f" ±{p.count_error:,}" if p.count_error else ""),
             f"{p.prompts:,}", pct(p.share_of_prompts), _num(p.mean_score),
             _fixed(p.verified), "".join(_example(x) for x in p.examples)]
            for i, p in enumerate(table.rows, start=1)]
    html = _table(["#", "pattern", "spans", "prompts", "share of prompts", "mean score",
                   "fixed by pruning", "examples"], rows, numeric=(0, 2, 3, 4, 5))
    if table.truncated:
        html += (f"<p class=muted>More than {table.capacity:,} distinct patterns: the least "
                 "frequent were evicted, so counts are upper bounds (± the error).</p>")
    return html


def _comparison(c: Comparison, source: str) -> str:
    out = ["<h2>Comparison</h2>",
           f"<p>This run (<code>{e(source)}</code>) against <code>{e(c.against)}</code> "
           f"({c.records_against:,} records; detection: {e(params_line(c.params_against))})."
           " A positive change means more in this run; shares are of prompts.</p>"]
    out += [_segment_comparison(s) for s in c.segments]
    return "\n".join(out)


def _segment_comparison(s: SegmentComparison) -> str:
    name = "Instruction" if s.segment == 0 else f"Response segment {s.segment + 1}"
    out = [f"<h3>{e(name)}</h3>",
           f"<p>Flags per prompt: {s.flags_per_prompt:.2f} here, "
           f"{s.flags_per_prompt_against:.2f} there.</p>", '<div class="charts">',
           svg.diverging([CATEGORY_LABELS[c.key] for c in s.categories],
                         [c.per_prompt - c.per_prompt_against for c in s.categories],
                         lambda v: f"{v:+.2f}", "Change in flags per prompt, by category"),
           svg.lines([t.tau for t in s.tau_curve],
                     [("this run", [t.flags_per_prompt for t in s.tau_curve]),
                      ("against", [t.flags_per_prompt_against for t in s.tau_curve])],
                     "Flags per prompt against tau, both runs", "tau", "flags per prompt"),
           "</div>"]
    out.append(_table(
        ["category", "flags per prompt", "against", "share of prompts", "against", "change"],
        [[e(CATEGORY_LABELS[c.key]), f"{c.per_prompt:.2f}", f"{c.per_prompt_against:.2f}",
          pct(c.share), pct(c.share_against), _delta(c)] for c in s.categories],
        numeric=(1, 2, 3, 4)))
    for title, changes in (("Patterns that changed most (normalised)", s.patterns),
                           ("Literal patterns that changed most", s.literal_patterns)):
        out.append(f"<p>{title}:</p>")
        out.append(_table(
            ["pattern", "spans", "against", "share of prompts", "against", "change"],
            [[f"<code>{e(c.key)}</code>", f"{c.count:,}", f"{c.count_against:,}",
              pct(c.share), pct(c.share_against), _delta(c)] for c in changes],
            numeric=(1, 2, 3, 4)) if changes else "<p class=muted>(no change)</p>")
    return "\n".join(out)


def _delta(c: Change) -> str:
    kind = "grew" if c.delta_share > 0 else "shrank" if c.delta_share < 0 else ""
    return f'<span class="{kind}">{100 * c.delta_share:+.1f} pp</span>'
