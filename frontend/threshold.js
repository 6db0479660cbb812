// The threshold control: tau (flag score <= tau) or percentile (flag the bottom p%, capped
// at 0.5), as a slider with its value. Changes are reported at once, for live re-flagging.

import { h } from "./dom.js";

const HINT = "Flags are re-derived here from the scores: moving the slider sends no request.";

export function thresholdControl(initial, onChange) {
  const state = { ...initial };
  const tauValue = h("output", { id: "tau-value", for: "tau" });
  const pValue = h("output", { id: "percentile-value", for: "percentile" });
  const tau = h("input", { type: "range", id: "tau", min: "0", max: "1", step: "0.01",
    "aria-describedby": "tau-help" });
  const pct = h("input", { type: "range", id: "percentile", min: "0.5", max: "100",
    step: "0.5" });
  tau.value = String(state.tau);
  pct.value = String(state.percentile);
  const tauMode = h("input", { type: "radio", name: "threshold-mode", value: "tau",
    id: "mode-tau" });
  const pMode = h("input", { type: "radio", name: "threshold-mode", value: "percentile",
    id: "mode-percentile" });
  const hint = h("p", { class: "hint", id: "tau-help" }, HINT);
  let locked = null;
  const show = () => {
    tauMode.checked = state.mode === "tau";
    pMode.checked = state.mode === "percentile";
    tauMode.disabled = pMode.disabled = Boolean(locked);
    tau.disabled = Boolean(locked) || state.mode !== "tau";
    pct.disabled = Boolean(locked) || state.mode !== "percentile";
    hint.textContent = locked || HINT;
    tauValue.textContent = Number(state.tau).toFixed(2);
    pValue.textContent = `${Number(state.percentile)}%`;
  };
  const changed = () => { show(); onChange({ ...state }); };
  tau.addEventListener("input", () => { state.tau = Number(tau.value); changed(); });
  pct.addEventListener("input", () => { state.percentile = Number(pct.value); changed(); });
  for (const radio of [tauMode, pMode]) {
    radio.addEventListener("change", () => { state.mode = radio.value; changed(); });
  }
  show();
  const el = h("fieldset", { class: "threshold", id: "threshold" },
    h("legend", {}, "Threshold"),
    h("div", { class: "threshold-row" },
      tauMode, h("label", { for: "mode-tau" }, "tau"),
      tau, tauValue),
    h("div", { class: "threshold-row" },
      pMode, h("label", { for: "mode-percentile" }, "percentile"),
      pct, pValue),
    hint);
  return {
    el,
    get: () => ({ ...state }),
    /** New values; `locked` (a reason) disables the control, null enables it. */
    set(next, lockedBecause = null) {
      Object.assign(state, next);
      locked = lockedBecause;
      tau.value = String(state.tau);
      pct.value = String(state.percentile);
      show();
    },
  };
}
