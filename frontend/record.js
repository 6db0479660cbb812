// One detection record on the page: three heatmaps, the flag count, before/after pruned
// prompts, response-level views, a sensitivity chart, and copy/download. `update` applies
// a new threshold from the scores alone.

import { copyText, fill, h, num, saveFile } from "./dom.js";
import { lineChart } from "./charts.js";
import { agrees, applyThreshold, derivable, sensitivity, thresholdOf } from "./flags.js";
import { KINDS, heatmap, legend, setFlags } from "./heatmap.js";
import { chars } from "./prune.js";
import { flaggedCount, nouns, unitOf, unitsLine } from "./units.js";

const TAUS = Array.from({ length: 51 }, (_, i) => i / 50);

/** The text with removed code points struck through (<del>). */
export function struck(text, removed) {
  const cps = chars(text);
  const out = h("div", { class: "before" });
  let i = 0;
  while (i < cps.length) {
    let j = i;
    while (j < cps.length && removed[j] === removed[i]) j += 1;
    const part = cps.slice(i, j).join("");
    out.append(removed[i] ? h("del", {}, part) : part);
    i = j;
  }
  return out;
}

function thresholdText(t) {
  return t.mode === "percentile" ? `bottom ${t.percentile}% (score ≤ 0.5)` : `score ≤ ${num(t.tau, 2)}`;
}

function beforeAfter(record, derived, focus) {
  const cps = chars(record.instruction);
  const list = h("ol", { class: "before-after" });
  if (!derived.spans.length) {
    return h("p", { class: "empty" }, "Nothing is flagged at this threshold: the pruned prompt ",
      "is the original.");
  }
  const focused = (span) => Boolean(span && focus && focus.segment === 0 &&
    focus.field === "instruction" && span[0] === focus.start && span[1] === focus.end);
  const pair = (title, kind, removed, pruned, span) => h("li", {
    class: `cf ${kind}${focused(span) ? " focus" : ""}`,
    dataset: span ? { span: span.join(",") } : {} },
  h("h4", {}, title),
  h("div", { class: "cf-pair" },
    h("div", {}, h("span", { class: "cf-label" }, "original"), struck(record.instruction, removed)),
    h("div", {}, h("span", { class: "cf-label" }, "pruned"),
      h("div", { class: "after pruned-text" }, pruned))));
  list.append(pair(`All ${derived.spans.length} span${derived.spans.length > 1 ? "s" : ""} ` +
    "removed (collective)", "collective", derived.cuts.collective, derived.collective, null));
  derived.pruned.forEach((p, k) => {
    const [s, e] = p.span;
    const words = cps.slice(s, e).join("");
    list.append(pair(`Span ${k + 1}: “${words}” (characters ${s}–${e})`, "span",
      derived.cuts.pruned[k], p.instruction, p.span));
  });
  return list;
}

/** A record's warnings: a model fell back to a plain template, a token cut inside a word. */
export const warningsOf = (record) => (Array.isArray(record.warnings)
  ? record.warnings.filter((w) => typeof w === "string" && w) : []);

/**
 * Warnings as a banner, drawn as text (they may quote the prompt); null when there are none.
 * `shown` are left out: a list of records states the warnings they share once, above them.
 */
export function warningsBanner(record, shown = []) {
  const warnings = warningsOf(record).filter((w) => !shown.includes(w));
  if (!warnings.length) return null;
  return h("div", { class: "warnings", role: "status" },
    h("strong", {}, warnings.length === 1 ? "Warning" : `${warnings.length} warnings`),
    h("ul", {}, warnings.map((w) => h("li", {}, w))));
}

function viewsSection(derived, focus) {
  if (!Array.isArray(derived.views) || !derived.views.length) return null;
  return h("section", { class: "views" },
    h("h3", {}, "Response-level segments"),
    h("p", { class: "hint" }, "For each later segment of the output, the context is the ",
      `instruction plus the earlier output; flagged context ${nouns(derived.params)} are `,
      "marked."),
    derived.views.map((view) => {
      const target = chars(derived.output).slice(view.target[0], view.target[1]).join("");
      const byField = (field) => view.tokens.map((t, i) => [t, i]).filter(([t]) =>
        t.field === field);
      const draw = (field, text) => {
        const pairs = byField(field);
        const here = focus && focus.segment === view.segment && focus.field === field;
        return heatmap(text, pairs.map(([t]) => t), "score",
          { flags: pairs.map(([t]) => t.confounder), label: `segment ${view.segment} ${field}`,
            focus: here ? [[focus.start, focus.end]] : [] });
      };
      return h("div", { class: "view", dataset: { segment: String(view.segment) } },
        h("h4", {}, `Segment ${view.segment}: predicting “${target.trim()}”`),
        draw("instruction", derived.instruction),
        draw("output", chars(derived.output).slice(0, view.target[0]).join("")),
        h("p", {}, `${view.spans.length} span(s). Collective: `),
        h("div", { class: "after" }, view.collective.instruction,
          view.collective.output_prefix ? h("span", { class: "prefix" },
            ` ⟶ ${view.collective.output_prefix}`) : ""));
    }));
}

/**
 * A record view. options: threshold (initial), truth (ground-truth spans), showSensitivity
 * (draw the chart), compact (teacher and student heatmaps folded away, for lists), title,
 * focus ({segment, field, start, end}: a span to mark, from a corpus report's example),
 * sharedWarnings (warnings already shown above a list of records).
 * Answers {el, update(threshold), current()}.
 */
