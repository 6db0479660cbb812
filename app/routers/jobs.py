"""Jobs over datasets: detect, distill, evaluate. Submit, list, follow, cancel, download."""

from __future__ import annotations

import json
import logging
import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse
from redis import Redis

from app.deps import (
    JobDep,
    RedisDep,
    SettingsDep,
    StoreDep,
    detect_config,
    require_token,
    resolve_model,
)
from app.errors import ApiError
from app.schemas import (
    COMMON_ERRORS,
    CORPUS_REPORT_SCHEMA,
    CalibrateJobCreate,
    DetectJobCreate,
    DistillJobCreate,
    ErrorBody,
    EvaluateJobCreate,
    JobAccepted,
    JobCreate,
    JobKind,
    JobList,
    JobPublic,
    JobStatus,
    RecordPage,
    error_responses,
    link,
)
from leaf_engine.errors import ConfigError, ModelLoadError
from leaf_engine.identity import fingerprint
from leaf_engine.sources import tokenizer_fingerprint
from leaf_service import jobs as jobstate
from leaf_service.cache import AnalysisParams, model_identity
from leaf_service.jobs import (
    CORPUS_REPORT_HTML,
    CORPUS_REPORT_JSON,
    CORPUS_REPORT_MD,
    DETECTIONS_FILE,
)
from leaf_service.queues import code_runner_problem, new_id
from leaf_service.settings import Settings
from leaf_service.specs import (
    CALIBRATE_OPTIONS,
    EVALUATE_OPTIONS,
    CalibrateSpec,
    DetectSpec,
    DistillSpec,
    EvaluateSpec,
)
from leaf_service.store import DataStore

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_token)],
                   responses=COMMON_ERRORS)
NOT_FOUND = {404: {"model": ErrorBody}}
FileName = Annotated[str, Path(max_length=128, description="a name from the job's `files`")]
ReportFormat = Literal["json", "html", "md"]
# format -> (file in the job's directory, media type)
REPORT_FILES: dict[str, tuple[str, str]] = {
    "json": (CORPUS_REPORT_JSON, "application/json"),
    "html": (CORPUS_REPORT_HTML, "text/html; charset=utf-8"),
    "md": (CORPUS_REPORT_MD, "text/markdown; charset=utf-8"),
}
# report.html holds record text (user data), escaped by its renderer; served from the API's
# origin it may still run nothing and fetch nothing: it needs no script and no network.
REPORT_HTML_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"


_ACCEPTED = {"description": "queued; follow it at GET /jobs/{id}", "links": {
    "GetJob": link("/jobs/{job_id}", "get", job_id="$response.body#/id"),
    "CancelJob": link("/jobs/{job_id}", "delete", job_id="$response.body#/id"),
    "JobRecords": link("/jobs/{job_id}/records", "get", job_id="$response.body#/id"),
    "JobReport": link("/jobs/{job_id}/report", "get", job_id="$response.body#/id"),
}}


@router.post("", status_code=202, response_model=JobAccepted, responses={
    202: _ACCEPTED, **error_responses(
        403, 404, 409, 415,
        e403="an evaluate job that would run code, on a server that cannot isolate it (and "
             "LEAF_ALLOW_UNSANDBOXED_CODE is not set)",
        e404="the dataset (or detect_job, checkpoint_job) named does not exist",
        e409="the dataset or job named cannot serve this job: rows lack a field it needs, or "
             "the job has not finished")})
def submit(body: JobCreate, settings: SettingsDep, redis: RedisDep,
           store: StoreDep) -> JobAccepted:
    """Queue a detect, distill, evaluate or calibrate job over an uploaded dataset. Ids are
    the server's: the answer's `id` names the job from now on."""
    meta = None if body.dataset_id is None else _check_dataset(store, body.dataset_id,
                                                                 body.kind)
    if isinstance(body, DetectJobCreate):
        params, spec = _detect_spec(body, settings)
    elif isinstance(body, DistillJobCreate):
        params, spec = _distill_spec(body, settings, redis, store)
    elif isinstance(body, CalibrateJobCreate):
        params, spec = _calibrate_spec(body, settings, meta or {})
        _check_code_isolation(body, meta or {}, redis)
    else:
        params, spec = _evaluate_spec(body, settings, store)
        _check_code_isolation(body, meta or {}, redis)
    job_id = new_id()
    view = jobstate.submit(redis, store, settings, kind=body.kind, job_id=job_id,
                           dataset_id=body.dataset_id, params=params, spec=spec)
    log.info("job %s: %s on dataset %s", job_id, body.kind, body.dataset_id)
    return JobAccepted(id=view.id, status=view.status)


