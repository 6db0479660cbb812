// The Jobs pages: a live list, and one job with its parameters, timings, errors, files and
// what its kind produced (detection records and summary, a loss curve, an accuracy table).

import { api } from "./api.js";
import { bytes, duration, errorBox, fill, h, num, percent, seconds, when } from "./dom.js";
import { barChart, lineChart } from "./charts.js";
import { derivable, sensitivity, thresholdOf } from "./flags.js";
import { recordView, warningsBanner, warningsOf } from "./record.js";
import { thresholdControl } from "./threshold.js";
import { nouns, unitOf } from "./units.js";

const FINAL = new Set(["finished", "failed", "canceled"]);
const LIVE_MS = 1000; // poll while something runs
const IDLE_MS = 5000; // and slower otherwise, to notice jobs submitted elsewhere
const PAGE = 5; // records per page: each is three heatmaps

/**
 * Calls `tick` now and then repeatedly until stopped. tick answers true to come back soon,
 * false to come back later, "done" to stop.
 */
export function poller(tick) {
  let timer = null;
  let stopped = false;
  const loop = async () => {
    let busy = false;
    try {
      busy = await tick();
    } catch { /* tick shows its own errors */ }
    if (!stopped && busy !== "done") timer = setTimeout(loop, busy ? LIVE_MS : IDLE_MS);
  };
  loop();
  return () => { stopped = true; clearTimeout(timer); };
}

export const badge = (status) => h("span", { class: `badge status-${status}` }, status);

export function progressBar(job) {
  const value = job.progress ?? 0;
  return h("div", { class: "progress-cell" },
    h("progress", { max: "1", value: String(value ?? 0),
      "aria-label": `job ${job.id} progress`, "aria-valuetext": percent(value) }),
    h("span", { class: "progress-text" }, `${percent(value)}${job.stage ? ` · ${job.stage}` : ""}`));
}

/** Where a job's data came from: a dataset, or another job's records. */
function source(job) {
  if (job.dataset_id) {
    return h("a", { href: `#/datasets/${job.dataset_id}`, class: "mono",
      title: job.dataset_id }, `dataset …${job.dataset_id.slice(-6)}`);
  }
  const other = job.params.detect_job || job.params.checkpoint_job;
  return other ? h("a", { href: `#/jobs/${other}`, class: "mono", title: other },
    `job …${other.slice(-6)}`) : "–";
}

/** Whether a job has a corpus report to show: a finished detect job that wrote one. */
export const hasReport = (job) => job.kind === "detect" && job.status === "finished" &&
  Boolean(job.result && job.result.report);

const reportLink = (job) => h("a", { href: `#/jobs/${job.id}/report`, class: "report-link",
  "aria-label": `corpus report of job ${job.id}` }, "Report");

