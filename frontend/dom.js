// Small DOM helpers: build elements without a framework, format numbers and times.

/**
 * h("button", {class: "x", onclick: fn, dataset: {k: "v"}, "aria-label": "..."}, "text", el)
 * Attributes set to null/undefined/false are left out; `true` sets an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key in el && typeof value !== "string" && key !== "list") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element with attributes (no children helpers: charts add them explicitly). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return el;
}

/** A number for people: fixed digits, trailing zeros kept so columns line up. */
export function num(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export function percent(value, digits = 0) {
  return typeof value === "number" ? `${(value * 100).toFixed(digits)}%` : "–";
}

export function bytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** "2026-11-28 11:37:45" in the browser's time zone, or a dash. */
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Seconds between two ISO times (or until now), as "1.2 s" / "3 min 4 s". */
export function duration(fromIso, toIso) {
  if (!fromIso) return "–";
  const end = toIso ? new Date(toIso) : new Date();
  return seconds((end - new Date(fromIso)) / 1000);
}

export function seconds(s) {
  if (typeof s !== "number" || !Number.isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** Save text or a Blob as a file the browser downloads. */
export function saveFile(data, filename, type = "application/json") {
  const blob = data instanceof Blob ? data : new Blob([data], { type });
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  // Revoke later: Chromium starts the download asynchronously.
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Copy text; the async clipboard needs a secure context, so fall back to execCommand. */
export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch { /* permission refused: try the old way */ }
  }
  const area = h("textarea", { readonly: true, style: { position: "fixed", opacity: "0" } });
  area.value = text;
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  return ok;
}

/** A message box for an error from the API (never a stack trace). */
export function errorBox(err, context = "") {
  const box = h("div", { class: "error", role: "alert" });
  const detail = err && err.detail ? err.detail : String(err && err.message ? err.message : err);
  box.append(h("strong", {}, context ? `${context}: ` : ""), detail);
  const extra = [];
  if (err && err.line) extra.push(`line ${err.line}`);
  if (err && err.field) extra.push(`field ${err.field}`);
  if (extra.length) box.append(h("span", { class: "where" }, ` (${extra.join(", ")})`));
  if (err && Array.isArray(err.errors) && err.errors.length > 1) {
    box.append(h("ul", {}, err.errors.map((e) =>
      h("li", {}, e.line ? `line ${e.line}: ` : "", e.field ? `${e.field}: ` : "", e.message))));
  }
  return box;
}
