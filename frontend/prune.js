// Spans and pruned prompts, exactly as leaf_engine/prune.py makes them, so the page's
// counterfactuals equal the server's for the same flags.
//
// Offsets are Python string indices, i.e. code points: texts are handled as arrays of code
// points (Array.from), never as UTF-16 strings, so emoji and other astral characters count
// once as they do on the server.

// Python's str.isspace() set, which differs from JS's \s (\x1c-\x1f and \x85 are space to
// Python, \ufeff is not).
const PY_SPACE = /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]$/u;

export const chars = (text) => Array.from(text);

/** Python's `ch.isspace()` for one code point. */
export const isSpace = (ch) => PY_SPACE.test(ch);

/** Python's `not text.strip()`: empty or whitespace only. */
export function isBlank(cps) {
  for (const ch of cps) if (!isSpace(ch)) return false;
  return true;
}

/**
 * Contiguous runs of flagged tokens as [start, end] spans (prune.find_spans). A run
 * continues across whitespace-only text and ends at the first unflagged visible token.
 */
export function findSpans(cps, offsets, flags) {
  const items = offsets.map(([s, e], i) => [s, e, flags[i] ? 1 : 0]);
  // Python sorts the ((start, end), flag) tuples: by start, then end, then flag.
  items.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]);
  const spans = [];
  let current = null;
  for (const [start, end, flagged] of items) {
    if (flagged) {
      if (current !== null && isBlank(cps.slice(current[1], start))) {
        current[1] = Math.max(current[1], end);
      } else {
        if (current !== null) spans.push([current[0], current[1]]);
        current = [start, end];
      }
    } else if (current !== null && !isBlank(cps.slice(start, end))) {
      spans.push([current[0], current[1]]);
      current = null;
    }
  }
  if (current !== null) spans.push([current[0], current[1]]);
  return spans;
}

const CLOSING = new Set(".,;:!?)]}"); // punctuation that leans on the word before it

/** prune._widen: the span plus the whitespace cut with it, never left of `floor`. */
function widen(cps, start, end, floor) {
  if (start === 0 || isSpace(cps[start - 1])) {
    while (end < cps.length && isSpace(cps[end])) end += 1;
  }
  if (end === cps.length) {
    while (start > floor && isSpace(cps[start - 1])) start -= 1;
  } else if (CLOSING.has(cps[end])) {
    // "Tom has 12 apples." without "12 apples" reads "Tom has.": spaces go, line breaks stay.
    while (start > floor && (cps[start - 1] === " " || cps[start - 1] === "\t")) start -= 1;
  }
  return [start, end];
}

/**
 * Remove spans with prune.remove_spans' whitespace tidy-up. Answers the pruned text and,
 * per original code point, whether it was removed (for striking it through).
 */
export function cut(cps, spans) {
  const merged = [];
  for (const [start, end] of [...spans].sort((a, b) => a[0] - b[0] || a[1] - b[1])) {
    const last = merged[merged.length - 1];
    if (last && start <= last[1]) last[1] = Math.max(last[1], end);
    else merged.push([start, end]);
  }
  // Mirror Python's slicing of the shrinking string step by step, tracking which original
  // code point sits at each position, so later cuts see the same text the server's do.
  let out = cps.slice();
  let origin = cps.map((_, i) => i);
  for (let k = merged.length - 1; k >= 0; k -= 1) {
    // Text left of this cut is untouched so far: the previous cut's end is still its offset.
    const [s, e] = widen(out, merged[k][0], merged[k][1], k ? merged[k - 1][1] : 0);
    out = out.slice(0, s).concat(out.slice(e));
    origin = origin.slice(0, s).concat(origin.slice(e));
  }
  const removed = cps.map(() => true);
  for (const i of origin) removed[i] = false;
  return { text: out.join(""), removed };
}

/** prune.remove_spans: the text without any of the spans. */
export function removeSpans(text, spans) {
  return cut(chars(text), spans).text;
}
