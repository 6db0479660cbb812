"""A setting is written once, in the engine's config dataclass (`leaf_engine.config_fields`);
the command line and the API must say the same about it: the same default, the same range,
the same choices. Where the API deliberately accepts less (`app.schemas.SERVER_CAPS`), the
narrowing must be listed and must really narrow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic import BaseModel, ValidationError

from app.deps import detect_config
from app.schemas import (
    SERVER_CAPS,
    CalibrateJobCreate,
    DetectJobCreate,
    DetectParams,
    DistillJobCreate,
    EvaluateJobCreate,
)
from leaf_cli.detect import detect
from leaf_cli.distill import distill
from leaf_cli.evaluate import evaluate
from leaf_engine.analysis import DetectConfig
from leaf_engine.config_fields import FieldSpec, field_specs
from leaf_engine.distill_config import DistillConfig
from leaf_engine.eval_config import EvalConfig
from tests.cli.runner import run

COMMANDS: list[tuple[click.Command, type]] = [
    (detect, DetectConfig), (distill, DistillConfig), (evaluate, EvalConfig)]
MODELS: list[tuple[type[BaseModel], type]] = [
    (DetectParams, DetectConfig), (DetectJobCreate, DetectConfig),
    (DistillJobCreate, DistillConfig), (EvaluateJobCreate, EvalConfig),
    (CalibrateJobCreate, DetectConfig), (CalibrateJobCreate, EvalConfig)]
# Request fields named like a setting but meaning something else: the API takes model names
# from its allow-list where the engine takes paths or hub ids.
API_OWN = {"teacher", "student", "model"}
# What a few minimal valid request bodies need besides the settings.
BODIES: dict[type[BaseModel], dict[str, Any]] = {
    DetectParams: {},
    DetectJobCreate: {"kind": "detect", "dataset_id": "0" * 20},
    DistillJobCreate: {"kind": "distill", "dataset_id": "0" * 20},
    EvaluateJobCreate: {"kind": "evaluate", "dataset_id": "0" * 20},
    CalibrateJobCreate: {"kind": "calibrate", "dataset_id": "0" * 20},
}


def _specs(config: type) -> dict[str, FieldSpec]:
    return {s.name: s for s in field_specs(config)}


def _engine_bounds(spec: FieldSpec) -> dict[str, float]:
    return {k: v for k in ("ge", "gt", "le", "lt") if (v := getattr(spec, k)) is not None}


def _shared_options(command: click.Command, config: type
                    ) -> list[tuple[click.Parameter, FieldSpec]]:
    specs = _specs(config)
    return [(p, specs[p.name]) for p in command.params if p.name in specs]


def _shared_fields(model: type[BaseModel], config: type) -> list[tuple[str, FieldSpec]]:
    specs = _specs(config)
    return [(name, specs[name]) for name in model.model_fields
            if name in specs and name not in API_OWN]


# ---------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(("command", "config"), COMMANDS, ids=lambda c: getattr(c, "name", ""))
def test_cli_options_have_the_engines_defaults_and_ranges(command: click.Command,
                                                          config: type) -> None:
    shared = _shared_options(command, config)
    assert shared, f"leaf {command.name} shares no option with {config.__name__}"
    for param, spec in shared:
        where = f"leaf {command.name} {param.opts[0]}"
        if param.required:
            pass  # a command may require what the engine leaves optional (evaluate's --out)
        else:
            assert param.default == spec.default, (where, param.default, spec.default)
        kind = param.type
        if spec.kind == "choice":
            assert isinstance(kind, click.Choice), where
            assert tuple(kind.choices) == tuple(map(str, spec.choices)), where
        elif isinstance(kind, (click.IntRange, click.FloatRange)):
            assert _click_bounds(kind) == _closed(spec), (where, _click_bounds(kind), spec)
        else:
            assert not (spec.kind in ("int", "float") and _engine_bounds(spec)), (
                f"{where} states no range; use click.IntRange/FloatRange (config_options)")


def _closed(spec: FieldSpec) -> tuple[float | None, bool, float | None, bool]:
    """The engine's range as (low, low open, high, high open); an integer's open bound is the
    next integer in, as click states it."""
    low, low_open = (spec.gt, True) if spec.gt is not None else (spec.ge, False)
    high, high_open = (spec.lt, True) if spec.lt is not None else (spec.le, False)
    if spec.kind == "int":
        low = None if low is None else int(low) + low_open
        high = None if high is None else int(high) - high_open
        low_open = high_open = False
    return low, low_open, high, high_open


def _click_bounds(kind: click.IntRange | click.FloatRange
                  ) -> tuple[float | None, bool, float | None, bool]:
    return kind.min, kind.min_open, kind.max, kind.max_open


@pytest.mark.parametrize(("flag", "value"), [
    ("--tau", "1.5"), ("--tau", "-0.1"), ("--percentile", "0"), ("--percentile", "101")])
def test_detect_refuses_what_the_engine_refuses(llama_pair, tmp_path: Path, capsys, flag: str,
                                                value: str) -> None:
    code, err = run(["detect", "--teacher", str(llama_pair[0]), "--student",
                     str(llama_pair[1]), "--data", str(_one_row(tmp_path)), "--out",
                     str(tmp_path / "out.jsonl"), flag, value], capsys)
    assert code == 2
    assert err.startswith(f"leaf detect: error: Invalid value for '{flag}': "), err
    assert f"{float(value)} is not in the range" in err or f"{value} is not in the range" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out.jsonl").exists()


def _one_row(tmp_path: Path) -> Path:
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"instruction": "Ann has 7 pens. How many?",
                                "output": "The answer is 7."}) + "\n")
    return data


def test_detect_without_options_applies_the_engines_defaults(llama_pair, tmp_path: Path,
                                                             capsys) -> None:
    data, out = _one_row(tmp_path), tmp_path / "out.jsonl"
    code, err = run(["detect", "--teacher", str(llama_pair[0]), "--student",
                     str(llama_pair[1]), "--data", str(data), "--out", str(out)], capsys)
    assert code == 0, err
    params = json.loads(out.read_text())["params"]
    # What the engine adds of its own: how the two models were compared.
    assert params == {**DetectConfig().params(), "compare": "tokens"}


# ---------------------------------------------------------------------------- the API


@pytest.mark.parametrize(("model", "config"), MODELS, ids=lambda c: getattr(c, "__name__", ""))
def test_api_fields_state_the_engines_defaults_and_ranges(model: type[BaseModel],
                                                          config: type) -> None:
    """Read from the JSON schema, which is what clients see."""
    properties = model.model_json_schema()["properties"]
    shared = _shared_fields(model, config)
    assert shared, f"{model.__name__} shares no field with {config.__name__}"
    for name, spec in shared:
        where = f"{model.__name__}.{name}"
        node = properties[name]
        if node.get("default") is not None:  # null: the engine chooses
            assert node["default"] == spec.default, (where, node["default"], spec.default)
        value = next((n for n in node.get("anyOf", [node]) if n.get("type") != "null"), node)
        expected = _engine_bounds(spec) | SERVER_CAPS.get((config, name), {})
        for cap, bound in SERVER_CAPS.get((config, name), {}).items():
            replaced = {"ge": "gt", "le": "lt"}.get(cap)
            expected.pop(replaced or "", None)
            _assert_narrows(where, spec, cap, bound)
        if spec.kind == "choice":
            assert tuple(value["enum"]) == spec.choices, where
        elif spec.kind in ("int", "float"):
            assert value["type"] == {"int": "integer", "float": "number"}[spec.kind], where
            keys = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum",
                    "lt": "exclusiveMaximum"}
            stated = {k: value[v] for k, v in keys.items() if v in value}
            assert stated == expected, (where, stated, expected)
        elif spec.kind == "str":
            stated = {k: value[v] for k, v in (("min_length", "minLength"),
                                               ("max_length", "maxLength")) if v in value}
            assert stated == {k: v for k, v in expected.items() if k.endswith("length")}, where


def _assert_narrows(where: str, spec: FieldSpec, cap: str, bound: float) -> None:
    """A server cap accepts a subset of what the engine accepts."""
    if cap in ("ge", "gt"):
        low = spec.ge if spec.ge is not None else spec.gt
        assert low is None or bound >= low, (where, cap, bound, "widens", low)
    elif cap in ("le", "lt"):
        high = spec.le if spec.le is not None else spec.lt
        assert high is None or bound <= high, (where, cap, bound, "widens", high)
    else:
        assert spec.kind == "str" and cap in ("min_length", "max_length"), (where, cap)
        assert cap == "max_length" or bound >= (spec.min_length or 0), (where, cap)


def test_every_server_cap_is_a_field_of_the_api() -> None:
    fields = {(config, name) for model, config in MODELS for name, _ in
              _shared_fields(model, config)}
    assert set(SERVER_CAPS) <= fields, set(SERVER_CAPS) - fields


@pytest.mark.parametrize(("model", "config"), MODELS, ids=lambda c: getattr(c, "__name__", ""))
def test_api_models_accept_the_bounds_and_refuse_past_them(model: type[BaseModel],
                                                           config: type) -> None:
    """What the schema states is what the model enforces, at each edge."""
    for name, spec in _shared_fields(model, config):
        if spec.kind not in ("int", "float"):
            continue
        low, low_open, high, high_open = _closed(spec)
        caps = SERVER_CAPS.get((config, name), {})
        low = caps.get("ge", low)
        high = caps.get("le", high)
        step = 1 if spec.kind == "int" else 1e-9
        for edge, is_open, inward in ((low, low_open, step), (high, high_open, -step)):
            if edge is None:
                continue
            inside = edge + inward if is_open else edge
            outside = edge if is_open else edge - inward
            if spec.kind == "int":
                inside, outside = int(inside), int(outside)
            model.model_validate({**BODIES[model], name: inside})
            with pytest.raises(ValidationError):
                model.model_validate({**BODIES[model], name: outside})


def test_a_detect_request_with_no_settings_gets_the_engines_defaults() -> None:
    assert detect_config(DetectParams()) == DetectConfig()


def test_api_evaluate_and_distill_defaults_are_the_engines() -> None:
    """Unset settings are left out of a job's spec, so the engine's defaults apply: a job
    with none set runs exactly the engine's default config."""
    for model in (DistillJobCreate, EvaluateJobCreate):
        body = model.model_validate(BODIES[model])
        set_fields = body.model_dump(exclude_none=True)
        assert set(set_fields) <= {"kind", "dataset_id", "detect_job"}, set_fields


def test_the_worker_takes_every_setting_the_api_accepts() -> None:
    """A job's settings go through its spec (`leaf_service.specs`): one the API accepts but
    the spec refuses would fail every such job."""
    from leaf_service.specs import DISTILL_OPTIONS, EVALUATE_OPTIONS

    for model, config, allowed in ((DistillJobCreate, DistillConfig, DISTILL_OPTIONS),
                                   (EvaluateJobCreate, EvalConfig, EVALUATE_OPTIONS)):
        accepted = {name for name, _ in _shared_fields(model, config)}
        assert accepted <= allowed, (model.__name__, accepted - allowed)
        assert allowed <= set(_specs(config)), (config.__name__, allowed - set(_specs(config)))