/** A table of jobs; answers the <table> (rows link to the job pages). */
export function jobsTable(jobs) {
  if (!jobs.length) return h("p", { class: "empty" }, "No jobs yet.");
  return h("div", { class: "table-wrap" }, h("table", { class: "jobs", id: "jobs-table" },
    h("thead", {}, h("tr", {}, ["Job", "Kind", "Status", "Progress", "Data", "Created",
      "Duration", "Report"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, jobs.map((job) => h("tr", { dataset: { id: job.id, status: job.status } },
      h("td", {}, h("a", { href: `#/jobs/${job.id}`, class: "mono" }, job.id)),
      h("td", {}, job.kind),
      h("td", {}, badge(job.status)),
      h("td", {}, progressBar(job)),
      h("td", {}, source(job)),
      h("td", {}, when(job.created_at)),
      h("td", {}, duration(job.started_at, job.ended_at)),
      h("td", {}, hasReport(job) ? reportLink(job) : null))))));
}

export function mountJobs(root) {
  const kind = h("select", { id: "job-kind" }, ["", "detect", "distill", "evaluate", "calibrate"].map((k) =>
    h("option", { value: k }, k || "all kinds")));
  const status = h("select", { id: "job-status" }, ["", "queued", "started", "finished",
    "failed", "canceled"].map((s) => h("option", { value: s }, s || "any status")));
  const list = h("div", { class: "jobs-list" });
  const problems = h("div");
  fill(root, h("section", { class: "panel" }, h("h2", {}, "Jobs"),
    h("div", { class: "row wrap" }, h("label", { class: "field" }, h("span", {}, "Kind"), kind),
      h("label", { class: "field" }, h("span", {}, "Status"), status)),
    problems, list));
  let shown = "";
  const tick = async () => {
    try {
      const answer = await api.jobs({ kind: kind.value, status: status.value, limit: 100 });
      fill(problems);
      const key = JSON.stringify(answer);
      if (key !== shown) {
        shown = key;
        keepFocus(list, () => [jobsTable(answer.jobs),
          answer.total > answer.jobs.length ? h("p", { class: "hint" },
            `Showing the newest ${answer.jobs.length} of ${answer.total}.`) : null]);
      }
      return answer.jobs.some((j) => !FINAL.has(j.status));
    } catch (err) {
      fill(problems, errorBox(err, "Could not list the jobs"));
      return false;
    }
  };
  let stop = poller(tick);
  // The filters restart polling with their new values.
  const restart = () => { stop(); shown = ""; stop = poller(tick); };
  kind.addEventListener("change", restart);
  status.addEventListener("change", restart);
  return () => stop();
}

/**
 * Redraw a container's children while keeping keyboard focus on the "same" control (same
 * id or href), so polling does not throw a keyboard user back to the top of the page.
 */
export function keepFocus(container, render) {
  const active = document.activeElement;
  const inside = active && container.contains(active);
  const id = inside && active.id;
  const href = inside && active.getAttribute("href");
  fill(container, render());
  if (!inside) return;
  const again = id ? container.querySelector(`#${CSS.escape(id)}`)
    : href ? container.querySelector(`[href="${CSS.escape(href)}"]`) : null;
  if (again) again.focus();
}

// ---------------------------------------------------------------------------- one job

function definitions(entries) {
  return h("dl", { class: "defs" }, entries.flatMap(([k, v]) => [h("dt", {}, k),
    h("dd", {}, v === null || v === undefined ? "–" : typeof v === "object" ?
      JSON.stringify(v) : String(v))]));
}

// A distill job's two archives (leaf_service/jobs.py names them): the trained model, which
// loads with from_pretrained, listed first, and the training state, which only resuming
// needs, listed last. The job's result says what each holds; these words stand in for it.
const FILE_ROLES = {
  "model.tar": { order: 0, label: "Download the model (model.tar)",
    what: "the trained student: weights (safetensors), config and tokenizer" },
  "resume.tar": { order: 2, label: "Download the resume state (resume.tar)",
    what: "for resuming only: the optimizer and training state, not a model" },
};

function filesList(job) {
  if (!job.files.length) return h("p", { class: "empty" }, "No output files yet.");
  const role = (f) => FILE_ROLES[f.name] || { order: 1, label: `Download ${f.name}`, what: "" };
  const told = (job.result && job.result.downloads) || {};
  const files = [...job.files].sort((a, b) => role(a).order - role(b).order);
  return h("ul", { class: "files" }, files.map((f) => {
    const { label } = role(f);
    const what = typeof told[f.name] === "string" ? told[f.name] : role(f).what;
    const button = h("button", { type: "button", class: "secondary", id: `file-${f.name}`,
      dataset: { file: f.name } }, label);
    const problem = h("span");
    button.addEventListener("click", async () => {
      fill(problem);
      try { await api.download(job.id, f.name); } catch (err) {
        fill(problem, errorBox(err, `Could not download ${f.name}`));
      }
    });
    return h("li", { dataset: { file: f.name } }, button,
      h("span", { class: "hint" }, ` ${bytes(f.bytes)}${what ? `: ${what}` : ""}`), problem);
  }));
}

function detectSummary(job) {
  const r = job.result || {};
  const summary = r.summary || {};
  // The counts are of the records' entries: tokens at unit token, else words (the job's
  // params hold the unit it was asked for; only a token run compared on words lists words).
  const what = unitOf(job.params) === "token" ? "tokens" : "words";
  const parts = [definitions([["records", r.records], [`flagged ${what}`, r.flagged_tokens],
    ["spans", r.spans], ["pruned rows", r.pruned_rows],
    ["from the cache", r.cached], ["computed", r.computed]])];
  const charts = h("div", { class: "charts" });
  if (Array.isArray(summary.top_flagged) && summary.top_flagged.length) {
    charts.append(barChart({ title: "Words flagged most often", xLabel: "word",
      yLabel: "times flagged", integer: true,
      bars: summary.top_flagged.slice(0, 12).map(([w, c]) => ({ label: w, value: c })) }));
  }
  if (summary.flags_per_record) {
    const entries = Object.entries(summary.flags_per_record).map(([k, v]) => [Number(k), v]);
    const most = Math.max(0, ...entries.map(([k]) => k));
    const counts = new Map(entries);
    charts.append(barChart({ title: "Flags per record", xLabel: `flagged ${what} in a record`,
      yLabel: "records", integer: true, bars: Array.from({ length: most + 1 }, (_, k) =>
        ({ label: String(k), value: counts.get(k) || 0 })) }));
  }
  if (Array.isArray(r.sensitivity) && r.sensitivity.length) {
    charts.append(lineChart({ title: `Whole dataset: flagged ${what} and records against tau`,
      xLabel: "tau", yLabel: "count", integer: true,
      xDomain: [0, Math.max(...r.sensitivity.map((p) => p.tau))],
      marker: typeof job.params.tau === "number" ? job.params.tau : null,
      series: [{ label: `flagged ${what}`, points: r.sensitivity.map((p) => [p.tau, p.tokens]) },
        { label: "records with a flag", points: r.sensitivity.map((p) => [p.tau, p.records]) }],
    }));
  }
  const words = Array.isArray(summary.top_flagged) && summary.top_flagged.length
    ? h("details", {}, h("summary", {}, "Most flagged words as a table"),
      h("table", { class: "top-words" }, h("caption", {}, "Most flagged words"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "word"),
        h("th", { scope: "col" }, "times"))),
      h("tbody", {}, summary.top_flagged.map(([w, c]) => h("tr", {}, h("td", {}, w),
        h("td", {}, String(c)))))))
    : null;
  parts.push(charts, words);
  const report = hasReport(job) ? h("p", { class: "open-report" }, h("a", {
    href: `#/jobs/${job.id}/report`, id: "open-report" }, "Open the corpus report"),
  ": which words and phrases are flagged most, by category and by position, and how the ",
  "counts move with tau.") : null;
  return h("section", { class: "summary" }, h("h3", {}, "Dataset summary"), report, parts);
}

