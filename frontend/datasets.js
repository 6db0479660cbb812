// The Datasets pages: upload JSONL (with the bad line shown when the API refuses it), the
// list, and one dataset with its rows, its jobs and forms to start detect, distill and
// evaluate jobs.

import { api } from "./api.js";
import { bytes, errorBox, fill, h, when } from "./dom.js";
import { jobsTable, keepFocus, poller } from "./jobs.js";
import { UNITS } from "./units.js";

const ROWS_PAGE = 10;
const FINAL = new Set(["finished", "failed", "canceled"]);

/** The API's upload error, with the offending line of the file quoted. */
async function uploadError(err, file) {
  const box = errorBox(err, "Upload refused");
  if (err.line && file) {
    try {
      const lines = (await file.text()).split("\n");
      const text = lines[err.line - 1];
      if (text !== undefined) {
        box.append(h("pre", { class: "bad-line" }, h("span", { class: "line-no" },
          `${err.line} │ `), text.length > 300 ? `${text.slice(0, 300)}…` : text));
      }
    } catch { /* the quote is a courtesy */ }
  }
  return box;
}

function datasetsTable(datasets, onDelete) {
  if (!datasets.length) return h("p", { class: "empty" }, "No datasets yet: upload one above.");
  return h("div", { class: "table-wrap" }, h("table", { class: "datasets", id: "datasets-table" },
    h("thead", {}, h("tr", {}, ["Name", "Rows", "With output", "With answer", "Size",
      "Uploaded", ""].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, datasets.map((d) => h("tr", { dataset: { id: d.id } },
      h("td", {}, h("a", { href: `#/datasets/${d.id}` }, d.name)),
      h("td", {}, String(d.rows)), h("td", {}, String(d.with_output)),
      h("td", {}, String(d.with_reference)), h("td", {}, bytes(d.bytes)),
      h("td", {}, when(d.created_at)),
      h("td", {}, h("button", { type: "button", class: "secondary danger",
        "aria-label": `delete dataset ${d.name}`, onclick: () => onDelete(d) }, "Delete")))))));
}

export function mountDatasets(root) {
  let alive = true;
  const file = h("input", { type: "file", id: "dataset-file", required: true,
    accept: ".jsonl,.ndjson,.json,.txt,application/x-ndjson,application/json,text/plain" });
  const name = h("input", { type: "text", id: "dataset-name", maxlength: "200",
    placeholder: "default: the file name" });
  const send = h("button", { type: "submit", class: "primary", id: "upload" }, "Upload");
  const status = h("p", { class: "status", "aria-live": "polite" });
  const problems = h("div", { id: "upload-errors" });
  const list = h("div");
  const form = h("form", { class: "panel upload" }, h("h2", {}, "Upload a dataset"),
    h("p", { class: "hint" }, "JSONL, one example a line: ", h("code", {}, "instruction"), ", ",
      h("code", {}, "output"), " (and optionally ", h("code", {}, "answer"), ", ",
      h("code", {}, "id"), ", …). Every line is checked before the file is kept."),
    h("div", { class: "row wrap" },
      h("label", { class: "field", for: "dataset-file" }, h("span", {}, "File"), file),
      h("label", { class: "field", for: "dataset-name" }, h("span", {}, "Name"), name), send),
    status, problems);
  fill(root, form, h("section", { class: "panel" }, h("h2", {}, "Datasets"), list));

  async function refresh() {
    try {
      const answer = await api.datasets();
      if (alive) keepFocus(list, () => datasetsTable(answer.datasets, remove));
    } catch (err) {
      if (alive) fill(list, errorBox(err, "Could not list the datasets"));
    }
  }

  async function remove(d) {
    if (!window.confirm(`Delete dataset “${d.name}” (${d.rows} rows)?`)) return;
    try {
      await api.deleteDataset(d.id);
      refresh();
    } catch (err) {
      fill(problems, errorBox(err, "Could not delete"));
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(problems);
    const chosen = file.files[0];
    if (!chosen) return;
    send.disabled = true;
    status.textContent = `Uploading ${chosen.name}…`;
    try {
      const meta = await api.upload(chosen, name.value.trim() || undefined);
      status.textContent = `Uploaded ${meta.name}: ${meta.rows} rows.`;
      window.location.hash = `#/datasets/${meta.id}`;
    } catch (err) {
      status.textContent = "";
      fill(problems, await uploadError(err, chosen));
    } finally {
      send.disabled = false;
    }
  });
  refresh();
  return () => { alive = false; };
}

// ---------------------------------------------------------------------------- one dataset

function labelled(label, control, hint) {
  return h("label", { class: "field", for: control.id }, h("span", {}, label), control,
    hint ? h("small", { class: "hint" }, hint) : null);
}

const choose = (id, options, value) => {
  const el = h("select", { id }, options.map((o) => Array.isArray(o)
    ? h("option", { value: o[0] }, o[1]) : h("option", { value: o }, o)));
  if (value !== undefined && value !== null) el.value = value;
  return el;
};

const numberInput = (id, attrs) => h("input", { type: "number", id, ...attrs });

/** The job forms; `submit(body)` posts one. */
function jobForm(meta, models, submit) {
  const names = models.models.map((m) => m.name);
  const kind = choose("new-job-kind", [["detect", "detect confounders"],
    ["distill", "distill (train the student)"], ["evaluate", "evaluate a model"]], "detect");
  const teacher = choose("new-teacher", names, models.default_teacher);
  const student = choose("new-student", names, models.default_student);
  const model = choose("new-model", names, models.default_student);
  const evalTeacher = choose("new-eval-teacher", [["", "none"], ...names.map((n) => [n, n])],
    "");
  const mode = choose("new-threshold-mode", [["tau", "tau"], ["percentile", "percentile"]], "tau");
  const tau = numberInput("new-tau", { min: "0", max: "1", step: "0.01", value: "0.1" });
  const pct = numberInput("new-percentile", { min: "0.5", max: "100", step: "0.5", value: "5" });
  const method = choose("new-method", ["gradient", "ppl", "random"], "gradient");
  const unit = choose("new-unit", UNITS, "");
  const exportPruned = h("input", { type: "checkbox", id: "new-export", checked: true });
  const epochs = numberInput("new-epochs", { min: "1", max: "1000", step: "1", value: "1" });
  const lam = numberInput("new-lam", { min: "0", max: "1", step: "0.05", value: "0.5" });
  const groupBy = choose("new-group-by", [["", "none"], ...meta.fields.map((f) => [f, f])], "");
  const go = h("button", { type: "submit", class: "primary", id: "start-job" }, "Start job");
  const problems = h("div");

  const pair = h("div", { class: "row wrap" }, labelled("Teacher", teacher),
    labelled("Student", student));
  const groups = {
    detect: h("div", { class: "row wrap" }, labelled("Threshold", mode), labelled("tau", tau),
      labelled("percentile", pct), labelled("Method", method), labelled("Unit", unit),
      h("label", { class: "check", for: "new-export" }, exportPruned,
        " write the pruned export")),
    distill: h("div", { class: "row wrap" }, labelled("Epochs", epochs),
      labelled("λ (weight of the original prompt)", lam),
      h("p", { class: "hint" }, "Trains on this dataset's rows; to train on a detect job's ",
        "pruned records, submit `detect_job` through the API.")),
    evaluate: h("div", { class: "row wrap" }, labelled("Model", model),
      labelled("Compare with teacher", evalTeacher), labelled("Accuracy per", groupBy)),
  };
  const showMode = () => {
    tau.disabled = mode.value !== "tau";
    pct.disabled = mode.value !== "percentile";
  };
  mode.addEventListener("change", showMode);
  showMode();
  const showKind = () => {
    for (const [k, el] of Object.entries(groups)) el.hidden = k !== kind.value;
    pair.hidden = kind.value === "evaluate";
  };
  kind.addEventListener("change", showKind);
  showKind();
  const form = h("form", { class: "panel job-form" }, h("h3", {}, "Start a job"),
    labelled("Kind", kind), pair, Object.values(groups), h("div", { class: "row" }, go),
    problems);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fill(problems);
    let body;
    if (kind.value === "detect") {
      body = { kind: "detect", dataset_id: meta.id, teacher: teacher.value,
        student: student.value, method: method.value, unit: unit.value || undefined,
        export_pruned: exportPruned.checked };
      if (mode.value === "percentile") body.percentile = Number(pct.value);
      else body.tau = Number(tau.value);
    } else if (kind.value === "distill") {
      body = { kind: "distill", dataset_id: meta.id, teacher: teacher.value,
        student: student.value, epochs: Number(epochs.value), lam: Number(lam.value) };
    } else {
      body = { kind: "evaluate", dataset_id: meta.id, model: model.value };
      if (evalTeacher.value) body.teacher = evalTeacher.value;
      if (groupBy.value) body.group_by = groupBy.value;
    }
    go.disabled = true;
    try {
      const job = await submit(body);
      window.location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      fill(problems, errorBox(err, "The job was refused"));
    } finally {
      go.disabled = false;
    }
  });
  return form;
}

