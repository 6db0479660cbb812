"""The job contract: how a job is submitted, canceled and seen, from RQ's live state merged
with the durable job.json. The API shapes `JobView`s into its schema; workers follow the
same statuses, file names and cancel key.

Redis knows status, progress and results while it keeps them; job.json (written at
submission, updated by the worker) outlives it. When Redis no longer knows a job, job.json
answers; when Redis has a final state that job.json lacks (a worker killed mid-job), the
API writes it down.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, Retry
from rq.job import JobStatus as RQStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty
from rq.worker_registration import REDIS_WORKER_KEYS as REDIS_WORKERS_KEY
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from leaf_engine.analysis import Analysis, DetectConfig, decide
from leaf_engine.calibrate import CURVE_JSON, CURVE_PNG
from leaf_service.cache import record_id
from leaf_service.queues import JOB_FUNCTIONS, QUEUES, SERIALIZER, JobKind
from leaf_service.settings import Settings
from leaf_service.specs import JobSpec
from leaf_service.store import DataStore, utcnow

CANCEL_KEY = "leaf:cancel:{}"  # set on cancel; a running job stops at its next step
# What a dataset job leaves in its directory (GET /jobs/{id}/files lists them).
DETECTIONS_FILE = "detections.jsonl"
PRUNED_FILE = "pruned.jsonl"
RESULT_FILE = "result.json"
# A distill job's downloads; both unpack into one folder, `model/`.
MODEL_ARCHIVE = "model.tar"  # the best checkpoint as from_pretrained loads it, nothing else
RESUME_ARCHIVE = "resume.tar"  # the last checkpoint's training state, to continue the run
REPORT_FILE = "report.json"  # an evaluate job's accuracy report
# A detect job's corpus report (leaf_engine.report writes report.*: renamed, since an
# evaluate job's REPORT_FILE is another thing under the same name).
CORPUS_REPORT_JSON = "corpus_report.json"
CORPUS_REPORT_HTML = "corpus_report.html"
CORPUS_REPORT_MD = "corpus_report.md"
CORPUS_REPORT_FILES = (CORPUS_REPORT_JSON, CORPUS_REPORT_HTML, CORPUS_REPORT_MD)
# A calibrate job's curve, under the names `leaf_engine.calibrate` writes it.
CALIBRATION_JSON, CALIBRATION_PNG = CURVE_JSON, CURVE_PNG


log = logging.getLogger(__name__)

FINAL = {"finished", "failed", "canceled"}
DECIDED = {"finished", "canceled"}  # final states job.json knows better than Redis
NO_WORKER = "no worker is running: queued jobs wait until one starts"
NO_WORKER_FOR_JOB = "no worker is running: the job waits until one starts"
WORKERS_SEEN_S = 1.0
_STATUS = {
    RQStatus.QUEUED: "queued", RQStatus.CREATED: "queued", RQStatus.DEFERRED: "queued",
    RQStatus.SCHEDULED: "queued", RQStatus.RATE_LIMITED: "queued",
    RQStatus.STARTED: "started", RQStatus.FINISHED: "finished", RQStatus.FAILED: "failed",
    RQStatus.STOPPED: "canceled", RQStatus.CANCELED: "canceled",
}
CLEANUP_LOCK = "leaf:cleanup:{}"
CLEANUP_EVERY_S = 2  # API-triggered registry cleanups, at most this often per queue
SUBMIT_GRACE = timedelta(seconds=60)  # job.json is written just before the job is enqueued
_META_KEYS = {"kind", "prompt", "dataset_id", "params", "config", "stage", "progress", "eta_s",
              "error", "error_type", "user_fault", "error_field"}



@dataclass(frozen=True)
class JobView:
    """One job as clients see it (the API's JobPublic has the same fields)."""

    id: str
    kind: str
    status: str
    progress: float
    stage: str | None
    eta_s: float | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    dataset_id: str | None
    params: dict[str, Any]
    result: Any
    error: str | None
    files: list[dict[str, Any]]
    metrics: dict[str, Any] = field(default_factory=dict)
    waiting: str | None = None

def queue(redis: Redis, name: str) -> Queue:
    return Queue(name, connection=redis, serializer=SERIALIZER)


def fetch(redis: Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
    except NoSuchJobError:
        return None


def status_of(job: Job) -> str:
    return _STATUS.get(job.get_status(refresh=False), "queued")


def enqueue(redis: Redis, settings: Settings, *, func: str, spec: dict[str, Any], job_id: str,
            queue_name: str, timeout: int, result_ttl: int, meta: dict[str, Any],
            description: str) -> Job:
    """Queue `func` with one argument, `spec`: a spec's `to_json()` (leaf_service.specs)."""
    retry = Retry(max=settings.job_retries) if settings.job_retries else None
    return queue(redis, queue_name).enqueue_call(
        func, args=(spec,), job_id=job_id, timeout=timeout, result_ttl=result_ttl,
        failure_ttl=settings.result_ttl_s, meta=meta, description=description, retry=retry,
    )


def submit(redis: Redis, store: DataStore, settings: Settings, *, kind: JobKind, job_id: str,
           dataset_id: str | None, params: dict[str, Any], spec: JobSpec) -> JobView:
    """Write job.json, then enqueue the job on the long queue (its spec as JSON)."""
    record = {"id": job_id, "kind": kind, "dataset_id": dataset_id, "params": params,
              "status": "queued", "created_at": utcnow(), "started_at": None,
              "ended_at": None, "result": None, "error": None}
    store.create_job(record)
    meta = {"kind": kind, "dataset_id": dataset_id, "params": params, "stage": "queued",
            "progress": 0.0}
    try:
        job = enqueue(redis, settings, func=JOB_FUNCTIONS[kind], spec=spec.to_json(),
                      job_id=job_id, queue_name=QUEUES[1], timeout=settings.job_timeout_s,
                      result_ttl=settings.result_ttl_s, meta=meta,
                      description=f"{kind} {dataset_id or params.get('detect_job')}")
    except Exception:
        store.update_job(job_id, status="failed", error="could not be queued",
                         ended_at=utcnow())
        raise
    return public(store, JobState(job_id, job, record))


def cleanup_abandoned(redis: Redis, queue_name: str) -> None:
    """Fail (or retry) started jobs whose worker stopped heartbeating. Workers do this every
    maintenance interval; the API does it too when someone looks at a started job, so a
    killed worker's job is reported failed within a heartbeat TTL."""
    if not redis.set(CLEANUP_LOCK.format(queue_name), 1, nx=True, ex=CLEANUP_EVERY_S):
        return
    StartedJobRegistry(queue_name, connection=redis, serializer=SERIALIZER,
                       death_penalty_class=TimerDeathPenalty).cleanup()


@dataclass
class JobState:
    """One job, from Redis (`job`) and/or job.json (`record`)."""

    id: str
    job: Job | None
    record: dict[str, Any] | None


def load(redis: Redis, store: DataStore, job_id: str) -> JobState | None:
    job = fetch(redis, job_id)
    if job is not None and job.get_status(refresh=False) == RQStatus.STARTED:
        cleanup_abandoned(redis, job.origin)
        job = fetch(redis, job_id)
    record = store.job_record(job_id)
    if job is None and record is None:
        return None
    return JobState(job_id, job, record)


def load_many(redis: Redis, ids: list[str], records: dict[str, dict[str, Any]]
              ) -> list[JobState]:
    """The states of jobs whose job.json `records` are known, with one Redis round trip
    (two when started jobs had to be checked for a dead worker)."""
    jobs = Job.fetch_many(ids, connection=redis, serializer=SERIALIZER)
    started = {j.origin for j in jobs if j is not None and status_of(j) == "started"}
    for name in started:
        cleanup_abandoned(redis, name)
    if started:
        jobs = Job.fetch_many(ids, connection=redis, serializer=SERIALIZER)
    return [JobState(i, j, records[i]) for i, j in zip(ids, jobs, strict=True)]


def page(redis: Redis, store: DataStore, *, kind: str | None, status: str | None,
         offset: int, limit: int) -> tuple[list[JobState], int]:
    """A page of submitted jobs, newest first, and how many match in all. Only the page's
    jobs are looked up in Redis unless filtering by status, which lives there (job.json may
    lag behind it)."""
    if kind is None and status is None:
        ids = store.recorded_job_ids()
        records = _records(store, ids[offset : offset + limit])
        return load_many(redis, list(records), records), len(ids)
    records = _records(store, store.job_ids())
    ids = [i for i, r in records.items() if kind is None or r.get("kind") == kind]
    if status is None:
        return load_many(redis, ids[offset : offset + limit], records), len(ids)
    matching = [s for s in load_many(redis, ids, records) if current_status(s) == status]
    return matching[offset : offset + limit], len(matching)


def _records(store: DataStore, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: r for i in ids if (r := store.job_record(i)) is not None}


def view(redis: Redis, store: DataStore, job_id: str) -> JobView | None:
    state = load(redis, store, job_id)
    return None if state is None else public(store, state)


def public(store: DataStore, state: JobState) -> JobView:
    job, record = state.job, state.record or {}
    if job is None:
        return _from_record(store, state.id, record)
    meta = job.meta or {}
    status = status_of(job)
    if record.get("status") in DECIDED and status != record["status"]:
        # job.json is written last by the worker (finished) and first by a cancel: a Redis
        # restored from an older state, or that lost the job's last steps, lags behind it.
        return _from_record(store, state.id, record)
    kind = meta.get("kind", record.get("kind", "detect"))
    result = error = None
    if status == "finished":
        # job.json already has a dataset job's result: no need to read it from Redis.
        result = record.get("result")
        if result is None:
            value = job.return_value()
            result = _prompt_result(value, meta) if meta.get("prompt") else value
    elif status == "failed":
        error = failure_text(job)
    elif status == "canceled":
        error = "canceled"
    if record and record.get("status") not in FINAL and status in FINAL:
        # The worker could not write this down (it was killed, or the job never ran).
        store.update_job(state.id, status=status, error=error, ended_at=utcnow())
    progress = meta.get("progress")
    metrics = {k: v for k, v in meta.items() if k not in _META_KEYS}
    return JobView(
        id=state.id, kind=kind, status=status,
        progress=1.0 if status == "finished" else float(progress or 0.0),
        stage=meta.get("stage") if status != "finished" else "done",
        eta_s=meta.get("eta_s") if status == "started" else None,
        created_at=_iso(job.created_at) or record.get("created_at"),
        started_at=_iso(job.started_at) if status != "queued" else None,
        ended_at=_iso(job.ended_at) if status in FINAL else None,
        dataset_id=meta.get("dataset_id"), params=meta.get("params", {}),
        result=result, error=error, files=store.job_files(state.id) if record else [],
        metrics=metrics, waiting=waiting_reason(job) if status == "queued" else None,
    )


def current_status(state: JobState) -> str:
    """What `public(...).status` would say, without reading the job's files or result."""
    recorded = (state.record or {}).get("status")
    if state.job is not None and recorded not in DECIDED:
        return status_of(state.job)
    return _recorded_status(state.record or {})[0]


# ---------------------------------------------------------------------------- workers


def live_workers(redis: Redis) -> tuple[int, dict[str, int]]:
    """(live workers, live workers per queue). A worker renews its registration every
    WORKER_BEAT_S and it expires WORKER_TTL_S later, so one that was killed stops counting
    within seconds; the sets listing workers keep it until RQ's maintenance prunes them."""
    with redis.pipeline(transaction=False) as pipe:
        pipe.smembers(REDIS_WORKERS_KEY)
        for name in QUEUES:
            pipe.smembers(WORKERS_BY_QUEUE_KEY % name)
        every, *by_queue = pipe.execute()
    keys = sorted(set(every).union(*by_queue))
    with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        alive = {k for k, hit in zip(keys, pipe.execute(), strict=True) if hit}
    return len(alive & every), {name: len(alive & members)
                                for name, members in zip(QUEUES, by_queue, strict=True)}


def workers_problem(total: int, per_queue: dict[str, int]) -> str | None:
    """Why queued jobs wait forever right now, or None."""
    if total == 0:
        return NO_WORKER
    idle = [name for name, n in per_queue.items() if n == 0]
    if idle:
        return f"no worker takes queue {', '.join(idle)}: its jobs wait until one starts"
    return None


_seen_workers: dict[int, tuple[float, tuple[int, dict[str, int]]]] = {}  # per Redis pool
SEEN_WORKERS_MAX = 64


def waiting_reason(job: Job) -> str | None:
    """Why this queued job is not running: no live worker takes its queue. Looked up at
    most once a second per Redis, so a page of queued jobs costs one lookup."""
    pool = id(job.connection.connection_pool)
    now = time.monotonic()
    seen = _seen_workers.get(pool)
    if seen is None or now - seen[0] > WORKERS_SEEN_S:
        try:
            seen = (now, live_workers(job.connection))
        except RedisError:
            return None
        if len(_seen_workers) >= SEEN_WORKERS_MAX:  # pools come and go (tests, reloads)
            _seen_workers.clear()
        _seen_workers[pool] = seen
    total, per_queue = seen[1]
    if total == 0:
        return NO_WORKER_FOR_JOB
    if per_queue.get(job.origin, 0) == 0:
        return f"no worker takes queue {job.origin}: the job waits until one starts"
    return None


def _recorded_status(record: dict[str, Any]) -> tuple[str, str | None]:
    status = record.get("status", "failed")
    error = record.get("error")
    if status not in FINAL:
        created = _parse(record.get("created_at"))
        if created is not None and datetime.now(timezone.utc) - created < SUBMIT_GRACE:
            status = "queued"
        else:
            status, error = "failed", ("the job's state was lost from Redis before it "
                                       "finished; submit it again")
    return status, error


def _from_record(store: DataStore, job_id: str, record: dict[str, Any]) -> JobView:
    status, error = _recorded_status(record)
    return JobView(
        id=job_id, kind=record.get("kind", "detect"), status=status,
        progress=1.0 if status == "finished" else 0.0,
        stage="done" if status == "finished" else None, eta_s=None,
        created_at=record.get("created_at"), started_at=record.get("started_at"),
        ended_at=record.get("ended_at"), dataset_id=record.get("dataset_id"),
        params=record.get("params", {}), result=record.get("result"), error=error,
        files=store.job_files(job_id),
    )


def _prompt_result(value: Any, meta: dict[str, Any]) -> dict[str, Any] | None:
    """A /detect job's result, shown as the detection record for its own parameters."""
    if not isinstance(value, dict) or "analysis" not in value:
        return None
    config = DetectConfig(**meta["config"])
    record = decide(Analysis.from_dict(value["analysis"]), config,
                    example_id=record_id(value["cache_key"]))
    return {"record": record.to_dict()}


def failure_text(job: Job) -> str:
    """A one-line reason a person can act on."""
    meta = job.meta or {}
    if meta.get("error"):
        return str(meta["error"])
    result = job.latest_result()
    text = (result.exc_string or "") if result is not None else ""
    if "AbandonedJobError" in text:
        return ("the worker running this job stopped (killed or crashed) before it "
                "finished")
    if "JobTimeoutException" in text:
        return f"the job ran past its timeout of {job.timeout} seconds"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed"


@dataclass(frozen=True)
class JobFailure:
    """Why a job failed, as its worker wrote it into the job's meta (`to_meta`): the
    exception's own `user_fault` and `field` travel with it, so a reader needs neither a
    list of error classes nor the message's wording. A job that failed without a word from
    the worker (killed, timed out, refused) has no type and is not the user's fault."""

    text: str  # one line a person can act on
    error_type: str | None = None  # the exception's class name, or the worker's own label
    user_fault: bool = False
    field: str | None = None  # the input at fault, when one is

    def to_meta(self) -> dict[str, Any]:
        return {"error": self.text, "error_type": self.error_type,
                "user_fault": self.user_fault, "error_field": self.field}


def failure(job: Job) -> JobFailure:
    meta = job.meta or {}
    return JobFailure(text=failure_text(job), error_type=meta.get("error_type"),
                      user_fault=bool(meta.get("user_fault")), field=meta.get("error_field"))


def cancel(redis: Redis, store: DataStore, state: JobState) -> JobView:
    """Cancel a queued job at once; ask a started one to stop at its next step."""
    job = state.job
    if job is not None:
        # Set first: a job dequeued right now sees it at its first progress step.
        redis.set(CANCEL_KEY.format(state.id), 1, ex=7 * 24 * 3600)
        if status_of(job) == "queued":
            with contextlib.suppress(InvalidJobOperation):  # it started meanwhile
                job.cancel()
            job = fetch(redis, state.id)
        if state.record is not None and job is not None and status_of(job) == "canceled":
            store.update_job(state.id, status="canceled", error="canceled", ended_at=utcnow())
    return public(store, JobState(state.id, job, store.job_record(state.id)))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)  # RQ stores UTC
    return value.isoformat(timespec="milliseconds")


def _parse(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
