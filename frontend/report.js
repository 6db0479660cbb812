// The Report page (#/jobs/{id}/report): a finished detect job's corpus report, what misleads
// the student across the whole dataset. Everything is drawn from the job's report.json
// (GET /jobs/{id}/report, schema in docs/report.md); the tau slider reads the report's
// stored flags-against-tau curve, so moving it sends no request.

import { api } from "./api.js";
import { barChart, lineChart } from "./charts.js";
import { errorBox, fill, h, num, percent } from "./dom.js";
import { listed } from "./units.js";

// What the job writes beside its records (leaf_service/jobs.py CORPUS_REPORT_*).
const FILES = [["corpus_report.html", "the page"], ["corpus_report.md", "Markdown"],
  ["corpus_report.json", "report.json"]];
// Short names for chart bars; the tables use the report's own labels.
const SHORT = { number: "numbers", name: "names", function: "function", punctuation: "punct.",
  template: "template", other: "other" };

/** An example record of a pattern, opened in the Analyze view with its span marked. */
export function exampleHref(jobId, segment, example) {
  const q = new URLSearchParams({ job: jobId, line: String(example.line),
    segment: String(segment), field: example.field, start: String(example.start),
    end: String(example.end) });
  return `#/analyze?${q}`;
}

/** A count from a bounded table: exact, or the range it is known to lie in. */
function bounded(count, error) {
  return error ? `${count - error}–${count}` : String(count);
}

function verifiedText(v) {
  return v ? `${percent(v.share, 0)} (${v.fixed}/${v.checked})` : "–";
}

function table(id, caption, columns, rows) {
  return h("div", { class: "table-wrap" }, h("table", { class: "report-table", id },
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows)));
}

/**
 * The run's detection parameters in a line:
 * "tau 0.10 · gradient · unit word · compared on tokens · instruction level".
 */
function paramsText(params) {
  const threshold = typeof params.percentile === "number" ? `bottom ${params.percentile}%`
    : typeof params.tau === "number" ? `tau ${num(params.tau, 2)}` : null;
  return [threshold, params.method, params.unit && `unit ${params.unit}`,
    params.compare && `compared on ${params.compare}`,
    params.level && `${params.level} level`].filter(Boolean).join(" · ");
}

/** The index of the curve's point nearest the run's own tau (0.1 for a percentile run). */
function startIndex(curve, params) {
  const tau = typeof params.tau === "number" ? params.tau : 0.1;
  let best = 0;
  curve.forEach((p, i) => {
    if (Math.abs(p.tau - tau) < Math.abs(curve[best].tau - tau)) best = i;
  });
  return best;
}

// ---------------------------------------------------------------------------- sections

function overview(seg, params) {
  const figure = (label, value, id) => h("div", { class: "figure-box" },
    h("span", { class: "figure-value", id }, value), h("span", { class: "figure-label" }, label));
  return h("div", { class: "figures", id: "report-overview" },
    figure("prompts", String(seg.prompts)),
    // A record lists tokens, or words and punctuation where it was scored or compared on
    // words; the report counts what it lists.
    figure(listed(params) === "tokens" ? "tokens scored" : "words and punctuation marks scored",
      String(seg.tokens)),
    figure("flags (at the run's own threshold)", String(seg.flags), "report-flags"),
    figure("flagged spans", String(seg.spans)),
    figure("prompts with a flag", `${seg.prompts_flagged} (${percent(seg.prompts_flagged /
      (seg.prompts || 1), 0)})`),
    seg.verified ? figure("prompts fixed by pruning", verifiedText(seg.verified)) : null);
}

