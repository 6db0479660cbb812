// The REST API, as promises. Errors become ApiError with the API's one-line `detail`;
// a 401 asks for the token once (shared by concurrent requests) and retries.

import { saveFile } from "./dom.js";

const TOKEN_KEY = "leaf-api-token";
const POLL_MS = 800;

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body.detail === "string" ? body.detail : describe(status);
    super(detail);
    this.status = status;
    this.detail = detail;
    this.field = body && body.field;
    this.line = body && body.line;
    this.errors = body && body.errors;
  }
}

function describe(status) {
  if (status === 0) return "the service is not answering; is `leaf serve` running?";
  // A body that is not the API's JSON (a proxy's page, a crash) is not shown to people.
  return `the server answered ${status} without an explanation`;
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

let asking = null;

/** Ask for the token in the page's dialog; resolves to the token, or null if cancelled. */
function askToken(refused) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const input = dialog.querySelector("input");
  dialog.querySelector(".token-message").textContent = refused
    ? "The service refused that token. Enter the API token (LEAF_API_TOKEN)."
    : "This service needs an API token (LEAF_API_TOKEN). It is kept for this browser tab only.";
  input.value = "";
  dialog.returnValue = ""; // Escape keeps the last value: start from "cancelled"
  asking = new Promise((resolve) => {
    dialog.addEventListener("close", function done() {
      dialog.removeEventListener("close", done);
      asking = null;
      const given = dialog.returnValue === "ok" ? input.value.trim() : "";
      if (given) sessionStorage.setItem(TOKEN_KEY, given);
      resolve(given || null);
    });
  });
  dialog.showModal();
  input.focus();
  return asking;
}

/**
 * One request. `json` is sent as a JSON body, `form` as multipart. Answers the parsed JSON
 * (null for 204), or the Response itself when `raw` is set.
 */
export async function request(method, path, { json, form, raw = false, accept } = {}) {
  for (;;) {
    const headers = {};
    const sent = token();
    if (sent) headers.Authorization = `Bearer ${sent}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form;
    }
    if (accept) headers.Accept = accept;
    let response;
    try {
      response = await fetch(path, { method, headers, body });
    } catch {
      throw new ApiError(0, null);
    }
    if (response.status === 401) {
      const given = await askToken(Boolean(sent));
      if (given) continue;
      throw new ApiError(401, await errorBody(response));
    }
    if (!response.ok) throw new ApiError(response.status, await errorBody(response));
    if (raw) return response;
    if (response.status === 204) return null;
    return response.json();
  }
}

async function errorBody(response) {
  try {
    const body = await response.json();
    return body && typeof body === "object" ? body : null;
  } catch {
    return null;
  }
}

const query = (params) => {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") {
    q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const api = {
  health: () => request("GET", "health"),
  models: () => request("GET", "models"),
  examples: (limit = 20) => request("GET", `examples${query({ limit })}`),

  /**
   * POST /detect. A slow worker makes the API answer 202 with a job id: follow the job
   * (reporting it through onPending) and ask again once it finished, now from the cache.
   */
  async detect(body, { onPending } = {}) {
    for (;;) {
      const response = await request("POST", "detect", { json: body, raw: true });
      if (response.status !== 202) return response.json();
      const pending = await response.json();
      const job = await api.follow(pending.job_id, onPending);
      if (job.status !== "finished") {
        throw new ApiError(502, { detail: job.error || `the detection job ended ${job.status}` });
      }
    }
  },

  /** Poll a job until it ends; onUpdate sees every state. */
  async follow(jobId, onUpdate, isCancelled = () => false) {
    for (;;) {
      const job = await api.job(jobId);
      if (onUpdate) onUpdate(job);
      if (["finished", "failed", "canceled"].includes(job.status) || isCancelled()) return job;
      await sleep(POLL_MS);
    }
  },

  datasets: () => request("GET", "datasets"),
  dataset: (id, offset = 0, limit = 10) =>
    request("GET", `datasets/${encodeURIComponent(id)}${query({ offset, limit })}`),
  upload(file, name) {
    const form = new FormData();
    form.append("file", file, file.name);
    return request("POST", `datasets${query({ name })}`, { form });
  },
  deleteDataset: (id) => request("DELETE", `datasets/${encodeURIComponent(id)}`),

  jobs: (params = {}) => request("GET", `jobs${query(params)}`),
  job: (id) => request("GET", `jobs/${encodeURIComponent(id)}`),
  submit: (body) => request("POST", "jobs", { json: body }),
  cancel: (id) => request("DELETE", `jobs/${encodeURIComponent(id)}`),
  records: (id, offset = 0, limit = 5) =>
    request("GET", `jobs/${encodeURIComponent(id)}/records${query({ offset, limit })}`),
  report: (id) => request("GET", `jobs/${encodeURIComponent(id)}/report`),

  /**
   * Download a job's file. Without a token the browser fetches it itself (streamed to disk,
   * however large: a checkpoint may be gigabytes); with one, only fetch can send the header,
   * and the file passes through memory.
   */
  async download(jobId, name) {
    const path = `jobs/${encodeURIComponent(jobId)}/files/${encodeURIComponent(name)}`;
    if (!token()) {
      // The page already read this job without a token, so the service needs none.
      const link = document.createElement("a");
      link.href = path;
      link.download = name;
      document.body.append(link);
      link.click();
      link.remove();
      return;
    }
    const response = await request("GET", path, { raw: true });
    saveFile(await response.blob(), name);
  },
};
