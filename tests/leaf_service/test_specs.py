"""Typed job specs: what the queue carries round-trips, old payloads parse, bad ones are
refused with the field named."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from leaf_engine.analysis import DetectConfig
from leaf_engine.errors import InputError
from leaf_service.cache import AnalysisParams
from leaf_service.specs import (
    DISTILL_OPTIONS,
    EVALUATE_OPTIONS,
    DetectSpec,
    DistillSpec,
    EvaluateSpec,
    PromptSpec,
)

# Payloads exactly as the API queued them before specs were typed (app/routers/jobs.py and
# app/routers/detect.py at 1baf948): jobs still waiting in Redis look like these.
OLD_PROMPT = {"teacher": "tiny-teacher", "student": "tiny-student",
              "instruction": "Ann has 7 pens.", "output": "7.",
              "analysis": {"level": "instruction", "segments": 2, "surprisal": False,
                           "truncate": False},
              "cache_key": "leaf:analysis:" + "0" * 64}
OLD_DETECT = {"teacher": "tiny-teacher", "student": "tiny-student",
              "teacher_id": "a" * 24, "student_id": "b" * 24,
              "config": {"tau": 0.1, "percentile": None, "method": "ppl", "level": "response",
                         "segments": 3, "seed": 0, "unit": "word", "min_gap": 0.0},
              "analysis": {"level": "response", "segments": 3, "surprisal": True,
                           "truncate": True},
              "batch_size": 4, "truncate": True, "export_pruned": True,
              "dataset_id": "0190a1b2c3d4e5f60718"}
OLD_DISTILL = {"teacher": "tiny-teacher", "student": "tiny-student",
               "detect_job": "0190a1b2c3d4e5f60719", "config": {"epochs": 1, "lam": 0.7},
               "dataset_id": None}
OLD_EVALUATE = {"model": None, "checkpoint_job": "0190a1b2c3d4e5f6071a",
                "teacher": "tiny-teacher", "config": {"max_new_tokens": 8},
                "dataset_id": "0190a1b2c3d4e5f60718"}
# Engine settings added since a payload was written: parsed with their defaults.
ADDED: dict[type, dict[str, dict[str, Any]]] = {DetectSpec: {"config": {"normalise": "segment"}}}
OLD = [(PromptSpec, OLD_PROMPT), (DetectSpec, OLD_DETECT), (DistillSpec, OLD_DISTILL),
       (EvaluateSpec, OLD_EVALUATE)]


@pytest.mark.parametrize(("cls", "payload"), OLD, ids=lambda v: getattr(v, "__name__", ""))
def test_old_payloads_parse_and_serialise_unchanged(cls: type, payload: dict[str, Any]
                                                    ) -> None:
    spec = cls.from_json(json.loads(json.dumps(payload)))
    expected = {key: {**value, **ADDED[cls][key]} if key in ADDED.get(cls, {}) else value
                for key, value in payload.items()}
    assert spec.to_json() == expected
    assert list(spec.to_json()) == list(payload)  # the same keys, in the same order
    assert cls.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_fields_are_typed() -> None:
    detect = DetectSpec.from_json(OLD_DETECT)
    assert isinstance(detect.config, DetectConfig) and detect.config.unit == "word"
    assert detect.analysis == AnalysisParams("response", 3, surprisal=True, truncate=True)
    assert detect.batch_size == 4 and detect.export_pruned is True
    prompt = PromptSpec.from_json(OLD_PROMPT)
    assert prompt.analysis == AnalysisParams() and prompt.cache_key.startswith("leaf:")
    with pytest.raises(AttributeError):
        prompt.teacher = "other"  # type: ignore[misc]


def test_built_specs_round_trip() -> None:
    config = DetectConfig(tau=0.3)
    spec = DetectSpec(teacher="t", student="s", teacher_id="x", student_id="y",
                      config=config, analysis=AnalysisParams(), batch_size=8,
                      truncate=False, export_pruned=False, dataset_id="d")
    data = spec.to_json()
    assert data["config"] == config.__dict__ and data["analysis"] == AnalysisParams().__dict__
    assert DetectSpec.from_json(json.loads(json.dumps(data))) == spec
    distill = DistillSpec(teacher="t", student="s", detect_job=None,
                          config={"mode": "mix"}, dataset_id="d")
    assert DistillSpec.from_json(distill.to_json()) == distill


def _without(payload: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k != key}


@pytest.mark.parametrize(("cls", "payload", "field", "words"), [
    (DetectSpec, {**OLD_DETECT, "colour": "red"}, "colour", "unknown field"),
    (DetectSpec, _without(OLD_DETECT, "batch_size"), "batch_size", "missing"),
    (DistillSpec, _without(OLD_DISTILL, "dataset_id"), "dataset_id", "missing"),
    (PromptSpec, _without(OLD_PROMPT, "cache_key"), "cache_key", "missing"),
    (PromptSpec, {**OLD_PROMPT, "analysis": {"level": "instruction", "depth": 2}},
     "analysis.depth", "unknown field"),
    (PromptSpec, {**OLD_PROMPT, "analysis": "instruction"}, "analysis", "expected a JSON object"),
    (DetectSpec, {**OLD_DETECT, "batch_size": "4"}, "batch_size", "expected an integer"),
    (DetectSpec, {**OLD_DETECT, "batch_size": True}, "batch_size", "expected an integer"),
    (DetectSpec, {**OLD_DETECT, "batch_size": 0}, "batch_size", "at least 1"),
    (DetectSpec, {**OLD_DETECT, "export_pruned": 1}, "export_pruned", "true or false"),
    (EvaluateSpec, {**OLD_EVALUATE, "teacher": 3}, "teacher", "a string or null"),
    (DetectSpec, {**OLD_DETECT, "config": {**OLD_DETECT["config"], "method": "magic"}},
     "config.method", "one of"),
    (DetectSpec, {**OLD_DETECT, "config": {**OLD_DETECT["config"], "tau": 2.0}},
     "config.tau", "tau must be a number in [0, 1]"),
    (DetectSpec, {**OLD_DETECT, "truncate": False}, "analysis", "disagrees"),
    (DistillSpec, {**OLD_DISTILL, "config": {"epochs": 1, "resume": "/etc"}},
     "config.resume", "not an option"),
    (DistillSpec, {**OLD_DISTILL, "dataset_id": "0190a1b2c3d4e5f60718"}, "detect_job",
     "exactly one"),
    (EvaluateSpec, {**OLD_EVALUATE, "config": {"code_timeout_s": 1}}, "config.code_timeout_s",
     "not an option"),
    (EvaluateSpec, {**OLD_EVALUATE, "checkpoint_job": None}, "model", "exactly one"),
])
def test_bad_payloads_name_the_field(cls: type, payload: dict[str, Any], field: str,
                                     words: str) -> None:
    with pytest.raises(InputError) as caught:
        cls.from_json(payload)
    assert caught.value.field == field
    # Messages start with the path ("config: " before an engine config's own message).
    assert str(caught.value).split(": ", 1)[0] in (field, field.split(".")[0])
    assert words in str(caught.value)


def test_not_an_object() -> None:
    for payload in (None, [], "spec"):
        with pytest.raises(InputError, match="the DetectSpec: expected a JSON object"):
            DetectSpec.from_json(payload)


def test_distill_options_are_settings_a_job_may_choose() -> None:
    assert {"lam", "mode", "epochs", "lr", "batch_size", "max_length"} <= DISTILL_OPTIONS
    # The worker fills these in; server paths are never a job's to choose.
    assert not {"data", "out", "teacher", "student", "device", "resume", "val_data",
                "cache_dir"} & DISTILL_OPTIONS


def test_evaluate_options_are_evaluation_settings() -> None:
    from leaf_engine.evaluate import EvalConfig

    assert {f.name for f in dataclasses.fields(EvalConfig)} >= EVALUATE_OPTIONS
