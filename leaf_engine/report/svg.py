"""Small inline SVG charts, written by hand so the HTML report needs no plotting library
and no network. Every label is escaped here; callers pass plain text."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

FONT = "font-family:system-ui,sans-serif;font-size:11px"
COLORS = ("#2563eb", "#f97316", "#6b7280")


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" style="{FONT}"{extra}>'
            f"{escape(text)}</text>")


def _open(width: int, height: int, title: str) -> str:
    return (f'<svg width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f"<title>{escape(title)}</title>")


def hbars(labels: Sequence[str], values: Sequence[float], fmt: Callable[[float], str],
          title: str, width: int = 520) -> str:
    """One horizontal bar per label."""
    row, left, right = 22, 170, 70
    height = row * len(labels) + 10
    top = max(values, default=0) or 1
    parts = [_open(width, height, title)]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 5 + i * row
        w = (width - left - right) * value / top
        parts.append(_text(left - 6, y + 14, label, "end"))
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" '
                     f'fill="{COLORS[0]}"/>')
        parts.append(_text(left + w + 4, y + 14, fmt(value)))
    parts.append("</svg>")
    return "".join(parts)


def columns(labels: Sequence[str], values: Sequence[float], reference: Sequence[float],
            title: str, legend: tuple[str, str], width: int = 520, height: int = 200) -> str:
    """Columns for `values`, with `reference` (what to expect) as a tick on each."""
    left, bottom, top_pad = 40, 34, 22
    n = max(len(values), 1)
    plot_h = height - bottom - top_pad
    top = max([*values, *reference, 0]) or 1
    step = (width - left - 10) / n
    parts = [_open(width, height, title)]
    for frac in (0, 0.5, 1):
        y = top_pad + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
                     'stroke="#e5e7eb"/>')
        parts.append(_text(left - 4, y + 4, f"{100 * top * frac:.0f}%", "end"))
    for i, (label, value, ref) in enumerate(zip(labels, values, reference, strict=True)):
        x = left + i * step
        h = plot_h * value / top
        parts.append(f'<rect x="{x + 3:.1f}" y="{top_pad + plot_h - h:.1f}" '
                     f'width="{step - 6:.1f}" height="{h:.1f}" fill="{COLORS[0]}"/>')
        ry = top_pad + plot_h * (1 - ref / top)
        parts.append(f'<line x1="{x + 1:.1f}" y1="{ry:.1f}" x2="{x + step - 1:.1f}" '
                     f'y2="{ry:.1f}" stroke="{COLORS[1]}" stroke-width="2"/>')
        parts.append(_text(x + step / 2, height - bottom + 14, label, "middle"))
    parts.append(f'<rect x="{left}" y="4" width="10" height="10" fill="{COLORS[0]}"/>')
    parts.append(_text(left + 14, 13, legend[0]))
    parts.append(f'<line x1="{left + 160}" y1="9" x2="{left + 172}" y2="9" '
                 f'stroke="{COLORS[1]}" stroke-width="2"/>')
    parts.append(_text(left + 176, 13, legend[1]))
    parts.append("</svg>")
    return "".join(parts)


def lines(xs: Sequence[float], series: Sequence[tuple[str, Sequence[float]]], title: str,
          x_label: str, y_label: str, width: int = 520, height: int = 220) -> str:
    """One polyline with markers per series, over shared x values."""
    left, bottom, top_pad, right = 46, 36, 24, 14
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    x0, x1 = min(xs), max(xs)
    top = max((y for _, ys in series for y in ys), default=0) or 1

    def at(x: float, y: float) -> tuple[float, float]:
        fx = (x - x0) / (x1 - x0) if x1 > x0 else 0.5
        return left + plot_w * fx, top_pad + plot_h * (1 - y / top)

    parts = [_open(width, height, title)]
    for frac in (0, 0.5, 1):
        y = top_pad + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                     'stroke="#e5e7eb"/>')
        parts.append(_text(left - 4, y + 4, f"{top * frac:.2f}", "end"))
    for x in xs:
        px, _ = at(x, 0)
        parts.append(_text(px, height - bottom + 14, f"{x:g}", "middle"))
    parts.append(_text(left + plot_w / 2, height - 4, x_label, "middle"))
    parts.append(_text(4, 14, y_label))
    for k, (name, ys) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in (at(x, y) for x, y in
                                                              zip(xs, ys, strict=True)))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" '
                     'stroke-width="2"/>')
        for x, y in zip(xs, ys, strict=True):
            px, py = at(x, y)
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"/>')
        if len(series) > 1:
            lx = width - right - 150
            parts.append(f'<rect x="{lx}" y="{top_pad + 4 + 14 * k}" width="10" height="3" '
                         f'fill="{color}"/>')
            parts.append(_text(lx + 14, top_pad + 9 + 14 * k, name))
    parts.append("</svg>")
    return "".join(parts)


def diverging(labels: Sequence[str], deltas: Sequence[float], fmt: Callable[[float], str],
              title: str, width: int = 520) -> str:
    """Bars left (shrank) or right (grew) of a centre line."""
    row, left = 22, 170
    height = row * len(labels) + 10
    half = (width - left - 10) / 2
    mid = left + half
    top = max((abs(d) for d in deltas), default=0) or 1
    parts = [_open(width, height, title),
             f'<line x1="{mid:.1f}" y1="0" x2="{mid:.1f}" y2="{height}" stroke="#9ca3af"/>']
    for i, (label, delta) in enumerate(zip(labels, deltas, strict=True)):
        y = 5 + i * row
        w = (half - 50) * abs(delta) / top
        x = mid if delta >= 0 else mid - w
        color = COLORS[1] if delta > 0 else COLORS[0]
        parts.append(_text(left - 6, y + 14, label, "end"))
        parts.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" '
                     f'fill="{color}"/>')
        tx = mid + w + 4 if delta >= 0 else mid - w - 4
        parts.append(_text(tx, y + 14, fmt(delta), "start" if delta >= 0 else "end"))
    parts.append("</svg>")
    return "".join(parts)