def _check_dataset(store: DataStore, dataset_id: str, kind: str) -> dict[str, Any]:
    meta = store.dataset_meta(dataset_id)
    if meta is None:
        raise ApiError(404, f"dataset_id: no dataset with id '{dataset_id}'",
                       field="dataset_id")
    need, count = (("an 'answer' (or 'tests')", meta.get("with_reference", 0))
                   if kind == "evaluate" else ("an 'output'", meta.get("with_output", 0)))
    if count < meta["rows"]:
        raise ApiError(409, f"dataset_id: {meta['rows'] - count} of {meta['rows']} rows lack "
                            f"{need}, which {'an' if kind == 'evaluate' else 'a'} {kind} job "
                            "needs", field="dataset_id")
    return meta


def _check_code_isolation(body: EvaluateJobCreate | CalibrateJobCreate, meta: dict[str, Any],
                          redis: Redis) -> None:
    """Refuse, before anything is queued, an evaluation (or a calibration, which checks
    answers too) that would run code (tests, or
    math answers parsed by Python) where no worker could isolate it: the worker would
    refuse it too, but only once its turn came. Only final-number checks on a dataset
    without tests run no code. The workers say what they can do: the API's own container
    may lack what theirs has."""
    runs_code = body.answer_check != "number" or meta.get("with_tests", 1) != 0
    if not runs_code:
        return
    problem = code_runner_problem(redis)
    if problem is None:
        return
    raise ApiError(403, f"kind: this {body.kind} job runs code (tests, model output, math "
                        f"parsing) and this server cannot isolate it: {problem}. Unconfined, "
                        "that code could read every dataset and job output and reach Redis as "
                        "the worker's user. Install bubblewrap, or set "
                        "LEAF_ALLOW_UNSANDBOXED_CODE=true to accept that risk; answer_check "
                        "'number' on a dataset without tests runs no code", field="kind")


def _models(body: Any, settings: Settings) -> tuple[tuple[str, Any], tuple[str, Any]]:
    return (resolve_model(settings, body.teacher, field="teacher",
                          default=settings.default_teacher),
            resolve_model(settings, body.student, field="student",
                          default=settings.default_student))


def _detect_spec(body: DetectJobCreate, settings: Settings
                 ) -> tuple[dict[str, Any], DetectSpec]:
    (teacher, t_ref), (student, s_ref) = _models(body, settings)
    config = detect_config(body)
    batch_size = body.batch_size or settings.batch_size
    analysis = AnalysisParams(level=body.level, segments=body.segments,
                              surprisal=config.needs_surprisal, truncate=body.truncate)
    params = {"teacher": teacher, "student": student, **config.params(),
              "batch_size": batch_size, "truncate": body.truncate,
              "export_pruned": body.export_pruned}
    spec = DetectSpec(teacher=teacher, student=student, teacher_id=model_identity(t_ref),
                      student_id=model_identity(s_ref), config=config, analysis=analysis,
                      batch_size=batch_size, truncate=body.truncate,
                      export_pruned=body.export_pruned, dataset_id=body.dataset_id)
    return params, spec


def _distill_spec(body: DistillJobCreate, settings: Settings, redis: Redis,
                  store: DataStore) -> tuple[dict[str, Any], DistillSpec]:
    from leaf_engine.distill_config import DistillConfig

    (teacher, _), (student, _) = _models(body, settings)
    _check_shared_vocabulary(settings, teacher, student)
    if body.detect_job is not None:
        source = jobstate.view(redis, store, body.detect_job)
        if source is None:
            raise ApiError(404, f"detect_job: no job with id '{body.detect_job}'",
                           field="detect_job")
        if source.kind != "detect" or source.status != "finished" or \
                store.job_file(body.detect_job, DETECTIONS_FILE) is None:
            raise ApiError(409, f"detect_job: '{body.detect_job}' is not a finished detect "
                                "job with records", field="detect_job")
    # Only what the user set: the engine owns the defaults.
    config = body.model_dump(exclude_none=True, exclude={"kind", "dataset_id", "detect_job",
                                                         "teacher", "student"})
    try:  # torch-free: check the combination now rather than fail in the worker
        DistillConfig(data="-", out="-", **config)
    except ConfigError as err:
        raise ApiError(422, str(err), field=err.field) from None
    source_info = {"detect_job": body.detect_job} if body.detect_job else {}
    return ({"teacher": teacher, "student": student, **source_info, **config},
            DistillSpec(teacher=teacher, student=student, detect_job=body.detect_job,
                        config=config, dataset_id=body.dataset_id))


