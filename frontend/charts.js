// Small inline-SVG charts: lines (sensitivity, loss) and bars (histograms). Series differ
// by colour (Okabe–Ito, safe for colour blindness) and by dash, so they read in grey too.

import { h, svg } from "./dom.js";

export const SERIES = [
  { colour: "#0072B2", dash: "" },
  { colour: "#D55E00", dash: "5 3" },
  { colour: "#009E73", dash: "2 2" },
  { colour: "#CC79A7", dash: "8 3 2 3" },
];

const PAD = { left: 44, right: 12, top: 10, bottom: 34 };

/** A top for the y axis whose quarter is a round step (1, 2, 5 or 10 times a power of ten;
 * 2.5 only where it cannot put a fraction on a count axis). */
function niceMax(value, integer = false) {
  if (!(value > 0)) return integer ? 4 : 1;
  const raw = integer ? Math.max(1, value / 4) : value / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const steps = power === 1 ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
  for (const m of steps) if (m * power >= raw) return 4 * m * power;
  return 40 * power;
}

const label = (v) => (Math.abs(v) >= 1000 || Number.isInteger(v) ? String(Math.round(v))
  : v.toPrecision(2).replace(/\.?0+$/, ""));

function frame(width, height, title, [x0, x1], [y0, y1], xLabel, yLabel, xSteps = 4) {
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": title, preserveAspectRatio: "xMidYMid meet" }, svg("title", {}, title));
  const w = width - PAD.left - PAD.right;
  const hgt = height - PAD.top - PAD.bottom;
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0 || 1)) * w;
  const sy = (y) => PAD.top + hgt - ((y - y0) / (y1 - y0 || 1)) * hgt;
  const axes = svg("g", { class: "axes" });
  for (let k = 0; k <= 4; k += 1) {
    const y = y0 + ((y1 - y0) * k) / 4;
    axes.append(svg("line", { x1: PAD.left, x2: PAD.left + w, y1: sy(y), y2: sy(y),
      class: "grid" }));
    axes.append(svg("text", { x: PAD.left - 4, y: sy(y) + 3, "text-anchor": "end" }, label(y)));
  }
  for (let k = 0; k <= xSteps; k += 1) {
    const x = x0 + ((x1 - x0) * k) / xSteps;
    axes.append(svg("text", { x: sx(x), y: PAD.top + hgt + 13, "text-anchor": "middle" },
      label(x)));
  }
  axes.append(svg("line", { x1: PAD.left, x2: PAD.left + w, y1: sy(y0), y2: sy(y0),
    class: "axis" }));
  axes.append(svg("text", { x: PAD.left + w / 2, y: height - 4, "text-anchor": "middle",
    class: "axis-label" }, xLabel));
  axes.append(svg("text", { x: 10, y: PAD.top + hgt / 2, "text-anchor": "middle",
    class: "axis-label", transform: `rotate(-90 10 ${PAD.top + hgt / 2})` }, yLabel));
  root.append(axes);
  return { root, sx, sy, w, hgt };
}

/**
 * series: [{label, points: [[x, y], ...]}]; marker: an x to draw a vertical line at;
 * integer: the y values are counts (whole-number ticks); xSteps: intervals between x ticks
 * (5 puts round ticks on a 0–0.5 axis).
 * Answers a <figure> with the chart and a key.
 */
export function lineChart({ series, title, xLabel, yLabel, marker = null, xDomain = null,
  integer = false, width = 360, height = 190, xSteps = 4 }) {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const x0 = xDomain ? xDomain[0] : Math.min(...xs, 0);
  const x1 = xDomain ? xDomain[1] : Math.max(...xs, 1);
  const yMin = Math.min(0, ...ys);
  const { root, sx, sy, hgt } = frame(width, height, title, [x0, x1],
    [yMin, niceMax(Math.max(...ys, 0), integer)], xLabel, yLabel, xSteps);
  series.forEach((s, k) => {
    const style = SERIES[k % SERIES.length];
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`)
      .join("");
    root.append(svg("path", { d, fill: "none", stroke: style.colour, "stroke-width": 2,
      "stroke-dasharray": style.dash || null, class: "series", "data-series": s.label }));
    if (s.points.length === 1) {
      root.append(svg("circle", { cx: sx(s.points[0][0]), cy: sy(s.points[0][1]), r: 3,
        fill: style.colour }));
    }
  });
  if (marker !== null && Number.isFinite(marker)) {
    root.append(svg("line", { x1: sx(marker), x2: sx(marker), y1: PAD.top, y2: PAD.top + hgt,
      class: "marker" }));
  }
  return figure(root, series.map((s) => s.label), title);
}

/** bars: [{label, value}]: a histogram or a ranking. */
export function barChart({ bars, title, xLabel, yLabel, integer = false, width = 360,
  height = 190 }) {
  const n = Math.max(bars.length, 1);
  const top = niceMax(Math.max(...bars.map((b) => b.value), 0), integer);
  const { root, sy, w } = frame(width, height, title, [0, 0], [0, top], xLabel, yLabel);
  // The frame's x ticks suit numbers; a bar chart labels each bar instead.
  for (const t of root.querySelectorAll(".axes text:not(.axis-label)")) {
    if (t.getAttribute("text-anchor") === "middle") t.remove();
  }
  const slot = w / n;
  bars.forEach((b, i) => {
    const x = PAD.left + i * slot + slot * 0.15;
    const y = sy(b.value);
    root.append(svg("rect", { x, y, width: slot * 0.7, height: sy(0) - y,
      fill: SERIES[0].colour, class: "bar" }, svg("title", {}, `${b.label}: ${b.value}`)));
    root.append(svg("text", { x: x + slot * 0.35, y: sy(0) + 13, "text-anchor": "middle" },
      b.label));
  });
  return figure(root, [], title);
}

function figure(chart, labels, title) {
  const key = labels.length > 1 ? h("div", { class: "chart-key" }, labels.map((text, k) => {
    const style = SERIES[k % SERIES.length];
    const swatch = svg("svg", { width: 24, height: 8, "aria-hidden": "true" },
      svg("line", { x1: 0, x2: 24, y1: 4, y2: 4, stroke: style.colour, "stroke-width": 2,
        "stroke-dasharray": style.dash || null }));
    return h("span", {}, swatch, ` ${text}`);
  })) : null;
  return h("figure", { class: "figure" }, chart, key, h("figcaption", {}, title));
}
