"""Request and response bodies, in families per resource (`JobCreate`, `JobPublic`, ...).

Request models are strict: unknown fields are rejected and nothing is coerced (`false` is
not a number, `"3"` is not an integer; `3.0` is the integer 3, as in JSON). Limits that depend
on settings (text lengths, file sizes) are checked in the handlers, which name the setting;
the OpenAPI schema states them too (`app.routing.configured_openapi`), as it states the rules
that tie two fields together (tau or percentile, not both).

A request field that is also an engine setting (tau, lam, max_new_tokens, ...) takes its type,
range, default and help from the engine's dataclass field (`engine_setting`), so the API and
`leaf detect`/`distill`/`evaluate` cannot disagree; where the API accepts less (a cap on what
one request may ask of a shared server), `SERVER_CAPS` says so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator
from pydantic_core import PydanticCustomError

from leaf_engine.analysis import DetectConfig
from leaf_engine.calibrate import (
    DEFAULT_MIN_GAPS,
    DEFAULT_MIN_UNTOUCHED,
    DEFAULT_PERCENTILES,
    DEFAULT_TAUS,
    MAX_GAPS,
    MAX_VALUES,
)
from leaf_engine.config_fields import field_specs
from leaf_engine.distill_config import DistillConfig
from leaf_engine.eval_config import EvalConfig
from leaf_engine.report import Report

# Schema nodes whose values come from the settings name the setting under this key;
# `app.routing.configured_openapi` fills them in (the model names, the text limits).
SETTING_KEY = "x-leaf-setting"
ModelName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                                 description="a name from GET /models",
                                 json_schema_extra={SETTING_KEY: "models"})]
ObjectId = Annotated[str, Field(pattern=r"^[0-9a-f]{20}$", description="a server-generated id")]
JobKind = Literal["detect", "distill", "evaluate", "calibrate"]
JobStatus = Literal["queued", "started", "finished", "failed", "canceled"]


def _integral(value: object) -> object:
    """JSON has one number type: 3.0 is the integer 3 (JSON Schema says so too). Only that is
    let through; 3.5, "3" and true stay errors under the strict models."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integral = BeforeValidator(_integral)


def field_error(field: str, message: str) -> PydanticCustomError:
    """A rule across fields, broken: the error names the field at fault in its context,
    where `app.errors` reads it (a model validator's location is the whole body)."""
    return PydanticCustomError("field_rule", message, {"field": field})
Int = Annotated[int, Integral]
# A bound on an optional integer goes inside the optional, before `Integral`:
# `Annotated[int, Field(ge=1), Integral] | None`. Pydantic writes `Field(ge=1)` on `Int | None`
# (or after the validator) into the schema as a keyword `ge` that JSON Schema ignores, so the
# schema allowed what the model refused (batch_size 0).


# Where the API accepts less than the engine: bounds where the engine sets none, so that one
# request cannot ask a shared server for a billion epochs. Only these narrowings are allowed
# (tests/test_config_agreement.py); every other type, range and default is the engine's.
SERVER_CAPS: dict[tuple[type, str], dict[str, float]] = {
    (DetectConfig, "seed"): {"ge": 0, "le": 2**31 - 1},  # numpy takes no negative seed
    (DistillConfig, "epochs"): {"le": 1000},
    (DistillConfig, "batch_size"): {"le": 65536},
    (DistillConfig, "micro_batch_size"): {"le": 4096},
    (DistillConfig, "max_length"): {"le": 1_048_576},
    (DistillConfig, "temperature"): {"le": 100},
    (DistillConfig, "warmup_steps"): {"le": 10_000_000},
    (DistillConfig, "seed"): {"le": 2**31 - 1},
    (EvalConfig, "max_new_tokens"): {"le": 65536},
    (EvalConfig, "batch_size"): {"le": 4096},
    (EvalConfig, "group_by"): {"min_length": 1, "max_length": 64},
}


