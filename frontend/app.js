// The page's router: #/analyze[?job=…&line=…], #/datasets[/id], #/jobs[/id[/report]]. Each
// page mounts into <main> and answers a function that stops its polling when another page
// replaces it.

import { api } from "./api.js";
import { mountAnalyze } from "./analyze.js";
import { mountDataset, mountDatasets } from "./datasets.js";
import { h } from "./dom.js";
import { hideTip } from "./heatmap.js";
import { mountJob, mountJobs } from "./jobs.js";
import { mountReport } from "./report.js";

const HEALTH_MS = 15000;
const ID = /^[0-9A-Za-z_-]{1,64}$/;

const routes = [
  [/^#\/datasets\/([^/]+)$/, "datasets", (root, id) => mountDataset(root, id)],
  [/^#\/datasets\/?$/, "datasets", (root) => mountDatasets(root)],
  [/^#\/jobs\/([^/]+)\/report$/, "jobs", (root, id) => mountReport(root, id)],
  [/^#\/jobs\/([^/]+)$/, "jobs", (root, id) => mountJob(root, id)],
  [/^#\/jobs\/?$/, "jobs", (root) => mountJobs(root)],
  // A job's record, opened from its report: the query names it (analyze.js reads it).
  [/^#\/analyze\/?\?(.*)$/, "analyze", (root, query) => mountAnalyze(root,
    new URLSearchParams(query))],
  [/^(#\/analyze\/?)?$/, "analyze", (root) => mountAnalyze(root)],
];

let unmount = () => {};

function route() {
  const main = document.getElementById("main");
  const hash = window.location.hash || "";
  unmount();
  unmount = () => {};
  hideTip(null); // a focused token removed with its page sends no blur
  for (const [pattern, tab, mount] of routes) {
    const m = hash.match(pattern);
    if (!m) continue;
    if (m[1] && !ID.test(m[1]) && tab !== "analyze") break;
    for (const link of document.querySelectorAll("nav.tabs a")) {
      if (link.dataset.tab === tab) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    document.title = `LeaF · ${tab[0].toUpperCase()}${tab.slice(1)}`;
    unmount = mount(main, m[1]) || (() => {});
    // Move focus to the new page for keyboard and screen-reader users, but not on first load.
    if (route.seen) main.focus({ preventScroll: false });
    route.seen = true;
    return;
  }
  main.replaceChildren(h("section", { class: "panel" }, h("h2", {}, "Not found"),
    h("p", {}, "No page at this address. ", h("a", { href: "#/analyze" }, "Go to Analyze"), ".")));
}

async function health() {
  const el = document.getElementById("health");
  try {
    const s = await api.health();
    el.textContent = `${s.status} · ${s.workers} worker${s.workers === 1 ? "" : "s"}`;
    el.className = `health health-${s.status}`;
    el.title = `Redis ${s.redis}; queued: ${Object.entries(s.queues || {})
      .map(([q, n]) => `${q} ${n}`).join(", ")}; version ${s.version}`;
  } catch (err) {
    el.textContent = "service unreachable";
    el.className = "health health-unavailable";
    el.title = err.detail || String(err);
  }
}

// The skip link must not change the hash, which names the page.
document.querySelector("a.skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});
window.addEventListener("hashchange", route);
route();
health();
setInterval(health, HEALTH_MS);