export function recordView(record, { threshold, truth = [], showSensitivity = true,
  compact = false, title = null, focus = null, sharedWarnings = [] } = {}) {
  const params = record.params || {};
  const canDerive = derivable(params);
  const atServer = applyThreshold(record, thresholdOf(params));
  const consistent = !canDerive || agrees(record, atServer);
  // If this page cannot reproduce the server, it shows the server's flags, unmoved.
  const live = canDerive && consistent;
  const derive = (t) => (live ? applyThreshold(record, t)
    : applyThreshold(record, thresholdOf(params), { serverFlags: true }));
  let derived = derive(threshold);

  const summary = h("p", { class: "flag-summary", "aria-live": "polite" });
  const maps = {};
  const legends = {};
  const heatSection = h("section", { class: "heatmaps" });
  const folded = compact ? h("details", { class: "saliency" },
    h("summary", {}, "Teacher and student saliency")) : heatSection;
  // The score map leads in compact lists; the page's own record reads top to bottom.
  const inInstruction = focus && focus.segment === 0 && focus.field === "instruction"
    ? [[focus.start, focus.end]] : [];
  for (const kind of compact ? ["score", "teacher", "student"] : ["teacher", "student", "score"]) {
    maps[kind] = heatmap(record.instruction, record.tokens, kind,
      { flags: derived.tokens.map((t) => t.confounder), truth, focus: inInstruction });
    legends[kind] = legend(kind, { truth: truth.length > 0 && kind === "score",
      focus: Boolean(focus) && kind === "score" });
    (kind === "score" ? heatSection : folded).append(h("div", { class: "heat-block" },
      h("h3", {}, KINDS[kind].title, h("span", { class: "hint" }, ` ${KINDS[kind].help}`)),
      legends[kind], maps[kind]));
  }
  if (compact) heatSection.append(folded);
  const cfSection = h("section", { class: "counterfactuals" },
    h("h3", {}, "Before and after: pruned prompts"), h("div", { class: "cf-body" }));
  const chartBox = h("div", { class: "sensitivity" });
  const curve = live && showSensitivity ? sensitivity([record], TAUS) : null;
  const views = h("div", { class: "views-box" });

  const copyButton = h("button", { type: "button", class: "secondary copy-json" }, "Copy JSON");
  copyButton.addEventListener("click", async () => {
    const ok = await copyText(JSON.stringify(derived, null, 2));
    copyButton.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { copyButton.textContent = "Copy JSON"; }, 1500);
  });
  const download = h("button", { type: "button", class: "secondary download-json",
    onclick: () => saveFile(JSON.stringify(derived, null, 2),
      `leaf-record-${record.id || "record"}.json`) }, "Download JSON");

  const el = h("article", { class: "record", dataset: { id: record.id || "",
    consistent: String(consistent) } },
  title ? h("h3", { class: "record-title" }, title) : null,
  h("div", { class: "record-head" }, summary,
    h("div", { class: "actions" }, copyButton, download)),
  h("p", { class: "hint units", dataset: { unit: params.unit || "", compare: params.compare ||
    "" } }, unitsLine(params)),
  warningsBanner(record, sharedWarnings),
  consistent ? null : h("p", { class: "error", role: "alert" },
    "This page's re-derivation of the flags disagrees with the server's record; the ",
    "server's flags are shown at its threshold. Please report this."),
  canDerive ? null : h("p", { class: "hint" }, `Method ${params.method} picks tokens `,
    "by other means than the score, so the flags are the server's and the threshold ",
    "control does not change them."),
  heatSection, cfSection, views, curve ? chartBox : null);

  function update(next) {
    derived = derive(next);
    const flags = derived.tokens.map((t) => t.confounder);
    for (const kind of Object.keys(maps)) setFlags(maps[kind], flags);
    const count = flaggedCount(record, flags);
    const shown = live ? next : thresholdOf(params);
    summary.dataset.flagged = String(count);
    summary.dataset.tokens = String(flags.filter(Boolean).length);
    summary.dataset.spans = String(derived.spans.length);
    // "3 words flagged": the noun follows the record's unit.
    fill(summary, h("strong", { class: "flag-count" }, String(count)),
      ` ${count === 1 ? unitOf(params) : nouns(params)} flagged in `,
      h("strong", {}, String(derived.spans.length)),
      ` span${derived.spans.length === 1 ? "" : "s"} (${thresholdText(shown)})`);
    const cutLine = legends.score.querySelector(".legend-cut");
    if (cutLine) cutLine.remove();
    if (shown.mode === "tau") {
      legends.score.querySelector(".legend-bar").append(h("span", { class: "legend-cut",
        style: { left: `${shown.tau * 100}%` }, title: `tau ${num(shown.tau, 2)}` }));
    }
    fill(cfSection.querySelector(".cf-body"), beforeAfter(record, derived, focus));
    fill(views, viewsSection(derived, focus));
    if (curve) {
      fill(chartBox, lineChart({
        title: `Flagged ${nouns(params)} and spans against tau (this record)`,
        xLabel: "tau", yLabel: "count", xDomain: [0, 1], integer: true,
        marker: shown.mode === "tau" ? shown.tau : null,
        series: [
          { label: `flagged ${nouns(params)}`, points: curve.map((p) => [p.tau, p.units]) },
          { label: "spans", points: curve.map((p) => [p.tau, p.spans]) },
        ],
      }));
    }
  }
  update(threshold);
  return { el, update, current: () => derived };
}