def engine_setting(config: type, name: str, *, optional: bool = True) -> Any:
    """The request type of the engine setting `config.name`, as an annotation (like
    pydantic's `conint`): its type, range and help from the dataclass field, narrowed by
    `SERVER_CAPS`. Optional fields default to None, which leaves the engine's default (the
    description names it); `optional=False` takes the engine's default as the field's."""
    spec = next(s for s in field_specs(config) if s.name == name)
    bounds: dict[str, Any] = {k: v for k in ("ge", "gt", "le", "lt")
                              if (v := getattr(spec, k)) is not None}
    if spec.min_length:
        bounds["min_length"] = spec.min_length
    for key, value in SERVER_CAPS.get((config, name), {}).items():
        bounds.pop({"ge": "gt", "le": "lt"}.get(key, ""), None)  # the cap replaces it
        bounds[key] = value
    inner: Any
    if spec.kind == "int":  # bounds inside the optional, before `Integral` (see above)
        inner = Annotated[int, Field(**bounds), Integral]
    elif spec.kind == "float":
        inner = Annotated[float, Field(**bounds)]
    elif spec.kind == "str":
        inner = Annotated[str, Field(**bounds)]
    elif spec.kind == "choice":
        inner = Literal[spec.choices]
    else:
        inner = bool
    if not optional:
        return Annotated[inner, Field(default=spec.default, description=spec.help)]
    default = spec.default_help or spec.default
    description = spec.help if default is None else f"{spec.help} Default: {default}."
    return Annotated[inner | None, Field(default=None, description=description)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- errors


class FieldError(Public):
    field: str = Field(description="the request field, e.g. 'tau' or 'file'")
    message: str
    line: int | None = Field(default=None, description="1-based JSONL line, for uploads")


class ErrorBody(Public):
    """Every 4xx/5xx body. `detail` is one line meant for a person."""

    detail: str
    field: str | None = Field(default=None, description="the field at fault, when one is")
    line: int | None = Field(default=None, description="1-based JSONL line, for uploads")
    errors: list[FieldError] | None = Field(default=None, description="every invalid field")


def error_responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer, all `ErrorBody`;
    `described` overrides a description (`e404="no such job"`)."""
    text = {400: "the request cannot be parsed (broken multipart, bad Content-Length)",
            401: "LEAF_API_TOKEN is set and the request lacks it (or has another)",
            404: "no such resource", 409: "conflicts with the resource's state",
            413: "over a size limit; `detail` names the setting",
            415: "the body is not JSON (send 'Content-Type: application/json')",
            422: "invalid request (or JSON that cannot be parsed); `field` names what is wrong",
            502: "the worker failed", 503: "Redis (or a model) is unavailable; retry later"}
    for name, description in described.items():
        text[int(name.removeprefix("e"))] = description
    return {c: {"model": ErrorBody, "description": text.get(c, "error")} for c in codes}


# What any route can answer: a request that cannot be read, auth, a body over the size
# limit, a query or body that is invalid, and Redis being away.
COMMON_ERRORS = error_responses(400, 401, 413, 422, 503)


def link(path: str, method: str, **values: str) -> dict[str, Any]:
    """An OpenAPI link to another operation, its parameters (or, with `body`, its JSON body)
    filled from this response: how clients (and the fuzzer) follow a created resource."""
    ref = "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method
    body = values.pop("body", None)
    out: dict[str, Any] = {"operationRef": ref}
    if values:
        out["parameters"] = values
    if body is not None:
        out["requestBody"] = body
    return out


# ---------------------------------------------------------------------------- detection


class DetectParams(Strict):
    """How tokens are flagged: the options of `leaf detect`."""

    # In the schema too: tau and percentile are alternatives.
    model_config = ConfigDict(json_schema_extra={"not": {
        "required": ["tau", "percentile"],
        "properties": {"tau": {"type": "number"}, "percentile": {"type": "number"}}}})

    teacher: ModelName | None = Field(default=None, description="default: LEAF_DEFAULT_TEACHER")
    student: ModelName | None = Field(default=None, description="default: LEAF_DEFAULT_STUDENT")
    tau: engine_setting(DetectConfig, "tau")
    percentile: engine_setting(DetectConfig, "percentile")
    method: engine_setting(DetectConfig, "method", optional=False)
    level: engine_setting(DetectConfig, "level", optional=False)
    segments: engine_setting(DetectConfig, "segments", optional=False)
    seed: engine_setting(DetectConfig, "seed", optional=False)
    unit: engine_setting(DetectConfig, "unit", optional=False)
    normalise: engine_setting(DetectConfig, "normalise", optional=False)

    @model_validator(mode="after")
    def _one_threshold(self) -> DetectParams:
        if self.tau is not None and self.percentile is not None:
            raise field_error("percentile", "give either tau or percentile, not both")
        return self


class DetectRequest(DetectParams):
    instruction: str = Field(min_length=1, description="the prompt (task and input); at most "
                                                       "LEAF_MAX_INSTRUCTION_CHARS characters",
                             json_schema_extra={SETTING_KEY: "max_instruction_chars"})
    output: str = Field(min_length=1, description="the response whose loss is explained; at "
                                                  "most LEAF_MAX_OUTPUT_CHARS characters",
                        json_schema_extra={SETTING_KEY: "max_output_chars"})


class TokenOut(Public):
    text: str
    start: int
    end: int
    teacher: float = Field(description="teacher saliency, min-max normalised")
    student: float = Field(description="student saliency, min-max normalised")
    score: float = Field(description="normalised teacher - student; low = confounder")
    confounder: bool


class ViewTokenOut(TokenOut):
    field: Literal["instruction", "output"] = Field(description="where the token is")


class PrunedOut(Public):
    instruction: str
    span: list[int]


class SpanOut(Public):
    field: Literal["instruction", "output"]
    start: int
    end: int


class ViewPrunedOut(Public):
    instruction: str
    output_prefix: str
    span: SpanOut | None


class CollectiveOut(Public):
    instruction: str
    output_prefix: str


class ViewOut(Public):
    segment: int
    target: list[int]
    tokens: list[ViewTokenOut]
    spans: list[SpanOut]
    pruned: list[ViewPrunedOut]
    collective: CollectiveOut


class DetectionRecord(BaseModel):
    """The record `leaf detect` writes for one example; passthrough fields of a dataset row
    (answer, ...) appear as extra keys."""

    model_config = ConfigDict(extra="allow")

    id: str
    instruction: str
    output: str
    tokens: list[TokenOut]
    spans: list[list[int]]
    pruned: list[PrunedOut]
    collective: str = Field(description="the instruction with every flagged span removed")
    params: dict[str, Any]
    views: list[ViewOut] | None = Field(default=None, exclude_if=lambda v: v is None,
                                        description="response-level segments, if any")


class DetectResponse(DetectionRecord):
    cached: bool = Field(description="answered from the analysis cache, without a worker")
    job_id: str | None = Field(description="the worker job that computed it, if one did")


class DetectPending(Public):
    """The analysis is still running: poll GET /jobs/{job_id}."""

    job_id: str
    status: JobStatus
    detail: str


# ---------------------------------------------------------------------------- models


class ModelPublic(Public):
    name: str
    role: Literal["teacher", "student", "any"]
    default_for: list[Literal["teacher", "student"]]
    source: Literal["local", "hub"]
    available: bool = Field(description="a local model's files are present")


class ModelList(Public):
    models: list[ModelPublic]
    default_teacher: str
    default_student: str


class Example(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    instruction: str
    output: str
    answer: str | None = None


class ExampleList(Public):
    examples: list[Example]


class Health(Public):
    status: Literal["ok", "degraded", "unavailable"]
    redis: str
    workers: int = Field(description="live workers (a killed one stops counting within "
                                     "seconds)")
    queues: dict[str, int] = Field(description="jobs waiting per queue")
    reason: str | None = Field(default=None, description="why the status is not ok, e.g. no "
                                                         "worker is running, so jobs wait")
    version: str


# ---------------------------------------------------------------------------- datasets


class DatasetPublic(Public):
    id: str
    name: str
    rows: int
    with_output: int = Field(description="rows with an output (detect and distill need all)")
    with_reference: int = Field(description="rows with an answer or tests (evaluate needs "
                                            "all)")
    with_tests: int | None = Field(default=None, description="rows with tests: evaluating "
                                   "them runs code (null: uploaded before this was counted)")
    bytes: int
    fields: list[str]
    created_at: str


# A JSONL upload sent as a form field rather than a file (no filename) is held in memory;
# this is its limit (Starlette's default part size), a file goes up to LEAF_MAX_UPLOAD_BYTES.
FORM_TEXT_BYTES = 1 << 20
UTF8_MAX_BYTES = 4  # per character: a text of n characters is at most 4n bytes
# One character of a JSON string: anything but a quote, a backslash or a control character,
# or a simple escape.
_JSON_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt])'


def jsonl_text(*, instruction_chars: int, output_chars: int, rows: int, max_bytes: int
               ) -> dict[str, Any]:
    """The schema of a JSONL upload as text: rows in the simplest form every upload may take
    (an instruction, then optionally an output and an answer, in that order), so that any
    text it allows is accepted. JSON Schema cannot state every rule of a row (any order of
    keys, passthrough fields of any JSON), so the API also accepts rows beyond this pattern;
    the operation's description has them all."""
    def text(longest: int) -> str:  # non-blank: a letter or digit first
        return f'"[A-Za-z0-9]{_JSON_CHAR}{{0,{longest - 1}}}"'

    row = (r'\{"instruction": ' + text(instruction_chars) + r'(?:, "output": '
           + text(output_chars) + r')?(?:, "answer": "' + _JSON_CHAR + r'{0,64}")?\}')
    # The row count is bounded through the length, every row being at least as long as the
    # shortest: validators (jsonschema-rs) cannot compile `{1,100000}` around a row.
    shortest = len('{"instruction": "a"}\n')
    return {"type": "string", "pattern": "^(?:" + row + r"\n)+$",
            "maxLength": min(max_bytes // UTF8_MAX_BYTES, shortest * (rows + 1) - 1)}


class DatasetList(Public):
    datasets: list[DatasetPublic]


class DatasetPage(DatasetPublic):
    offset: int
    limit: int
    items: list[dict[str, Any]] = Field(description="rows offset..offset+limit, as uploaded")


# ---------------------------------------------------------------------------- jobs


class DetectJobCreate(DetectParams):
    kind: Literal["detect"]
    dataset_id: ObjectId
    batch_size: Annotated[int, Field(ge=1, le=1024), Integral] | None = Field(
        default=None, description="default: LEAF_BATCH_SIZE")
    truncate: bool = Field(default=False, description="cut responses that exceed a context")
    export_pruned: bool = Field(default=True, description="also write pruned.jsonl")


class DistillJobCreate(Strict):
    """The options of `leaf distill`; output paths are the server's. Train on a dataset
    (plain rows, detection records or pruned rows), or on a finished detect job's records."""

    model_config = ConfigDict(json_schema_extra={
        "anyOf": [{"required": ["dataset_id"], "properties": {"dataset_id": {"type": "string"}}},
                  {"required": ["detect_job"], "properties": {"detect_job": {"type": "string"}}}],
        "not": {"required": ["dataset_id", "detect_job"],
                "properties": {"dataset_id": {"type": "string"},
                               "detect_job": {"type": "string"}}}})

    kind: Literal["distill"]
    dataset_id: ObjectId | None = None
    detect_job: ObjectId | None = Field(default=None,
                                        description="a finished detect job whose records "
                                                    "(with their pruned prompts) to train on")
    teacher: ModelName | None = None
    student: ModelName | None = None
    lam: engine_setting(DistillConfig, "lam")
    mode: engine_setting(DistillConfig, "mode")
    hybrid_units: engine_setting(DistillConfig, "hybrid_units")
    counterfactuals: engine_setting(DistillConfig, "counterfactuals")
    epochs: engine_setting(DistillConfig, "epochs")
    lr: engine_setting(DistillConfig, "lr")
    batch_size: engine_setting(DistillConfig, "batch_size")
    micro_batch_size: engine_setting(DistillConfig, "micro_batch_size")
    max_length: engine_setting(DistillConfig, "max_length")
    temperature: engine_setting(DistillConfig, "temperature")
    warmup_steps: engine_setting(DistillConfig, "warmup_steps")
    seed: engine_setting(DistillConfig, "seed")

    @model_validator(mode="after")
    def _one_source(self) -> DistillJobCreate:
        if (self.dataset_id is None) == (self.detect_job is None):
            raise field_error("detect_job", "give exactly one of dataset_id and detect_job")
        return self


class EvaluateJobCreate(Strict):
    """The options of `leaf evaluate`. Name a model, or a finished distillation job whose
    checkpoint to evaluate."""

    model_config = ConfigDict(json_schema_extra={"not": {
        "required": ["model", "checkpoint_job"],
        "properties": {"model": {"type": "string"}, "checkpoint_job": {"type": "string"}}}})

    kind: Literal["evaluate"]
    dataset_id: ObjectId
    model: ModelName | None = Field(default=None, description="default: the default student")
    checkpoint_job: ObjectId | None = Field(default=None,
                                            description="a finished distill job's id")
    teacher: ModelName | None = Field(default=None, description="for output similarity")
    max_new_tokens: engine_setting(EvalConfig, "max_new_tokens")
    batch_size: engine_setting(EvalConfig, "batch_size")
    answer_check: engine_setting(EvalConfig, "answer_check")
    group_by: engine_setting(EvalConfig, "group_by")

    @model_validator(mode="after")
    def _one_model(self) -> EvaluateJobCreate:
        if self.model is not None and self.checkpoint_job is not None:
            raise field_error("checkpoint_job", "give either model or checkpoint_job, not both")
        return self


def swept(config: type, name: str, most: int, description: str) -> Any:
    """A list of distinct values of the engine setting `config.name` to try, each in its
    range (the engine refuses a repeated value too)."""
    spec = next(s for s in field_specs(config) if s.name == name)
    item = Annotated[float, Field(**{k: v for k in ("ge", "gt", "le", "lt")
                                     if (v := getattr(spec, k)) is not None})]
    values = Annotated[list[item], Field(min_length=1, max_length=most,
                                         json_schema_extra={"uniqueItems": True})]
    return Annotated[values | None, Field(default=None, description=description)]


def _listed(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in values)


class CalibrateJobCreate(Strict):
    """The options of `leaf calibrate`: sweep tau (or a percentile) on a dataset whose rows
    have an output and an answer; the result is the curve and a recommended value, also
    written as calibration.json and calibration.png."""

    model_config = ConfigDict(json_schema_extra={"not": {
        "required": ["tau_values", "percentiles"],
        "properties": {"tau_values": {"type": "array"}, "percentiles": {"type": "array"}}}})

    kind: Literal["calibrate"]
    dataset_id: ObjectId
    teacher: ModelName | None = Field(default=None, description="default: LEAF_DEFAULT_TEACHER")
    student: ModelName | None = Field(default=None, description="default: LEAF_DEFAULT_STUDENT")
    tau_values: swept(DetectConfig, "tau", MAX_VALUES, "taus to try (the paper's Eq. 2). "
                                                       f"Default: {_listed(DEFAULT_TAUS)}.")
    percentiles: swept(DetectConfig, "percentile", MAX_VALUES,
                       "percentiles to try instead (the official code's rule), e.g. "
                       f"{_listed(DEFAULT_PERCENTILES)}")
    min_gaps: swept(DetectConfig, "min_gap", MAX_GAPS, "min_gap values tried with each "
                                                       "threshold. Default: "
                                                       f"{_listed(DEFAULT_MIN_GAPS)}.")
    min_untouched: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, description="recommend only values leaving at least this share of "
                                  "clean prompts unflagged (if none does, the best fix rate). "
                                  f"Default: {DEFAULT_MIN_UNTOUCHED:g}.")
    level: engine_setting(DetectConfig, "level", optional=False)
    segments: engine_setting(DetectConfig, "segments", optional=False)
    unit: engine_setting(DetectConfig, "unit", optional=False)
    normalise: engine_setting(DetectConfig, "normalise", optional=False)
    max_new_tokens: engine_setting(EvalConfig, "max_new_tokens")
    batch_size: engine_setting(EvalConfig, "batch_size")
    answer_check: engine_setting(EvalConfig, "answer_check")

    @model_validator(mode="after")
    def _one_threshold(self) -> CalibrateJobCreate:
        if self.tau_values is not None and self.percentiles is not None:
            raise field_error("percentiles", "give either tau_values or percentiles, not both")
        return self


JobCreate = Annotated[DetectJobCreate | DistillJobCreate | EvaluateJobCreate | CalibrateJobCreate,
                      Field(discriminator="kind")]


class FileInfo(Public):
    name: str
    bytes: int


class JobPublic(Public):
    id: str
    kind: JobKind
    status: JobStatus
    progress: float = Field(ge=0.0, le=1.0)
    stage: str | None
    eta_s: float | None = Field(description="estimated seconds left, while started")
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    dataset_id: str | None = Field(description="null for /detect's own jobs")
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    files: list[FileInfo]
    metrics: dict[str, Any] = Field(default_factory=dict,
                                    description="live figures while started (step, loss, ...)")
    waiting: str | None = Field(default=None, description="why a queued job is not running "
                                                          "(no worker takes it), else null")

    @classmethod
    def of(cls, view: Any) -> JobPublic:
        """From the service core's `JobView` (same fields)."""
        return cls.model_validate(view, from_attributes=True)


class JobAccepted(Public):
    id: str
    status: JobStatus


class JobList(Public):
    jobs: list[JobPublic]
    total: int
    offset: int
    limit: int


class RecordPage(Public):
    offset: int
    limit: int
    total: int
    records: list[DetectionRecord]


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its `$defs` written in place. In an OpenAPI document `#/$defs/...`
    would resolve against the document, and as components the report's names (`Example`,
    `Segment`) would collide with this API's own."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


# GET /jobs/{id}/report: report.json, whose schema is the engine's `Report` (docs/report.md).
CORPUS_REPORT_SCHEMA: dict[str, Any] = {
    **_inlined(TypeAdapter(Report).json_schema(mode="serialization")),
    "description": "the corpus report of a detect job's records: report.json as "
                   "`leaf report` writes it (fields in docs/report.md)",
}