def _check_shared_vocabulary(settings: Settings, teacher: str, student: str) -> None:
    """Refuse now a distillation that the worker would refuse after its queue wait: the
    KL matches the two models' distributions token by token, so they need one vocabulary.
    A tokenizer that cannot be read here (a hub model not in this machine's cache) is left
    to the worker, which may download it."""
    prints = []
    for name in (teacher, student):
        try:
            prints.append(_tokenizer_print(settings.models[name].path, name))
        except ModelLoadError as err:
            log.warning("distill job: tokenizer of %s not checked: %s", name, err)
            return
    if prints[0] != prints[1]:
        raise ApiError(422, f"student: '{teacher}' and '{student}' use different tokenizers; "
                            "distillation needs a shared vocabulary", field="student")


_tokenizer_prints: dict[tuple[str, str], str] = {}
_tokenizer_prints_lock = threading.Lock()


def _tokenizer_print(path: str, name: str) -> str:
    """`tokenizer_fingerprint`, remembered for the process while the model's files stay as
    they are: a GGUF file's vocabulary takes seconds to read."""
    key = (path, fingerprint(path))
    with _tokenizer_prints_lock:
        hit = _tokenizer_prints.get(key)
    if hit is None:
        hit = tokenizer_fingerprint(path, name=name)
        with _tokenizer_prints_lock:
            _tokenizer_prints[key] = hit
    return hit


def _evaluate_spec(body: EvaluateJobCreate, settings: Settings, store: DataStore
                   ) -> tuple[dict[str, Any], EvaluateSpec]:
    model = None
    if body.checkpoint_job is not None:
        record = store.job_record(body.checkpoint_job)
        if record is None:
            raise ApiError(404, f"checkpoint_job: no job with id '{body.checkpoint_job}'",
                           field="checkpoint_job")
        if record.get("kind") != "distill" or record.get("status") != "finished":
            raise ApiError(409, f"checkpoint_job: '{body.checkpoint_job}' is not a finished "
                                "distill job", field="checkpoint_job")
    else:
        model, _ = resolve_model(settings, body.model, field="model",
                                 default=settings.default_student)
    teacher = None
    if body.teacher is not None:
        teacher, _ = resolve_model(settings, body.teacher, field="teacher")
    config = body.model_dump(exclude_none=True, include=set(EVALUATE_OPTIONS))
    params = {"model": model, "checkpoint_job": body.checkpoint_job, "teacher": teacher,
              **config}
    return ({k: v for k, v in params.items() if v is not None},
            EvaluateSpec(model=model, checkpoint_job=body.checkpoint_job, teacher=teacher,
                         config=config, dataset_id=body.dataset_id))


def _calibrate_spec(body: CalibrateJobCreate, settings: Settings, meta: dict[str, Any]
                    ) -> tuple[dict[str, Any], CalibrateSpec]:
    from leaf_engine.calibrate import configs_from

    lacking = meta.get("rows", 0) - meta.get("with_reference", 0)
    if lacking > 0:
        raise ApiError(409, f"dataset_id: {lacking} of {meta['rows']} rows lack an 'answer' "
                            "(or 'tests'), which a calibrate job needs to tell right answers "
                            "from wrong", field="dataset_id")
    (teacher, _), (student, _) = _models(body, settings)
    # Only what the user set: the engine owns the defaults.
    config = body.model_dump(exclude_unset=True, exclude_none=True,
                             include=set(CALIBRATE_OPTIONS))
    try:  # torch-free: check the sweep now rather than fail in the worker
        configs_from(config)
    except ConfigError as err:
        raise ApiError(422, str(err), field=err.field) from None
    return ({"teacher": teacher, "student": student, **config},
            CalibrateSpec(teacher=teacher, student=student, config=config,
                          dataset_id=body.dataset_id))


