"""What a worker keeps between jobs (loaded models, connections) and how a running job
reports progress and learns that it should stop.

Job functions find all of this through `context()`: under `LeafWorker` it is the worker's
own; anywhere else (a plain RQ worker, a test calling a job function) one is made on first
use from the environment's settings.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from leaf_engine.errors import ContextTooLongError, LeafError
from leaf_engine.identity import fingerprint
from leaf_service.cache import AnalysisCache, ModelRef
from leaf_service.jobs import CANCEL_KEY, JobFailure
from leaf_service.queues import connect
from leaf_service.settings import Settings, get_settings
from leaf_service.store import DataStore, utcnow

if TYPE_CHECKING:
    from rq.job import Job

    from leaf_engine.detect import Detector
    from leaf_engine.models import LoadedModel

log = logging.getLogger(__name__)

META_SAVE_INTERVAL_S = 0.5  # progress is written to Redis at most this often
CANCEL_CHECK_INTERVAL_S = 0.5
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError)


class JobCanceled(LeafError):
    """The job was canceled through the API."""


class WorkerShutdown(LeafError):
    """The worker was asked to shut down while the job ran."""


class UnknownModel(LeafError):
    """A job names a model this worker's allow-list lacks. Its message repeats the job's own
    words, so it is shown as it is, never rewritten to name a configured model."""


CacheKey = tuple[str, str | None, bool, str | None, str]  # path, template, forced, name, files


class ModelCache:
    """Loaded models, least recently used evicted first. A model whose files changed on disk
    (a new fingerprint) is loaded again.

    A model is loaded under the name its job asked for it by (`names`: path -> name, kept by
    `WorkerContext.model_ref`), so that its errors and records name it as the service's users
    know it."""

    def __init__(self, capacity: int, *, device: str, dtype: str,
                 names: Mapping[str, str] | None = None, jobs_dir: Path | None = None):
        self.capacity = capacity
        self.device = device
        self.dtype = dtype
        self.names: Mapping[str, str] = names if names is not None else {}
        self.jobs_dir = None if jobs_dir is None else Path(_resolved(str(jobs_dir)))
        self._models: OrderedDict[CacheKey, LoadedModel] = OrderedDict()
        self._detectors: dict[tuple[Any, Any], Detector] = {}

    def _key(self, ref: ModelRef) -> CacheKey:
        name = self.names.get(ref.path) or self._checkpoint_name(ref.path)
        return (ref.path, ref.prompt_template, ref.force_template, name, fingerprint(ref.path))

    def _checkpoint_name(self, path: str) -> str | None:
        """A distillation job's checkpoint is named by its job, as the job's results name it."""
        if self.jobs_dir is None:
            return None
        parts = Path(_resolved(path)).parts
        top = self.jobs_dir.parts
        if len(parts) > len(top) and parts[:len(top)] == top:
            return f"checkpoint of job {parts[len(top)]}"
        return None

    def get(self, ref: ModelRef) -> LoadedModel:
        from leaf_engine.models import load_model

        key = self._key(ref)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.capacity:
            self._evict()
        _, template, forced, name, _ = key
        log.info("loading model %s (%s)", name or "-", ref.path)
        loaded = load_model(ref.path, name=name, device=self.device, dtype=self.dtype,
                            prompt_template=template, force_template=forced)
        self._models[key] = loaded
        return loaded

    def detector(self, teacher: ModelRef, student: ModelRef, *, batch_size: int,
                 truncate: bool) -> Detector:
        """A detector over cached models; kept per pair because checking that two tokenizers
        agree is not free."""
        from leaf_engine.detect import Detector

        t, s = self.get(teacher), self.get(student)
        pair = (self._key(teacher), self._key(student))
        detector = self._detectors.get(pair)
        if detector is None or detector.teacher is not t or detector.student is not s:
            detector = Detector(t, s, batch_size=batch_size, truncate=truncate)
            self._detectors[pair] = detector
        detector.batch_size, detector.truncate = batch_size, truncate
        return detector

    def __len__(self) -> int:
        return len(self._models)

    def _evict(self) -> None:
        key, _ = self._models.popitem(last=False)
        self._detectors = {k: v for k, v in self._detectors.items() if key not in k}
        log.info("unloading model %s", key[0])
        _free_memory()


@dataclass
class WorkerContext:
    settings: Settings
    redis: Redis
    models: ModelCache
    store: DataStore
    cache: AnalysisCache
    shutdown: threading.Event = field(default_factory=threading.Event)
    # Called with the id of a job that stops on request, so RQ records it as stopped.
    on_cancel: Callable[[str], None] | None = None
    # Model path -> the configured name it was last asked for by: errors name models as
    # the service's users know them (LEAF_MODELS), never by their path on this server.
    model_names: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def create(settings: Settings, redis: Redis) -> WorkerContext:
        store = DataStore(settings.data_dir)
        store.ensure()
        names: dict[str, str] = {}
        return WorkerContext(
            settings=settings, redis=redis,
            models=ModelCache(settings.worker_models, device=settings.device,
                              dtype=settings.dtype, names=names,
                              jobs_dir=store.jobs),
            store=store, cache=AnalysisCache(redis, settings.cache_ttl_s), model_names=names,
        )

    def public_text(self, text: str) -> str:
        """`text` with this server's paths taken out: a configured model's path becomes its
        name, a path under the data directory becomes relative to it."""
        named: dict[str, str] = {}
        for name, spec in self.settings.models.items():
            for path in {spec.path, _resolved(spec.path)}:
                named.setdefault(path, f"'{name}'")
        named.update({path: f"'{name}'" for path, name in self.model_names.items()})
        for path in sorted(named, key=len, reverse=True):
            if path and ("/" in path or path.startswith("~")):
                text = text.replace(path, named[path])
        root = _resolved(str(self.store.root))
        for prefix in {root, str(self.store.root)}:
            text = text.replace(prefix + "/", "").replace(prefix, "the data directory")
        return text

    def model_ref(self, name: str) -> ModelRef:
        """Resolve a model name with this worker's own allow-list: a job names models, and
        a worker loads only what its configuration lists."""
        spec = self.settings.models.get(name)
        if spec is None:
            raise UnknownModel(f"model '{name}' is not configured on this worker")
        # One job at a time, and a job resolves its models before loading them: the last
        # name asked for a path is the running job's (two names of one path are one model).
        self.model_names[spec.path] = name
        return ModelRef(spec.path, spec.prompt_template, spec.force_template)


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def install(ctx: WorkerContext) -> None:
    global _context
    _context = ctx


def context() -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            settings = get_settings()
            if settings.redis_url is None:
                raise LeafError("LEAF_REDIS_URL is not set")
            _context = WorkerContext.create(settings, connect(settings.redis_url))
        return _context


class JobRun:
    """Progress, stage and ETA in `job.meta`; cancellation and shutdown checks; and, for jobs
    with a directory, the durable job.json kept in step with Redis."""

    def __init__(self, ctx: WorkerContext, job: Job | None, *, durable: bool):
        self.ctx = ctx
        self.job = job
        self.durable = durable and job is not None
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self._saved = 0.0
        self._checked = 0.0
        self._stopped: JobCanceled | WorkerShutdown | None = None

    # ------------------------------------------------------------------ progress

    def stage(self, name: str, total: int = 0) -> None:
        """Enter a stage; `total` is its number of progress steps (0: unknown)."""
        self.total, self.done = total, 0
        self._meta(stage=name, progress=0.0 if total else None, eta_s=None, force=True)
        log.info("job %s: %s", self.job.id if self.job else "-", name)

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        self.fraction(self.done / self.total if self.total else 0.0)

    def fraction(self, value: float) -> None:
        value = min(max(value, 0.0), 1.0)
        elapsed = time.monotonic() - self.started
        eta = elapsed / value * (1.0 - value) if value > 0.01 else None
        self._meta(progress=round(value, 4), eta_s=None if eta is None else round(eta, 1))
        self.check()

    def check(self) -> None:
        """Raise if the job should stop. Called from progress callbacks, so a job stops at
        its next step."""
        if self.ctx.shutdown.is_set():
            raise WorkerShutdown("the worker shut down before the job finished; submit it again")
        if self.job is None:
            return
        now = time.monotonic()
        if now - self._checked < CANCEL_CHECK_INTERVAL_S:
            return
        self._checked = now
        try:
            canceled = self.ctx.redis.exists(CANCEL_KEY.format(self.job.id))
        except REDIS_AWAY:  # a Redis restarting does not end a job; look again next step
            log.debug("job %s: cancel check skipped, Redis away", self.job.id)
            return
        if canceled:
            if self.ctx.on_cancel is not None:
                self.ctx.on_cancel(self.job.id)
            raise JobCanceled("canceled")

    def should_stop(self) -> bool:
        """For engine loops that stop cleanly on request; `raise_if_stopped` afterwards."""
        try:
            self.check()
        except (JobCanceled, WorkerShutdown) as err:
            self._stopped = err
            return True
        return False

    def raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise self._stopped

    def note(self, **values: Any) -> None:
        """Extra live facts for the job's meta (a step's loss, the epoch)."""
        self._meta(**values)

    def _meta(self, *, force: bool = False, **values: Any) -> None:
        if self.job is None:
            return
        self.job.meta.update({k: v for k, v in values.items()})
        now = time.monotonic()
        if force or now - self._saved >= META_SAVE_INTERVAL_S:
            self._saved = now
            try:
                self.job.save_meta()
            except REDIS_AWAY:  # progress is best effort; the job goes on through an outage
                log.debug("job %s: progress not saved, Redis away", self.job.id)

    # ------------------------------------------------------------------ lifecycle

    @contextmanager
    def running(self) -> Iterator[JobRun]:
        """Record the start, and on the way out an error the user can read."""
        if self.durable:
            self.ctx.store.update_job(self.job.id, status="started", started_at=utcnow())
        try:
            yield self
        except JobCanceled:
            self._end("canceled", JobFailure("canceled"))
            raise
        except Exception as err:
            if _out_of_memory(err):
                _free_memory()
            self._end("failed", self._failure(err))
            raise

    def _failure(self, err: Exception) -> JobFailure:
        """Why the job failed, in the service's terms: a model by its configured name, no
        socket of the server, no advice meant for the command line."""
        if isinstance(err, ContextTooLongError):
            # Models are loaded under their public names; a path never reaches the user.
            name = self.ctx.model_names.get(err.model, err.model)
            model = "the model" if "/" in name else f"model {name!r}"
            field = f"{err.field}: " if err.field else ""
            return JobFailure(
                f"{field}the instruction and output are {err.tokens} tokens together, more "
                f"than {model}'s context of {err.limit} tokens; shorten the instruction or "
                "the output", type(err).__name__, user_fault=err.user_fault, field=err.field)
        if isinstance(err, LeafError):
            text = str(err) if isinstance(err, UnknownModel) else self.ctx.public_text(str(err))
            return JobFailure(text, type(err).__name__, user_fault=err.user_fault,
                              field=err.field)
        if isinstance(err, REDIS_AWAY):  # the job's own reads and writes of the cache
            return JobFailure("Redis went away while the job ran; submit it again",
                              "RedisUnavailable")
        if _out_of_memory(err):
            return JobFailure(f"out of memory: {_oom_text(err)} (a smaller batch_size needs "
                              "less; LEAF_WORKER_MEMORY_MB caps a worker)", "OutOfMemory")
        return JobFailure(self.ctx.public_text(f"{type(err).__name__}: {err}"),
                          type(err).__name__)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        self._meta(progress=1.0, eta_s=0.0, stage="done", force=True)
        if self.durable:
            self.ctx.store.update_job(self.job.id, status="finished", result=result,
                                      ended_at=utcnow())
        return result

    def _end(self, status: str, failure: JobFailure) -> None:
        """The one place a job's end is written down: its meta in Redis, and job.json."""
        self._meta(**failure.to_meta(), force=True)
        if self.durable:
            self.ctx.store.update_job(self.job.id, status=status, error=failure.text,
                                      ended_at=utcnow())


def _resolved(path: str) -> str:
    """An existing local path made absolute (as loaders report it); anything else as is."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def _out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, torch's CPU allocator failing, or CUDA running out."""
    if isinstance(err, MemoryError):
        return True
    name = type(err).__name__
    text = str(err)
    return name == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("can't allocate memory" in text
                                           or "out of memory" in text.lower()))


def _free_memory() -> None:
    """Give back what the failed job held, so the next job starts with the room it had."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - workers always have torch
        pass


def _oom_text(err: BaseException) -> str:
    """What failed, in a line: torch's allocator message carries the size asked for."""
    asked = re.search(r"tried to allocate (\d+) bytes", str(err))
    if asked:
        return f"an allocation of {int(asked.group(1)) / 2**20:.1f} MiB failed"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
