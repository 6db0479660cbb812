// Re-deriving a record's flags, spans and pruned prompts from its scores in the browser, as
// leaf_engine/analysis.py does on the server (threshold_flags, percentile_cut, unit_ids,
// _counterfactuals). Scores arrive normalised, so a new tau needs no request.

import { chars, cut, findSpans, isBlank, isSpace } from "./prune.js";

export const PERCENTILE_CAP = 0.5; // the official code never flags a score above the midpoint

/** A record's threshold as the server applied it: {mode, tau, percentile}. */
export function thresholdOf(params = {}) {
  const percentile = typeof params.percentile === "number" ? params.percentile : null;
  return {
    mode: percentile === null ? "tau" : "percentile",
    tau: typeof params.tau === "number" ? params.tau : 0.1,
    percentile: percentile === null ? 5 : percentile,
  };
}

/** Methods whose flags follow the scores; ppl and random pick tokens by other means. */
export const derivable = (params = {}) => (params.method || "gradient") === "gradient";

/** analysis.percentile_cut: the sorted score at index floor(n * p / 100). */
export function percentileCut(scores, percentile) {
  const ordered = [...scores].sort((a, b) => a - b);
  const index = Math.min(Math.floor((ordered.length * percentile) / 100), ordered.length - 1);
  return ordered[index];
}

/**
 * Records from before `params.compare` existed: their word unit grouped tokens by \S+ runs,
 * punctuation could be flagged, and a response-level context was normalised as one range.
 */
const legacy = (params = {}) => params.compare === undefined;

/** units.is_word: a unit holding a letter or digit; only those are ever flagged. */
const LETTER_OR_DIGIT = /[\p{L}\p{N}]/u;
export const isWord = (cps) => cps.some((ch) => LETTER_OR_DIGIT.test(ch));

/** Word (legacy \S+) or sentence spans of a code-point array, as the server's regexes find them. */
function unitSpans(cps, unit) {
  const spans = [];
  let i = 0;
  while (i < cps.length) {
    if (isSpace(cps[i])) { i += 1; continue; }
    let end;
    if (unit === "word") {
      end = i;
      while (end < cps.length && !isSpace(cps[end])) end += 1;
    } else {
      end = sentenceEnd(cps, i);
    }
    spans.push([i, end]);
    i = end;
  }
  return spans;
}

// _SENTENCE = r"[^\s].*?(?:[.!?](?=\s|$)|\n|$)" with re.S: the shortest run from a visible
// character to a terminal punctuation mark followed by space or the end, a newline, or the
// end. Python's `$` also matches just before a final newline.
function sentenceEnd(cps, i) {
  const n = cps.length;
  for (let k = i + 1; k <= n; k += 1) {
    if (k < n && ".!?".includes(cps[k]) && (k + 1 === n || isSpace(cps[k + 1]))) return k + 1;
    if (k < n && cps[k] === "\n") return k + 1;
    if (k === n || (k === n - 1 && cps[k] === "\n")) return k;
  }
  return n;
}

/**
 * analysis.unit_ids: which scored unit each entry of a record belongs to. A record's entries
 * are its tokens (unit token) or its words and punctuation (unit word, and sentence, whose
 * unit holds the entries whose first visible character it contains).
 */
export function unitIds(tokens, texts, unit, { old = false } = {}) {
  const grouped = unit === "sentence" || (old && unit === "word");
  if (!grouped) return tokens.map((_, i) => i);
  const bounds = {};
  for (const [field, cps] of Object.entries(texts)) bounds[field] = unitSpans(cps, unit);
  const keys = new Map();
  return tokens.map((tok, i) => {
    const field = tok.field || "instruction";
    const cps = texts[field];
    let at = -1;
    for (let p = tok.start; p < tok.end; p += 1) if (!isSpace(cps[p])) { at = p; break; }
    let idx = -1;
    if (at >= 0) idx = bounds[field].findIndex(([s, e]) => s <= at && at < e);
    const key = `${field}\u0000${idx >= 0 ? idx : -1 - i}`;
    if (!keys.has(key)) keys.set(key, keys.size);
    return keys.get(key);
  });
}

/** How many scored units (tokens, words or sentences) have a flagged entry. */
export function flaggedUnits(tokens, texts, flags, params = {}) {
  const ids = unitIds(tokens, texts, params.unit || "token", { old: legacy(params) });
  return new Set(ids.filter((_, i) => flags[i])).size;
}

/**
 * Flags per entry for a threshold ({mode, tau, percentile}), from the entries' scores, as
 * analysis._decide_view sets them. params supplies unit, min_gap and normalise as the server
 * used them: with normalise "segment" each field (instruction, earlier output) is thresholded
 * on its own, as it was normalised.
 */
export function deriveFlags(tokens, texts, threshold, params = {}) {
  const old = legacy(params);
  const units = unitIds(tokens, texts, params.unit || "token", { old });
  const n = units.length ? Math.max(...units) + 1 : 0;
  const unitText = Array.from({ length: n }, () => []);
  const score = new Array(n);
  const gap = new Array(n);
  const field = new Array(n);
  tokens.forEach((tok, i) => {
    const u = units[i];
    unitText[u].push(...chars(tok.text));
    score[u] = tok.score;
    gap[u] = tok.student - tok.teacher;
    field[u] = tok.field || "instruction";
  });
  const visible = unitText.map((cps) => !isBlank(cps));
  const flaggable = unitText.map((cps, u) => visible[u] && (old || isWord(cps)));
  const all = Array.from({ length: n }, (_, u) => u);
  const ranges = params.normalise === "segment"
    ? [...new Set(field)].map((f) => all.filter((u) => field[u] === f)) : [all];
  const flagged = new Array(n).fill(false);
  const minGap = params.min_gap || 0;
  for (const range of ranges) {
    const shown = range.filter((u) => visible[u]);
    if (!shown.length) continue;
    const cutAt = threshold.mode === "percentile"
      ? Math.min(percentileCut(shown.map((u) => score[u]), threshold.percentile),
        PERCENTILE_CAP)
      : threshold.tau;
    // Nothing here is much more salient to the student than to the teacher.
    if (minGap > 0 && Math.max(...shown.map((u) => gap[u])) < minGap) continue;
    for (const u of shown) flagged[u] = flaggable[u] && score[u] <= cutAt;
  }
  return tokens.map((tok, i) => flagged[units[i]] && !isBlank(chars(tok.text)));
}

