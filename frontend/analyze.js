// The Analyze page: one instruction/output pair through POST /detect, shown as heatmaps
// with a live threshold, before/after prompts and a sensitivity chart. Opened from a corpus
// report (#/analyze?job=…&line=…), it shows that job's record instead, the example marked.

import { api } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { derivable, thresholdOf } from "./flags.js";
import { recordView } from "./record.js";
import { thresholdControl } from "./threshold.js";
import { UNITS, scoredText } from "./units.js";

// Kept across page switches, so coming back to Analyze shows the last analysis.
const memory = {
  instruction: "", output: "", example: "", truth: [], record: null, recordTruth: [],
  threshold: { mode: "tau", tau: 0.1, percentile: 5 },
  options: { method: "gradient", unit: "", level: "instruction", segments: "2" },
  teacher: null, student: null,
  source: null, // {job, line, focus}: the record shown is a job's, opened from its report
};

const JOB_ID = /^[0-9A-Za-z_-]{1,64}$/;

const cache = { models: null, examples: null };

function select(id, options, value) {
  const el = h("select", { id, name: id },
    options.map(([v, text]) => h("option", { value: v }, text)));
  if (value !== null && value !== undefined) el.value = value;
  return el;
}

function field(label, control, hint) {
  return h("label", { class: "field", for: control.id }, h("span", {}, label), control,
    hint ? h("small", { class: "hint" }, hint) : null);
}

/** What a report's example link names: the job, the record's line, the span to mark. */
function sourceOf(query) {
  const job = query.get("job") || "";
  const line = Number(query.get("line"));
  if (!JOB_ID.test(job) || !Number.isInteger(line) || line < 1) return null;
  const [segment, start, end] = ["segment", "start", "end"].map((k) => Number(query.get(k)));
  const field = query.get("field") === "output" ? "output" : "instruction";
  const focus = [segment, start, end].every(Number.isInteger)
    ? { segment, field, start, end } : null;
  return { job, line, focus };
}

