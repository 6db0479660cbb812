// What a record's counts count. A record says which unit its flags were decided on
// (params.unit: token, word or sentence) and what the two models were compared on
// (params.compare: "tokens" with one shared tokenizer, "words" with two different ones).
// Its `tokens` list is the models' tokens only at unit token with one tokenizer; otherwise
// it lists words and punctuation. Records from before params.compare existed always list
// tokens.

import { flaggedUnits, isWord } from "./flags.js";
import { chars } from "./prune.js";

// The unit pickers' choices. "" leaves the unit to the server's default (DetectConfig.unit);
// the record then says which unit it used.
export const UNITS = [["", "default"], ["word", "word (whole words only)"],
  ["token", "token (the paper's exact cut)"], ["sentence", "sentence"]];

/** The unit the record's flags were decided on, and the noun for one of them. */
export const unitOf = (params = {}) =>
  ["word", "sentence"].includes(params.unit) ? params.unit : "token";

/** The plural noun for flagged units, for labels: "words flagged". */
export const nouns = (params = {}) => `${unitOf(params)}s`;

/** What the entries of the record's `tokens` list are: "tokens" or "words". */
export function listed(params = {}) {
  if (params.compare === undefined) return "tokens";
  return unitOf(params) === "token" && params.compare === "tokens" ? "tokens" : "words";
}

/** "24 tokens scored" or, where the record lists words and punctuation, "19 words scored". */
export function scoredText(record) {
  const what = listed(record.params);
  const n = what === "tokens" ? record.tokens.length
    : record.tokens.filter((t) => isWord(chars(t.text))).length;
  return `${n} ${what} scored`;
}

/**
 * How many units of a record have a flag: flagged tokens of one sentence count once at unit
 * sentence. `flags` are per entry, in the record's order.
 */
export function flaggedCount(record, flags) {
  return flaggedUnits(record.tokens, { instruction: chars(record.instruction) }, flags,
    record.params || {});
}

/** One line for people: the unit of the flags and what the models were compared on. */
export function unitsLine(params = {}) {
  const parts = [`Flags decided per ${unitOf(params)}`];
  if (params.compare === "words") {
    parts.push("the models were compared on words (their tokenizers differ)");
  } else if (params.compare === "tokens") {
    parts.push("the models were compared token by token (one shared tokenizer)");
  }
  return `${parts.join("; ")}.`;
}