/** The tau slider and what the stored curve says at it; answers {el, draw(index)}. */
function tauSection(seg, report, onMove) {
  const curve = seg.tau_curve;
  const slider = h("input", { type: "range", id: "report-tau", min: "0",
    max: String(curve.length - 1), step: "1", "aria-describedby": "report-tau-help" });
  const value = h("output", { id: "report-tau-value", for: "report-tau" });
  const stats = h("dl", { class: "tau-figures" });
  const chart = h("div", { class: "tau-chart" });
  const consistent = (report.params.method || "gradient") === "gradient" &&
    typeof report.params.percentile !== "number";
  const what = listed(report.params);
  const help = h("p", { class: "hint", id: "report-tau-help" },
    `${what === "tokens" ? "Tokens" : "Words"} with score ≤ tau, over the whole dataset, from `,
    "the scores stored in the report: ",
    "moving the slider sends no request. The patterns and categories below are counted at ",
    "the run's own threshold. ", consistent ? "" : "This run did not flag by a plain tau, so " +
    "its own flags may differ from the curve at any point.");

  function draw(index) {
    const p = curve[index];
    slider.value = String(index);
    slider.setAttribute("aria-valuetext", `tau ${num(p.tau, 2)}`);
    value.textContent = num(p.tau, 2);
    const row = (label, text, id) => [h("dt", {}, label), h("dd", { id }, text)];
    fill(stats,
      row(`flagged ${what}`, String(p.flags), "tau-flags"),
      row("per prompt", num(p.flags_per_prompt, 2), "tau-per-prompt"),
      row("prompts with a flag", String(p.prompts_flagged), "tau-prompts"),
      row("share of prompts", percent(p.share_of_prompts, 1), "tau-share"));
    fill(chart, lineChart({ title: "Whole dataset: flags against tau",
      xLabel: "tau", yLabel: "count", integer: true, xDomain: [0, curve[curve.length - 1].tau],
      marker: p.tau, width: 420, height: 200, xSteps: 5, // the report's taus: 0 to 0.5
      series: [{ label: `flagged ${what}`, points: curve.map((q) => [q.tau, q.flags]) },
        { label: "prompts with a flag", points: curve.map((q) => [q.tau, q.prompts_flagged]) }],
    }));
    onMove(index);
  }
  slider.addEventListener("input", () => draw(Number(slider.value)));
  const el = h("section", { class: "panel report-tau", id: "report-tau-section" },
    h("h3", {}, "Flags against tau"),
    h("div", { class: "tau-layout" },
      h("div", {},
        h("div", { class: "threshold-row report-slider" },
          h("label", { for: "report-tau" }, "tau"), slider, value),
        stats, help),
      chart));
  return { el, draw };
}

function categoriesSection(seg) {
  const verified = Boolean(seg.verified);
  const chips = (items) => h("span", { class: "chips" }, items.slice(0, 5).map((t) =>
    h("code", { class: "chip", title: `${t.count} times` }, t.text,
      h("span", { class: "chip-count" }, ` ×${bounded(t.count, t.count_error)}`))));
  const rows = seg.categories.map((c) => h("tr", { dataset: { category: c.category } },
    h("th", { scope: "row" }, c.label),
    h("td", { class: "n" }, String(c.flags)),
    h("td", { class: "n" }, percent(c.share_of_flags, 1)),
    h("td", { class: "n" }, num(c.flags_per_prompt, 2)),
    h("td", { class: "n" }, `${c.prompts} (${percent(c.share_of_prompts, 0)})`),
    h("td", { class: "n" }, num(c.mean_score, 3)),
    verified ? h("td", { class: "n" }, verifiedText(c.verified)) : null,
    h("td", {}, chips(c.top))));
  const columns = ["category", "flags", "of flags", "per prompt", "prompts", "mean score",
    verified ? "fixed by pruning" : null, "most flagged"].filter(Boolean);
  const contexts = seg.categories.filter((c) => c.contexts.length);
  return h("section", { class: "panel", id: "report-categories-section" },
    h("h3", {}, "Flags by category"),
    h("div", { class: "report-split" },
      table("report-categories", null, columns, rows),
      barChart({ title: "Flags by category", xLabel: "category", yLabel: "flags",
        integer: true, width: 360, height: 190,
        bars: seg.categories.map((c) => ({ label: SHORT[c.category] || c.category,
          value: c.flags })) })),
    contexts.length ? h("details", { class: "contexts" },
      h("summary", {}, "In context: each flag with a neighbour either side"),
      h("ul", {}, contexts.map((c) => h("li", {}, h("strong", {}, `${c.label}: `),
        c.contexts.map((t) => h("code", { class: "chip" }, t.text,
          h("span", { class: "chip-count" }, ` ×${bounded(t.count, t.count_error)}`))))))) : null,
    verified ? null : h("p", { class: "hint" }, "Whether pruning a flag made the student ",
      "right shows here for records made with ", h("code", {}, "leaf detect --verify"), "."));
}