/** A finished detect job's records, page by page, with one threshold for the page. */
function recordsBrowser(job) {
  const box = h("section", { class: "records", id: "records" }, h("h3", {}, "Records"));
  const pager = h("nav", { class: "pager", "aria-label": "record pages" });
  const chart = h("div", { class: "sensitivity" });
  const list = h("div", { class: "record-list" });
  const common = h("div", { class: "common-warnings" });
  const problems = h("div");
  let views = [];
  let page = [];
  let offset = 0;
  let total = 0;
  const initial = thresholdOf(job.params);
  let threshold = initial;
  const control = thresholdControl(initial, (t) => {
    threshold = t;
    for (const v of views) v.update(t);
    drawChart();
  });
  const byScore = derivable(job.params);
  if (!byScore) {
    control.set(initial, `Method ${job.params.method} does not flag by score: the ` +
      "threshold has no effect on these records.");
  }
  const canPrune = job.files.some((f) => f.name === "pruned.jsonl");
  const exportButton = canPrune ? h("button", { type: "button", class: "secondary",
    id: "download-pruned" }, "Download the pruned export (pruned.jsonl)") : null;
  if (exportButton) {
    exportButton.addEventListener("click", () => api.download(job.id, "pruned.jsonl")
      .catch((err) => fill(problems, errorBox(err, "Could not download"))));
  }

  function drawChart() {
    if (!byScore) return;
    const curve = sensitivity(page, Array.from({ length: 51 }, (_, i) => i / 50));
    const params = page.length ? page[0].params : job.params;
    fill(chart, lineChart({ title: `This page: flagged ${nouns(params)} and spans against tau`,
      xLabel: "tau", yLabel: "count", xDomain: [0, 1], integer: true,
      marker: threshold.mode === "tau" ? threshold.tau : null,
      series: [{ label: `flagged ${nouns(params)}`, points: curve.map((p) => [p.tau, p.units]) },
        { label: "spans", points: curve.map((p) => [p.tau, p.spans]) }] }));
  }

  async function load(at) {
    list.setAttribute("aria-busy", "true");
    try {
      const answer = await api.records(job.id, at, PAGE);
      offset = answer.offset;
      total = answer.total;
      page = answer.records;
      fill(problems);
      // Warnings every record on the page has (a model's template fallback) are said once.
      const shared = page.length ? warningsOf(page[0]).filter((w) =>
        page.every((r) => warningsOf(r).includes(w))) : [];
      fill(common, shared.length ? warningsBanner({ warnings: shared }) : null);
      views = page.map((record, k) => recordView(record, { threshold, showSensitivity: false,
        compact: true, sharedWarnings: shared,
        title: `#${offset + k + 1} · ${record.id}${record.answer !== undefined ?
          ` · answer ${record.answer}` : ""}` }));
      fill(list, views.map((v) => v.el));
      drawChart();
      const prev = h("button", { type: "button", class: "secondary", id: "records-prev",
        disabled: offset === 0, onclick: () => load(Math.max(0, offset - PAGE)) }, "← Previous");
      const next = h("button", { type: "button", class: "secondary", id: "records-next",
        disabled: offset + PAGE >= total, onclick: () => load(offset + PAGE) }, "Next →");
      fill(pager, prev, h("span", { class: "page-info", id: "records-range" },
        `records ${total ? offset + 1 : 0}–${Math.min(offset + PAGE, total)} of ${total}`), next);
    } catch (err) {
      fill(problems, errorBox(err, "Could not load the records"));
    } finally {
      list.removeAttribute("aria-busy");
    }
  }
  box.append(h("div", { class: "row wrap" }, control.el, exportButton), problems, common,
    pager, chart, list);
  load(0);
  return box;
}