export function mountAnalyze(root, query = null) {
  let alive = true;
  const opening = query ? sourceOf(query) : null;
  const instruction = h("textarea", { id: "instruction", rows: "5", required: true,
    placeholder: "The prompt: a task and its input" });
  const output = h("textarea", { id: "output", rows: "2", required: true,
    placeholder: "The response whose loss is explained" });
  instruction.value = memory.instruction;
  output.value = memory.output;
  const example = h("select", { id: "example" }, h("option", { value: "" }, "Loading…"));
  const teacher = h("select", { id: "teacher" });
  const student = h("select", { id: "student" });
  const opts = {
    method: select("method", [["gradient", "gradient (LeaF)"], ["ppl", "perplexity baseline"],
      ["random", "random baseline"]], memory.options.method),
    unit: select("unit", UNITS, memory.options.unit),
    level: select("level", [["instruction", "instruction"], ["response", "response"]],
      memory.options.level),
    segments: select("segments", [["2", "2"], ["3", "3"]], memory.options.segments),
  };
  const run = h("button", { type: "submit", id: "run", class: "primary" }, "Run analysis");
  const status = h("p", { class: "status", id: "analyze-status", "aria-live": "polite" });
  const problems = h("div", { class: "problems" });
  const result = h("div", { class: "analyze-result", id: "analyze-result" });
  let view = null;

  const control = thresholdControl(memory.threshold, (t) => {
    memory.threshold = t;
    if (view) view.update(t);
  });

  const form = h("form", { class: "panel analyze-form", "aria-label": "Prompt to analyse" },
    h("h2", {}, "Analyse a prompt"),
    field("Demo example", example, "fills in a prompt from the bundled demo task"),
    field("Instruction", instruction),
    field("Output", output),
    h("div", { class: "row" }, field("Teacher", teacher), field("Student", student)),
    h("details", { class: "more" }, h("summary", {}, "More options"),
      h("div", { class: "row wrap" }, field("Method", opts.method),
        field("Unit", opts.unit, "the record says which was used"),
        field("Level", opts.level), field("Segments (response level)", opts.segments))),
    h("div", { class: "row" }, run), status, problems);

  fill(root, h("div", { class: "analyze" }, form,
    h("div", { class: "analyze-side" }, control.el, result)));

  // A user's edits make the example's ground truth meaningless.
  instruction.addEventListener("input", () => { memory.truth = []; example.value = ""; });
  example.addEventListener("change", () => {
    const chosen = (cache.examples || []).find((e) => e.id === example.value);
    if (!chosen) return;
    instruction.value = chosen.instruction;
    output.value = chosen.output;
    memory.truth = Array.isArray(chosen.distractor_spans) ? chosen.distractor_spans : [];
    memory.example = chosen.id;
  });

  function show(record, truth) {
    const derivableNow = derivable(record.params);
    if (!derivableNow) control.set(thresholdOf(record.params), "Method " +
      `${record.params.method} does not flag by score: the threshold has no effect here.`);
    else control.set(memory.threshold, null);
    const source = memory.source;
    view = recordView(record, { threshold: control.get(), truth,
      focus: source ? source.focus : null });
    const models = `${record.params.teacher || memory.teacher || ""} vs ${
      record.params.student || memory.student || ""}`;
    const meta = source ? h("p", { class: "hint record-meta", id: "record-source" },
      `Record ${source.line} (id `, h("code", {}, String(record.id)), `) of job `,
      h("a", { href: `#/jobs/${source.job}`, class: "mono" }, source.job), ` · ${models} · `,
      h("a", { href: `#/jobs/${source.job}/report` }, "back to the report"))
      : h("p", { class: "hint record-meta" },
        `${models} · ${record.cached ? "from the cache" : "computed by a worker"}`);
    fill(result, meta, view.el);
  }

  /** A job's record, as its report's example link names it, with its own threshold. */
  async function openRecord(source) {
    status.textContent = "Loading the record…";
    result.setAttribute("aria-busy", "true");
    try {
      const [page, job] = await Promise.all([api.records(source.job, source.line - 1, 1),
        api.job(source.job).catch(() => null)]);
      if (!alive) return;
      const record = page.records[0];
      if (!record) {
        throw new Error(`job ${source.job} has no record on line ${source.line}`);
      }
      // Rows of a benchmark (the demo task) carry their known distractors: show them too.
      const truth = Array.isArray(record.distractor_spans) ? record.distractor_spans.filter(
        (s) => Array.isArray(s) && s.length === 2 && s.every(Number.isInteger)) : [];
      Object.assign(memory, { instruction: record.instruction, output: record.output,
        example: "", truth, record, recordTruth: truth, source,
        threshold: thresholdOf(record.params) });
      instruction.value = record.instruction;
      output.value = record.output;
      example.value = "";
      for (const [key, el] of Object.entries(opts)) {
        if (record.params[key] !== undefined) el.value = String(record.params[key]);
        memory.options[key] = el.value;
      }
      if (job && job.params) {
        memory.teacher = job.params.teacher || memory.teacher;
        memory.student = job.params.student || memory.student;
        if (memory.teacher) teacher.value = memory.teacher;
        if (memory.student) student.value = memory.student;
      }
      status.textContent = `Record ${source.line} of job ${source.job}, flagged at the ` +
        "job's own threshold.";
      show(record, truth);
      const marked = result.querySelector(".view .tok.focus");
      if (marked) marked.scrollIntoView({ block: "center" });
    } catch (err) {
      if (!alive) return;
      status.textContent = "";
      fill(problems, errorBox(err, "Could not open the record"));
    } finally {
      result.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(problems);
    const t = control.get();
    const body = {
      instruction: instruction.value, output: output.value,
      teacher: teacher.value || undefined, student: student.value || undefined,
      method: opts.method.value, unit: opts.unit.value || undefined, level: opts.level.value,
    };
    if (body.level === "response") body.segments = Number(opts.segments.value);
    if (t.mode === "percentile") body.percentile = t.percentile;
    else body.tau = t.tau;
    Object.assign(memory, { instruction: body.instruction, output: body.output,
      teacher: body.teacher, student: body.student,
      options: Object.fromEntries(Object.entries(opts).map(([k, el]) => [k, el.value])) });
    run.disabled = true;
    result.setAttribute("aria-busy", "true");
    status.textContent = "Analysing…";
    memory.source = null; // what is shown next is this analysis, not a job's record
    try {
      const record = await api.detect(body, {
        onPending: (job) => {
          status.textContent = `Waiting for a worker: job ${job.id} is ${job.status}` +
            (job.progress ? ` (${Math.round(job.progress * 100)}%)` : "") + "…";
        },
      });
      if (!alive) return;
      memory.record = record;
      memory.recordTruth = memory.truth;
      status.textContent = `Done: ${scoredText(record)}.`;
      show(record, memory.recordTruth);
    } catch (err) {
      if (!alive) return;
      status.textContent = "";
      fill(problems, errorBox(err, "Analysis failed"));
    } finally {
      run.disabled = false;
      result.removeAttribute("aria-busy");
    }
  });

  async function load() {
    try {
      cache.models = cache.models || await api.models();
      const names = cache.models.models.map((m) => [m.name,
        `${m.name}${m.available ? "" : " (files missing)"}`]);
      const byRole = (role) => [
        ...names.filter(([n]) => cache.models.models.find((m) => m.name === n).role === role),
        ...names.filter(([n]) => cache.models.models.find((m) => m.name === n).role !== role),
      ];
      fill(teacher, byRole("teacher").map(([v, t]) => h("option", { value: v }, t)));
      fill(student, byRole("student").map(([v, t]) => h("option", { value: v }, t)));
      teacher.value = memory.teacher || cache.models.default_teacher;
      student.value = memory.student || cache.models.default_student;
    } catch (err) {
      if (alive) problems.append(errorBox(err, "Could not list the models"));
    }
    try {
      cache.examples = cache.examples || (await api.examples(20)).examples;
      fill(example, h("option", { value: "" }, "— choose a demo prompt —"),
        cache.examples.map((e) => h("option", { value: e.id },
          `${e.id}: ${e.instruction.slice(0, 60)}${e.instruction.length > 60 ? "…" : ""}`)));
      example.value = memory.example;
      if (!instruction.value && !opening && cache.examples.length) {
        example.value = cache.examples[0].id;
        example.dispatchEvent(new Event("change"));
      }
    } catch (err) {
      fill(example, h("option", { value: "" }, "no demo examples"));
      if (alive) problems.append(errorBox(err, "Could not load the demo examples"));
    }
  }

  if (query && !opening) {
    fill(problems, errorBox(new Error("this address names no record: it needs a job id and " +
      "a line number (?job=…&line=…)"), "Could not open the record"));
  }
  if (opening) openRecord(opening);
  else if (memory.record) show(memory.record, memory.recordTruth);
  else fill(result, h("p", { class: "empty" }, "Pick a demo example (or type a prompt) and ",
    "press Run analysis. The instruction is then drawn three times: the teacher's saliency, the ",
    "student's, and their difference, where low scores mark the tokens the student attends ",
    "to and the teacher does not."));
  load();
  return () => { alive = false; };
}