function positionsSection(seg, params) {
  const p = seg.positions;
  const what = listed(params);
  const labels = Array.from({ length: p.bins }, (_, i) => String(Math.round((100 * i) / p.bins)));
  const totalFlags = p.flags.reduce((a, b) => a + b, 0);
  const totalTokens = p.tokens.reduce((a, b) => a + b, 0);
  const tail = Math.max(1, Math.round(p.bins * 0.3)); // the last 30% of the prompt
  const tailFlags = p.flags.slice(-tail).reduce((a, b) => a + b, 0);
  const tailTokens = p.tokens.slice(-tail).reduce((a, b) => a + b, 0);
  return h("section", { class: "panel", id: "report-positions-section" },
    h("h3", {}, "Where flags fall in the prompt"),
    h("p", { class: "hint" }, `Relative position of each visible ${what.slice(0, -1)} (0% = `,
      `the first word). A pile of flags on the last words against an even spread of ${what} `,
      "is a position bias."),
    h("div", { class: "charts" },
      barChart({ title: "Flags by position (% into the prompt)", xLabel: "position (%)",
        yLabel: "flags", integer: true, bars: p.flags.map((v, i) => ({ label: labels[i],
          value: v })) }),
      barChart({ title: `Flag rate by position (flags / ${what})`, xLabel: "position (%)",
        yLabel: "rate", bars: p.flag_rate.map((v, i) => ({ label: labels[i],
          value: v ?? 0 })) })),
    h("p", { id: "report-tail" }, `The last ${Math.round((100 * tail) / p.bins)}% of the `,
      `prompt holds ${percent(totalFlags ? tailFlags / totalFlags : null, 0)} of the flags `,
      `and ${percent(totalTokens ? tailTokens / totalTokens : null, 0)} of the ${what}.`));
}

function patternsSection(seg, jobId) {
  const kind = h("select", { id: "pattern-kind" },
    h("option", { value: "patterns" }, "normalised (case, numbers as <num>)"),
    h("option", { value: "literal_patterns" }, "literal"));
  const body = h("div");
  const verified = Boolean(seg.verified);
  function draw() {
    const patterns = seg[kind.value];
    const exampleLinks = (row) => h("ul", { class: "examples" }, row.examples.map((ex) =>
      h("li", {}, h("a", { href: exampleHref(jobId, seg.segment, ex), class: "example-link",
        title: `open record ${ex.id} (line ${ex.line}) in Analyze`,
        dataset: { line: String(ex.line), id: ex.id } },
      h("span", { class: "ex-id" }, ex.id), " ", ex.before, h("mark", {}, ex.flag), ex.after))));
    const rows = patterns.rows.map((row, i) => h("tr", { dataset: { pattern: row.pattern } },
      h("td", { class: "n" }, String(i + 1)),
      h("td", {}, h("code", { class: "pattern" }, row.pattern)),
      h("td", { class: "n" }, bounded(row.count, row.count_error)),
      h("td", { class: "n" }, bounded(row.prompts, row.prompts_error)),
      h("td", { class: "n" }, percent(row.share_of_prompts, 1)),
      h("td", { class: "n" }, num(row.mean_score, 3)),
      verified ? h("td", { class: "n" }, verifiedText(row.verified)) : null,
      h("td", { class: "text" }, exampleLinks(row))));
    const columns = ["#", "pattern", "spans", "prompts", "share of prompts", "mean score",
      verified ? "fixed by pruning" : null, "examples (open in Analyze)"].filter(Boolean);
    fill(body, patterns.rows.length ? table("report-patterns", null, columns, rows)
      : h("p", { class: "empty" }, "Nothing was flagged."),
    h("p", { class: "hint" }, `${patterns.held} distinct pattern${patterns.held === 1 ? "" :
      "s"}; the ${patterns.rows.length} most counted shown.`, patterns.truncated ?
      " The table overflowed while counting: counts are ranges (Space-Saving bounds)." : ""));
  }
  kind.addEventListener("change", draw);
  draw();
  return h("section", { class: "panel", id: "report-patterns-section" },
    h("h3", {}, "Most flagged words and phrases"),
    h("label", { class: "field inline", for: "pattern-kind" }, h("span", {}, "Patterns"), kind),
    body);
}

