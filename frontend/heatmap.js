// Token heatmaps: the instruction drawn once per quantity, each token coloured by its value,
// flagged confounders outlined. Tokens are focusable (one tab stop per heatmap, arrow keys
// inside it) and show their numbers on hover and focus.

import { chars, isBlank, isSpace } from "./prune.js";
import { h, num } from "./dom.js";

// ColorBrewer Blues (sequential) and PuOr (diverging): both safe for the common forms of
// colour blindness. PuOr runs orange (low score: the student attends, the teacher does not)
// through white to purple.
const RAMPS = {
  saliency: ["#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b"],
  score: ["#b35806", "#f1a340", "#f7f7f7", "#998ec3", "#542788"],
};

export const KINDS = {
  teacher: { ramp: "saliency", title: "Teacher saliency",
    help: "how much the teacher's loss depends on each token (normalised 0–1)" },
  student: { ramp: "saliency", title: "Student saliency",
    help: "the same for the student" },
  score: { ramp: "score", title: "Teacher − student (score)",
    help: "normalised difference; low = the student attends where the teacher does not" },
};

const hex = (c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16));

/** The colour of a value in [0, 1] on a ramp, and a text colour readable on it. */
export function colour(value, ramp) {
  const stops = RAMPS[ramp].map(hex);
  const x = Math.min(1, Math.max(0, Number.isFinite(value) ? value : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const rgb = stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
  const [r, g, b] = rgb.map((c) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  const luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b;
  return { background: `rgb(${rgb.join(",")})`, color: luminance < 0.3 ? "#fff" : "#111" };
}

export function gradientCss(ramp) {
  return `linear-gradient(to right, ${RAMPS[ramp].join(", ")})`;
}

// ---------------------------------------------------------------------------- tooltip

let tip = null;

function tooltip() {
  if (!tip) {
    tip = h("div", { id: "token-tip", role: "tooltip", class: "tip", hidden: true });
    document.body.append(tip);
  }
  return tip;
}

function describe(el) {
  const d = el.dataset;
  const flagged = el.classList.contains("confounder");
  return [
    h("strong", {}, JSON.stringify(d.text)),
    h("span", {}, `teacher ${num(Number(d.teacher))}`),
    h("span", {}, `student ${num(Number(d.student))}`),
    h("span", {}, `score ${num(Number(d.score))}`),
    h("span", { class: flagged ? "tip-flag" : "" }, flagged ? "confounder" : "not flagged"),
  ];
}

export function showTip(el) {
  const box = tooltip();
  box.replaceChildren(...describe(el));
  box.hidden = false;
  const r = el.getBoundingClientRect();
  const width = box.offsetWidth;
  const left = Math.max(4, Math.min(window.innerWidth - width - 4, r.left + window.scrollX));
  box.style.left = `${left}px`;
  box.style.top = `${r.bottom + window.scrollY + 6}px`;
  el.setAttribute("aria-describedby", "token-tip");
}

export function hideTip(el) {
  if (tip) tip.hidden = true;
  if (el) el.removeAttribute("aria-describedby");
}

function onKey(event) {
  const el = event.target;
  if (!el.classList.contains("tok")) return;
  const all = [...el.closest(".heatmap").querySelectorAll(".tok")];
  const i = all.indexOf(el);
  const next = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1,
    Home: 0, End: all.length - 1 }[event.key];
  if (event.key === "Escape") { hideTip(el); return; }
  if (next === undefined || next < 0 || next >= all.length) return;
  event.preventDefault();
  el.tabIndex = -1;
  all[next].tabIndex = 0;
  all[next].focus();
}

// ---------------------------------------------------------------------------- heatmap

/** Leading and trailing whitespace of a code-point array: [lead, core, trail] as strings. */
function trim(cps) {
  let s = 0;
  let e = cps.length;
  while (s < e && isSpace(cps[s])) s += 1;
  while (e > s && isSpace(cps[e - 1])) e -= 1;
  return [cps.slice(0, s).join(""), cps.slice(s, e).join(""), cps.slice(e).join("")];
}

/**
 * The text with its tokens coloured by `kind` (teacher, student or score). Text between
 * tokens (template gaps, spaces) is drawn plain. `truth` marks ground-truth distractor
 * spans, when the example has them; `focus` the spans a corpus report pointed at.
 *
 * Only a token's visible core is coloured: its leading and trailing whitespace (" How") is
 * drawn plain beside the box, so a line wraps before the word and never inside its box, and
 * a whitespace-only token (" ", "\n") is plain text, never a sliver. Pieces of one word
 * ("muff", "ins") touch, with no padding between them (.join-prev/.join-next).
 */
export function heatmap(text, tokens, kind, { flags, truth = [], focus = [], label } = {}) {
  const cps = chars(text);
  const info = KINDS[kind];
  const box = h("div", {
    class: "heatmap", role: "group", dataset: { kind },
    "aria-label": `${label || info.title}; arrow keys move between tokens`,
    onkeydown: onKey,
  });
  const order = tokens.map((t, i) => i).sort((a, b) => tokens[a].start - tokens[b].start);
  let at = 0;
  let previous = null; // the last token box, while nothing has been drawn after it
  const plain = (part) => {
    if (!part) return;
    box.append(part);
    previous = null;
  };
  for (const i of order) {
    const t = tokens[i];
    if (t.start > at) plain(cps.slice(at, t.start).join(""));
    // Tokens may share characters (byte pieces of one emoji): each character is drawn once.
    const own = cps.slice(Math.max(at, t.start), t.end);
    at = Math.max(at, t.end);
    // The server never flags a whitespace-only token; it has nothing to colour either.
    if (isBlank(cps.slice(t.start, t.end))) {
      plain(own.join(""));
      continue;
    }
    const [lead, core, trail] = trim(own);
    plain(lead);
    const inTruth = truth.some(([s, e]) => t.start < e && s < t.end);
    const inFocus = focus.some(([s, e]) => t.start < e && s < t.end);
    const { background, color } = colour(t[kind], info.ramp);
    // A token left with no characters of its own stays as a thin focusable mark.
    const el = h("span", {
      class: `tok${inTruth ? " truth" : ""}${inFocus ? " focus" : ""}`,
      tabindex: "-1",
      style: { background, color },
      dataset: { i: String(i), text: t.text, teacher: String(t.teacher),
        student: String(t.student), score: String(t.score) },
      onmouseenter: (e) => showTip(e.currentTarget),
      onmouseleave: (e) => { if (document.activeElement !== e.currentTarget) hideTip(e.currentTarget); },
      onfocus: (e) => showTip(e.currentTarget),
      onblur: (e) => hideTip(e.currentTarget),
    }, core);
    if (previous && core) {
      previous.classList.add("join-next");
      el.classList.add("join-prev");
    }
    box.append(el);
    previous = core ? el : null;
    plain(trail);
  }
  if (at < cps.length) plain(cps.slice(at).join(""));
  const first = box.querySelector(".tok");
  if (first) first.tabIndex = 0;
  setFlags(box, flags);
  return box;
}

/** Outline the tokens flagged now, without redrawing the heatmap. */
export function setFlags(box, flags) {
  const all = [...box.querySelectorAll(".tok")];
  for (const el of all) el.classList.toggle("confounder", Boolean(flags[Number(el.dataset.i)]));
  // A flagged piece of a word whose neighbour is not flagged closes its frame on that side
  // (.cut-l/.cut-r); between two flagged pieces the frame stays open, around the word.
  all.forEach((el, k) => {
    const flagged = el.classList.contains("confounder");
    el.classList.toggle("cut-l", flagged && el.classList.contains("join-prev") &&
      !all[k - 1].classList.contains("confounder"));
    el.classList.toggle("cut-r", flagged && el.classList.contains("join-next") &&
      !all[k + 1].classList.contains("confounder"));
  });
}

/**
 * A colour key for one ramp, with the outline and ground-truth marks explained. The record
 * view draws the threshold on the score key (.legend-cut) as it moves.
 */
export function legend(kind, { truth = false, focus = false } = {}) {
  const info = KINDS[kind];
  const bar = h("span", { class: "legend-bar", style: { background: gradientCss(info.ramp) },
    "aria-hidden": "true" });
  const low = kind === "score" ? "0 student-led" : "0 low";
  const high = kind === "score" ? "1 teacher-led" : "1 high";
  return h("div", { class: "legend", "aria-label": `${info.title}: ${info.help}` },
    h("span", { class: "legend-scale" }, h("span", {}, low), bar, h("span", {}, high)),
    kind === "score" ? h("span", { class: "legend-item" },
      h("span", { class: "tok confounder sample" }, "word"), " flagged confounder") : null,
    truth ? h("span", { class: "legend-item" },
      h("span", { class: "tok truth sample" }, "word"), " known distractor") : null,
    focus ? h("span", { class: "legend-item" },
      h("span", { class: "tok focus sample" }, "word"), " the report's example") : null);
}