@router.get("", response_model=JobList, responses={422: {"model": ErrorBody}})
def list_jobs(
    redis: RedisDep, store: StoreDep,
    kind: Annotated[JobKind | None, Query()] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    """Submitted jobs, newest first. (/detect's own jobs are found by id only.)"""
    states, total = jobstate.page(redis, store, kind=kind, status=status, offset=offset,
                                  limit=limit)
    return JobList(jobs=[JobPublic.of(jobstate.public(store, s)) for s in states], total=total,
                   offset=offset, limit=limit)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
def get_job(state: JobDep, store: StoreDep) -> JobPublic:
    """Status, progress (0..1), stage, ETA, timings, result or error, and output files."""
    return JobPublic.of(jobstate.public(store, state))


@router.delete("/{job_id}", response_model=JobPublic,
               responses={**NOT_FOUND, 409: {"model": ErrorBody,
                                             "description": "the job already ended"}})
def cancel_job(state: JobDep, redis: RedisDep, store: StoreDep) -> JobPublic:
    """Cancel a job: a queued one at once, a started one at its next step (poll until
    `canceled`)."""
    current = jobstate.public(store, state)
    if current.status in jobstate.FINAL:
        raise ApiError(409, f"job {current.id} already {current.status}")
    return JobPublic.of(jobstate.cancel(redis, store, state))


@router.get("/{job_id}/files/{name}", response_class=FileResponse,
            responses={**NOT_FOUND, 200: {"content": {"application/octet-stream": {}},
                                          "description": "the file"}})
def download(state: JobDep, name: FileName, store: StoreDep) -> FileResponse:
    """Download one of the job's output files, named as in its `files` list."""
    path = store.job_file(state.id, name)
    if path is None:
        raise ApiError(404, f"job {state.id} has no file '{name}'", field="name")
    media = "application/x-ndjson" if name.endswith(".jsonl") else (
        "application/json" if name.endswith(".json") else "application/octet-stream")
    return FileResponse(path, media_type=media, filename=name)


@router.get("/{job_id}/records", response_model=RecordPage,
            responses={**NOT_FOUND, 409: {"model": ErrorBody,
                                          "description": "no detection records (yet)"}})
def records(
    state: JobDep, store: StoreDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> RecordPage:
    """A page of a finished detect job's records, for browsing without a download."""
    path = store.job_file(state.id, DETECTIONS_FILE)
    if path is None:
        raise ApiError(409, f"job {state.id} has no detection records")
    page, total = [], 0
    with path.open(encoding="utf-8") as handle:
        for total, line in enumerate(handle, start=1):
            if offset < total <= offset + limit:
                page.append(json.loads(line))
    return RecordPage(offset=offset, limit=limit, total=total, records=page)


@router.get("/{job_id}/report", responses={
    200: {"description": "the corpus report: report.json (default), or the same as one "
                         "self-contained HTML page or Markdown, as `leaf report` writes them",
          "content": {"application/json": {"schema": CORPUS_REPORT_SCHEMA},
                      "text/html": {"schema": {"type": "string"}},
                      "text/markdown": {"schema": {"type": "string"}}}},
    **error_responses(404, 409, e404="no such job, or it has no corpus report (only detect "
                                     "jobs over a dataset write one)",
                      e409="the detect job has not finished (or failed, or was canceled)")})
def corpus_report(
    state: JobDep, store: StoreDep,
    fmt: Annotated[ReportFormat, Query(
        alias="format",
        description="json: report.json; html: a page to open as is; md: Markdown")] = "json",
) -> FileResponse:
    """A finished detect job's corpus report: the most flagged words and phrases, flags by
    category and by position in the prompt, flags against tau, per response segment.
    Computed from the job's records as they were written (schema in docs/report.md)."""
    job = jobstate.public(store, state)
    if job.kind != "detect" or state.record is None:
        raise ApiError(404, f"job {state.id} has no corpus report: only detect jobs over a "
                            "dataset write one")
    if job.status != "finished":
        raise ApiError(409, f"job {state.id} is {job.status}: a detect job writes its corpus "
                            "report when it finishes")
    name, media = REPORT_FILES[fmt]
    path = store.job_file(state.id, name)
    if path is None:
        raise ApiError(404, f"job {state.id} has no corpus report (it finished without one, "
                            "or before LeaF wrote one)")
    headers = {"Content-Security-Policy": REPORT_HTML_POLICY} if fmt == "html" else None
    return FileResponse(path, media_type=media, headers=headers)
