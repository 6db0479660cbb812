"""Typed job specs: what each job function is given, one frozen dataclass per kind.

On the queue a spec is a plain JSON object (`to_json`): RQ's JSON serializer carries it and
the worker runs only functions called with exactly one such object. `from_json` is strict:
an unknown key, a missing one or a value of the wrong type raises `InputError` naming the
field, so a malformed job fails with a reason instead of a KeyError deep in the worker. The
keys are the ones the API has always queued, so jobs queued before an upgrade still parse.

Torch-free: the API builds these.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar, get_args, get_origin

from leaf_engine.analysis import DetectConfig
from leaf_engine.calibrate import OPTIONS as CALIBRATE_OPTIONS
from leaf_engine.distill_config import DistillConfig
from leaf_engine.errors import ConfigError, InputError
from leaf_service.cache import AnalysisParams

# DistillConfig fields a distill job may set. The worker fills in the data, output, models
# and device; paths on the server (a run to resume, validation rows, a cache directory) are
# the server's to choose, never a job's.
DISTILL_OPTIONS = frozenset(f.name for f in fields(DistillConfig)) - {
    "data", "out", "teacher", "student", "device", "resume", "val_data", "cache_dir"}
# EvalConfig fields an evaluate job may set; the rest are the server's (model and data
# paths, the device, the code sandbox's limits).
EVALUATE_OPTIONS = frozenset({"max_new_tokens", "batch_size", "answer_check", "group_by"})


S = TypeVar("S", bound="_Spec")


class _Spec:
    """`to_json` and a strict `from_json` for the frozen dataclasses below."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _to_json(getattr(self, f.name))
                for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls: type[S], data: Any) -> S:
        return _parse(cls, data, where="")


@dataclass(frozen=True, kw_only=True)
class PromptSpec(_Spec):
    """One prompt of POST /detect (`workers.jobs.detect_prompt`). `cache_key` is computed
    by the API with `leaf_service.cache.analysis_key`, so the worker stores the analysis
    exactly where the API looks."""

    teacher: str  # model names from the server's allow-list
    student: str
    instruction: str
    output: str
    analysis: AnalysisParams
    cache_key: str


@dataclass(frozen=True, kw_only=True)
class DetectSpec(_Spec):
    """A detect job over an uploaded dataset (`workers.jobs.detect_dataset`)."""

    teacher: str
    student: str
    teacher_id: str  # `leaf_service.cache.model_identity`, taken when the job was submitted
    student_id: str
    config: DetectConfig
    analysis: AnalysisParams  # the cache's view of `config` and `truncate`
    batch_size: int
    truncate: bool
    export_pruned: bool
    dataset_id: str

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        # Keys are computed from `analysis`, analyses from `config`: they must agree, or
        # the cache would hold analyses under the wrong keys.
        expected = AnalysisParams(level=self.config.level, segments=self.config.segments,
                                  surprisal=self.config.needs_surprisal,
                                  truncate=self.truncate)
        if self.analysis != expected:
            raise InputError(f"analysis: {dataclasses.asdict(self.analysis)} disagrees with "
                             f"config and truncate, which give "
                             f"{dataclasses.asdict(expected)}", field="analysis")


@dataclass(frozen=True, kw_only=True)
class DistillSpec(_Spec):
    """A distill job (`workers.jobs.distill_dataset`) on a dataset or on a finished detect
    job's records. `config` holds only the DISTILL_OPTIONS the user set: the engine owns
    the defaults."""

    teacher: str
    student: str
    detect_job: str | None
    config: dict[str, Any]
    dataset_id: str | None

    def __post_init__(self) -> None:
        if (self.dataset_id is None) == (self.detect_job is None):
            raise InputError("detect_job: give exactly one of dataset_id and detect_job",
                             field="detect_job")
        _options("config", self.config, DISTILL_OPTIONS)


@dataclass(frozen=True, kw_only=True)
class EvaluateSpec(_Spec):
    """An evaluate job (`workers.jobs.evaluate_dataset`) of a model from the allow-list or
    of a finished distill job's checkpoint. `config` holds only the EVALUATE_OPTIONS the
    user set."""

    model: str | None
    checkpoint_job: str | None
    teacher: str | None  # also evaluated, for output similarity
    config: dict[str, Any]
    dataset_id: str

    def __post_init__(self) -> None:
        if (self.model is None) == (self.checkpoint_job is None):
            raise InputError("model: give exactly one of model and checkpoint_job",
                             field="model")
        _options("config", self.config, EVALUATE_OPTIONS)


@dataclass(frozen=True, kw_only=True)
class CalibrateSpec(_Spec):
    """A calibrate job (`workers.jobs.calibrate_dataset`): sweep tau (or a percentile) on a
    dataset. `config` holds only the CALIBRATE_OPTIONS the user set."""

    teacher: str
    student: str
    config: dict[str, Any]
    dataset_id: str

    def __post_init__(self) -> None:
        _options("config", self.config, CALIBRATE_OPTIONS)


JobSpec = DetectSpec | DistillSpec | EvaluateSpec | CalibrateSpec  # what POST /jobs submits


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise InputError(f"{name}: must be at least 1, got {value}", field=name)


def _options(name: str, values: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise InputError(f"{name}.{unknown[0]}: not an option of this job; the options are "
                         f"{', '.join(sorted(allowed))}", field=f"{name}.{unknown[0]}")


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _parse(cls: type[Any], data: Any, *, where: str) -> Any:
    """An instance of dataclass `cls` from JSON `data`, checked key by key. `where` is the
    path of `data` in the whole spec, for error messages ("" at the top)."""
    what = where or f"the {cls.__name__}"
    if not isinstance(data, dict):
        raise InputError(f"{what}: expected a JSON object, got {_kind(data)}",
                         field=where or None)
    declared = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(declared))
    if unknown:
        path = _join(where, unknown[0])
        raise InputError(f"{path}: unknown field in {what}", field=path)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in declared.items():
        path = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{path}: missing from {what}", field=path)
            continue  # a nested dataclass's own default
        values[name] = _value(hints[name], data[name], path)
    try:
        return cls(**values)
    except ConfigError as err:  # a nested engine config's own check: name the full path
        if not where:
            raise
        path = _join(where, err.field) if err.field else where
        raise InputError(f"{where}: {err}", field=path) from err


def _value(hint: Any, value: Any, path: str) -> Any:
    """`value` if it is of type `hint` (a nested dataclass is parsed), else InputError."""
    if dataclasses.is_dataclass(hint):
        return _parse(hint, value, where=path)
    if _accepts(hint, value):
        return value
    raise InputError(f"{path}: expected {_describe(hint)}, got {_kind(value)}", field=path)


def _accepts(hint: Any, value: Any) -> bool:
    origin = get_origin(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if origin is dict or hint is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:  # JSON has no separate booleans-as-integers
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in get_args(hint))
    if origin is dict or hint is dict:
        return "an object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