/** At response level: each scored context side by side, and the slider's tau across them. */
function segmentsTable(report, tauIndex) {
  if (report.segments.length < 2) return null;
  const rows = report.segments.map((s) => {
    const p = s.tau_curve[tauIndex];
    const top = s.patterns.rows[0];
    return h("tr", { dataset: { segment: String(s.segment) } },
      h("th", { scope: "row" }, s.label),
      h("td", { class: "n" }, String(s.prompts)),
      h("td", { class: "n" }, String(s.flags)),
      h("td", { class: "n" }, num(s.flags / (s.prompts || 1), 2)),
      h("td", { class: "n" }, percent(s.prompts_flagged / (s.prompts || 1), 0)),
      h("td", { class: "n tau-cell" }, num(p.flags_per_prompt, 2)),
      h("td", {}, top ? h("code", { class: "pattern" }, top.pattern) : "–"));
  });
  return table("report-segments", "Per segment (response level)", ["context", "prompts",
    "flags", "per prompt", "prompts flagged",
    `per prompt at tau ${num(report.segments[0].tau_curve[tauIndex].tau, 2)}`, "top pattern"],
  rows);
}

// ---------------------------------------------------------------------------- page

export function mountReport(root, id) {
  let alive = true;
  const problems = h("div");
  const head = h("div", { class: "report-head" });
  const body = h("div", { class: "report-body", "aria-busy": "true" },
    h("p", { class: "status" }, "Loading the report…"));
  fill(root, h("section", { class: "panel report", id: "report-page" },
    h("p", {}, h("a", { href: `#/jobs/${id}` }, "← job ", h("span", { class: "mono" }, id))),
    h("h2", {}, "Corpus report"), head, problems), body);

  function downloads() {
    return h("div", { class: "row wrap downloads" }, FILES.map(([name, what]) => {
      const button = h("button", { type: "button", class: "secondary", dataset: { file: name },
        title: what }, `Download ${name}`);
      button.addEventListener("click", () => api.download(id, name)
        .catch((err) => fill(problems, errorBox(err, `Could not download ${name}`))));
      return button;
    }));
  }

  function show(report) {
    const state = { segment: 0, tau: startIndex(report.segments[0].tau_curve, report.params) };
    const segmentPick = report.segments.length > 1 ? h("select", { id: "report-segment" },
      report.segments.map((s, i) => h("option", { value: String(i) }, s.label))) : null;
    const segmentsBox = h("div", { class: "segments-box" });
    const parts = h("div");
    fill(head,
      h("p", { class: "report-meta" }, `${report.records} record${report.records === 1 ? "" :
        "s"} of `, h("code", {}, report.source), ` · ${paramsText(report.params)}`),
      report.params_consistent ? null : h("p", { class: "error" }, "The records were made ",
        "with different parameters; the report's header shows the first record's."),
      downloads());

    function drawSegment() {
      const seg = report.segments[state.segment];
      const tau = tauSection(seg, report, (index) => {
        state.tau = index;
        fill(segmentsBox, segmentsTable(report, index));
      });
      fill(parts, h("div", { class: "report-top" }, h("section", { class: "panel" },
        h("h3", {}, seg.segment === 0 ? "Overview: the instructions" : `Overview: ${seg.label}`),
        overview(seg, report.params)), tau.el),
      patternsSection(seg, id), categoriesSection(seg),
      positionsSection(seg, report.params));
      tau.draw(state.tau);
    }
    if (segmentPick) {
      segmentPick.addEventListener("change", () => {
        state.segment = Number(segmentPick.value);
        drawSegment();
      });
    }
    body.removeAttribute("aria-busy");
    fill(body, segmentPick ? h("section", { class: "panel" },
      h("label", { class: "field inline", for: "report-segment" },
        h("span", {}, "Context"), segmentPick), segmentsBox) : null, parts);
    drawSegment();
  }

  api.report(id).then((report) => { if (alive) show(report); }).catch((err) => {
    if (!alive) return;
    body.removeAttribute("aria-busy");
    fill(body);
    fill(problems, errorBox(err, "Could not load the report"));
  });
  return () => { alive = false; };
}