function lossCurve(points, title) {
  if (!points.length) return h("p", { class: "empty" }, "No loss recorded yet.");
  return lineChart({ title, xLabel: "step", yLabel: "loss", series: [{ label: "training loss",
    points }], width: 520, height: 220 });
}

function distillResult(job, live) {
  const r = job.result;
  const history = r && Array.isArray(r.history) ? r.history.filter((p) =>
    typeof p.loss === "number").map((p) => [p.step, p.loss]) : live;
  const parts = [h("h3", {}, "Training"), lossCurve(history, "Training loss per step")];
  if (r && Array.isArray(r.epochs) && r.epochs.length) {
    parts.push(h("div", { class: "table-wrap" }, h("table", { class: "epochs" },
      h("thead", {}, h("tr", {}, ["epoch", "train loss", "validation loss", "validation KD",
        "seconds"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, r.epochs.map((e) => h("tr", {}, h("td", {}, String(e.epoch)),
        h("td", {}, num(e.train_loss, 4)), h("td", {}, num(e.val_loss, 4)),
        h("td", {}, num(e.val_kd, 4)), h("td", {}, seconds(e.seconds))))))));
  }
  if (r && r.data) parts.push(definitions(Object.entries(r.data)));
  return h("section", { class: "distill" }, parts);
}

function evaluateResult(job) {
  const r = job.result;
  if (!r) return null;
  const name = job.params.model || (job.params.checkpoint_job ?
    `model of job ${job.params.checkpoint_job}` : "model");
  const rows = [[name, r.accuracy, `${r.correct} / ${r.total}`]];
  if (r.teacher) rows.push([job.params.teacher || "teacher", r.teacher.accuracy, "–"]);
  const table = h("table", { class: "accuracy", id: "accuracy-table" },
    h("caption", {}, "Accuracy"),
    h("thead", {}, h("tr", {}, ["model", "accuracy", "correct"].map((c) =>
      h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map(([m, a, c]) => h("tr", {}, h("td", {}, m),
      h("td", {}, percent(a, 1)), h("td", {}, c)))));
  const extra = [];
  if (typeof r.jaccard === "number") {
    extra.push(h("p", {}, `Output similarity to the teacher (mean Jaccard): ${num(r.jaccard)}`));
  }
  const breakdown = (title, groups) => h("table", { class: "groups" }, h("caption", {}, title),
    h("thead", {}, h("tr", {}, ["group", "rows", "accuracy"].map((c) =>
      h("th", { scope: "col" }, c)))),
    h("tbody", {}, Object.entries(groups).map(([g, v]) => h("tr", {}, h("td", {}, g),
      h("td", {}, String(v.n)), h("td", {}, percent(v.accuracy, 1))))));
  if (r.groups) extra.push(breakdown(`By ${job.params.group_by || "group"}`, r.groups));
  if (r.by_method) extra.push(breakdown("By answer check", r.by_method));
  const examples = Array.isArray(r.examples) ? h("details", {},
    h("summary", {}, `Per-example outputs (${r.examples.length})`),
    h("div", { class: "table-wrap" }, h("table", { class: "examples" },
      h("thead", {}, h("tr", {}, ["id", "answer", "output", "correct", "teacher correct",
        "Jaccard"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, r.examples.slice(0, 200).map((e) => h("tr", {},
        h("td", {}, e.id), h("td", {}, e.answer ?? "–"), h("td", { class: "text" }, e.output),
        h("td", {}, e.correct ? "yes" : "no"),
        h("td", {}, e.teacher_correct === null || e.teacher_correct === undefined ? "–" :
          e.teacher_correct ? "yes" : "no"),
        h("td", {}, num(e.jaccard, 2)))))))) : null;
  return h("section", { class: "evaluate" }, h("h3", {}, "Evaluation"), h("div",
    { class: "table-wrap" }, table), extra, examples);
}

export function mountJob(root, id) {
  const head = h("div", { class: "job-head" });
  const body = h("div", { class: "job-body" });
  const problems = h("div");
  fill(root, h("section", { class: "panel job", id: "job-page" },
    h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")),
    h("h2", {}, "Job ", h("span", { class: "mono" }, id)), head, problems, body));
  const live = new Map(); // step -> loss, while a distillation runs
  const stop = poller(async () => {
    let job;
    try {
      job = await api.job(id);
      fill(problems);
    } catch (err) {
      fill(problems, errorBox(err, "Could not load the job"));
      return err.status === 404 ? "done" : false;
    }
    if (typeof job.metrics.step === "number" && typeof job.metrics.loss === "number") {
      live.set(job.metrics.step, job.metrics.loss);
    }
    const cancel = FINAL.has(job.status) ? null : h("button", { type: "button",
      class: "secondary", id: "cancel-job", onclick: async () => {
        try { await api.cancel(id); } catch (err) { fill(problems, errorBox(err, "Cancel")); }
      } }, "Cancel");
    keepFocus(head, () => [h("div", { class: "row wrap" }, h("span", { class: "kind" }, job.kind),
      badge(job.status), progressBar(job),
      job.eta_s ? h("span", { class: "hint" }, `about ${seconds(job.eta_s)} left`) : null,
      cancel),
    job.error ? h("div", { class: "error", role: "alert" }, h("strong", {}, "Error: "),
      job.error) : null]);
    const final = FINAL.has(job.status);
    const metrics = Object.entries(job.metrics || {});
    keepFocus(body, () => [
      h("div", { class: "columns" },
        h("section", {}, h("h3", {}, "Parameters"), definitions(Object.entries(job.params))),
        h("section", {}, h("h3", {}, "Timings"), definitions([
          ["created", when(job.created_at)], ["started", when(job.started_at)],
          ["ended", when(job.ended_at)],
          ["waited", job.started_at ? duration(job.created_at, job.started_at) : "–"],
          ["ran", duration(job.started_at, job.ended_at)]]),
        metrics.length ? h("h3", {}, "Live figures") : null,
        metrics.length ? definitions(metrics.map(([k, v]) => [k, typeof v === "number" &&
          !Number.isInteger(v) ? num(v, 4) : v])) : null,
        h("p", {}, "Data: ", source(job))),
        h("section", {}, h("h3", {}, "Output files"), filesList(job))),
      job.kind === "distill" ? distillResult(job, [...live.entries()].sort((a, b) => a[0] - b[0]))
        : null,
      job.kind === "detect" && job.status === "finished" ? [detectSummary(job),
        recordsBrowser(job)] : null,
      job.kind === "evaluate" && job.status === "finished" ? evaluateResult(job) : null]);
    return final ? "done" : true;
  });
  return stop;
}