/**
 * analysis._counterfactuals for one context: spans per field, one counterfactual per span
 * and the collective one. texts maps field -> code points.
 */
function counterfactuals(tokens, flags, texts) {
  const spans = [];
  for (const field of ["instruction", "output"]) {
    if (!texts[field]) continue;
    const mine = tokens.map((t, i) => [t, flags[i]]).filter(([t]) =>
      (t.field || "instruction") === field);
    const found = findSpans(texts[field], mine.map(([t]) => [t.start, t.end]),
      mine.map(([, f]) => f));
    for (const [start, end] of found) spans.push({ field, start, end });
  }
  const prune = (chosen) => {
    const out = {};
    for (const field of Object.keys(texts)) {
      out[field] = cut(texts[field], chosen.filter((s) => s.field === field)
        .map((s) => [s.start, s.end]));
    }
    return out;
  };
  return { spans, pruned: spans.map((s) => prune([s])), collective: prune(spans) };
}

/**
 * The record the server would return at this threshold: the same shape, with tokens'
 * `confounder`, `spans`, `pruned`, `collective` (and response-level `views`) re-derived,
 * plus `cuts` (removed code points per counterfactual) for drawing strike-through.
 * With `serverFlags`, the tokens keep the server's flags (spans and prompts still follow).
 */
export function applyThreshold(record, threshold, { serverFlags = false } = {}) {
  const params = record.params || {};
  const instruction = chars(record.instruction);
  const tokens = record.tokens;
  const flags = derivable(params) && !serverFlags
    ? deriveFlags(tokens, { instruction }, threshold, params)
    : tokens.map((t) => t.confounder);
  const main = counterfactuals(tokens, flags, { instruction });
  const out = {
    ...record,
    tokens: tokens.map((t, i) => ({ ...t, confounder: flags[i] })),
    spans: main.spans.map((s) => [s.start, s.end]),
    pruned: main.pruned.map((p, i) => ({
      instruction: p.instruction.text, span: [main.spans[i].start, main.spans[i].end],
    })),
    collective: main.collective.instruction.text,
    params: withThreshold(params, threshold),
  };
  if (Array.isArray(record.views)) out.views = record.views.map((v) => applyView(record, v,
    threshold, params, serverFlags));
  if (serverFlags) out.params = params;
  delete out.cached;
  delete out.job_id;
  Object.defineProperty(out, "cuts", {
    enumerable: false, // kept out of the JSON a user copies
    value: {
      pruned: main.pruned.map((p) => p.instruction.removed),
      collective: main.collective.instruction.removed,
    },
  });
  return out;
}

function applyView(record, view, threshold, params, serverFlags) {
  const texts = {
    instruction: chars(record.instruction),
    output: chars(record.output).slice(0, view.target[0]),
  };
  const flags = derivable(params) && !serverFlags
    ? deriveFlags(view.tokens, texts, threshold, params)
    : view.tokens.map((t) => t.confounder);
  const found = counterfactuals(view.tokens, flags, texts);
  const both = (p) => ({ instruction: p.instruction.text, output_prefix: p.output.text });
  return {
    ...view,
    tokens: view.tokens.map((t, i) => ({ ...t, confounder: flags[i] })),
    spans: found.spans,
    pruned: found.pruned.map((p, i) => ({ ...both(p), span: found.spans[i] })),
    collective: both(found.collective),
  };
}

function withThreshold(params, threshold) {
  if (!derivable(params)) return params;
  const out = { ...params };
  delete out.tau;
  delete out.percentile;
  const entries = Object.entries(out);
  // Keep the server's key order: the threshold comes first.
  const first = threshold.mode === "percentile"
    ? ["percentile", threshold.percentile] : ["tau", threshold.tau];
  return Object.fromEntries([first, ...entries]);
}

/**
 * Flagged tokens, flagged units (each record's params.unit: tokens, words or sentences) and
 * spans at each tau, for the sensitivity chart.
 */
export function sensitivity(records, taus) {
  return taus.map((tau) => {
    let tokens = 0;
    let units = 0;
    let spans = 0;
    for (const record of records) {
      const params = record.params || {};
      const texts = { instruction: chars(record.instruction) };
      const flags = deriveFlags(record.tokens, texts, { mode: "tau", tau }, params);
      tokens += flags.filter(Boolean).length;
      units += flaggedUnits(record.tokens, texts, flags, params);
      spans += findSpans(texts.instruction, record.tokens.map((t) => [t.start, t.end]),
        flags).length;
    }
    return { tau, tokens, units, spans };
  });
}

/** Does a browser re-derivation agree with the server's record at its own threshold? */
export function agrees(server, derived) {
  return server.tokens.every((t, i) => t.confounder === derived.tokens[i].confounder) &&
    JSON.stringify(server.spans) === JSON.stringify(derived.spans) &&
    JSON.stringify(server.pruned) === JSON.stringify(derived.pruned) &&
    server.collective === derived.collective;
}