function rowsTable(items, offset) {
  if (!items.length) return h("p", { class: "empty" }, "No rows here.");
  const shown = ["instruction", "output", "answer"];
  return h("div", { class: "table-wrap" }, h("table", { class: "rows" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "#"),
      shown.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, items.map((row, k) => h("tr", {}, h("td", {}, String(offset + k + 1)),
      shown.map((c) => h("td", { class: "text" }, row[c] === undefined ? "–" :
        typeof row[c] === "string" ? row[c] : JSON.stringify(row[c]))))))));
}

export function mountDataset(root, id) {
  let alive = true;
  const head = h("div");
  const forms = h("div");
  const jobs = h("div", { id: "dataset-jobs" });
  const rows = h("div");
  const pager = h("nav", { class: "pager", "aria-label": "row pages" });
  fill(root, h("section", { class: "panel" }, h("p", {}, h("a", { href: "#/datasets" },
    "← all datasets")), head), forms,
  h("section", { class: "panel" }, h("h3", {}, "Jobs on this dataset"), jobs),
  h("section", { class: "panel" }, h("h3", {}, "Rows"), pager, rows));

  async function page(offset) {
    try {
      const answer = await api.dataset(id, offset, ROWS_PAGE);
      if (!alive) return answer;
      fill(rows, rowsTable(answer.items, offset));
      fill(pager,
        h("button", { type: "button", class: "secondary", disabled: offset === 0,
          onclick: () => page(Math.max(0, offset - ROWS_PAGE)) }, "← Previous"),
        h("span", { class: "page-info" }, `rows ${answer.rows ? offset + 1 : 0}–` +
          `${Math.min(offset + ROWS_PAGE, answer.rows)} of ${answer.rows}`),
        h("button", { type: "button", class: "secondary",
          disabled: offset + ROWS_PAGE >= answer.rows,
          onclick: () => page(offset + ROWS_PAGE) }, "Next →"));
      return answer;
    } catch (err) {
      if (alive) fill(head, errorBox(err, "Could not load the dataset"));
      return null;
    }
  }

  let stop = () => {};
  (async () => {
    const meta = await page(0);
    if (!meta || !alive) return;
    fill(head, h("h2", {}, meta.name), h("dl", { class: "defs" },
      ["id", "rows", "with_output", "with_reference", "bytes", "fields", "created_at"]
        .flatMap((k) => [h("dt", {}, k.replace("_", " ")), h("dd", {},
          k === "bytes" ? bytes(meta[k]) : k === "created_at" ? when(meta[k]) :
            Array.isArray(meta[k]) ? meta[k].join(", ") : String(meta[k]))])));
    try {
      const models = await api.models();
      if (alive) fill(forms, jobForm(meta, models, (body) => api.submit(body)));
    } catch (err) {
      if (alive) fill(forms, errorBox(err, "Could not list the models"));
    }
    let shown = "";
    stop = poller(async () => {
      try {
        const answer = await api.jobs({ limit: 200 });
        const mine = answer.jobs.filter((j) => j.dataset_id === id);
        const key = JSON.stringify(mine);
        if (key !== shown) {
          shown = key;
          keepFocus(jobs, () => jobsTable(mine));
        }
        return mine.some((j) => !FINAL.has(j.status));
      } catch (err) {
        fill(jobs, errorBox(err, "Could not list the jobs"));
        return false;
      }
    });
    if (!alive) stop();
  })();
  return () => { alive = false; stop(); };
}
