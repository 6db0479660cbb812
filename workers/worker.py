"""The LeaF worker: a non-forking RQ worker that keeps models loaded between jobs.

RQ's default worker forks a process per job, which would reload every model each time.
`LeafWorker` runs jobs in its own process (RQ's `SimpleWorker`) and adds what that loses:

- heartbeats while a job runs: a thread renews the job's entry in the started-job registry
  every `LEAF_HEARTBEAT_S` seconds with a TTL of a few beats, so if the worker is killed the
  entry expires quickly and RQ's registry cleanup fails the job (or retries it, when
  `LEAF_JOB_RETRIES` > 0) instead of it staying "started" until the job timeout;
- frequent registry maintenance (every `MAINTENANCE_INTERVAL_S`), which is what performs
  that cleanup; the API also triggers it when someone looks at a started job;
- cooperative stops: a job canceled through the API, or a worker asked to shut down, stops
  at its next progress step (a thread cannot be killed safely);
- an allow-list: RQ imports and calls whatever a job names, so a job that is not one of
  LeaF's own (`leaf_service.queues.ALLOWED_FUNCTIONS`, one JSON object as argument, no callbacks
  or webhooks) fails with the reason, its function never imported;
- liveness: a thread renews the worker's registration every `WORKER_BEAT_S` with a TTL of
  `WORKER_TTL_S`, busy or idle, so /health stops counting a killed worker within seconds;
- a dataset job canceled on disk (job.json) is not run even if Redis, restored from an
  older state, still has it queued.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import Redis
from rq import worker_registration
from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from leaf_engine.errors import LeafError
from leaf_service.jobs import CANCEL_KEY
from leaf_service.queues import (
    ALLOWED_FUNCTIONS,
    CODE_RUNNER_KEY,
    JOB_FUNCTIONS,
    QUEUES,
    SERIALIZER,
    WORKER_BEAT_S,
    WORKER_TTL_S,
    is_id,
    report_code_runner,
)
from leaf_service.settings import Settings
from workers import runtime
from workers.runtime import REDIS_AWAY, WorkerContext

log = logging.getLogger(__name__)

DEQUEUE_TIMEOUT_S = 5  # an idle worker's blocking wait for a job, between maintenance checks
MAINTENANCE_INTERVAL_S = 30  # registry cleanup (abandoned jobs) at least this often
HEARTBEATS_PER_TTL = 4  # a started job's registry entry outlives this many missed beats
RECONNECT_MAX_S = 5.0  # longest pause between attempts to reach a Redis that went away
# Job hash fields naming code RQ would import and call, or URLs it would post to.
EXTRA_FIELDS = ("success_callback_name", "failure_callback_name", "stopped_callback_name",
                "webhooks")
DURABLE_FUNCTIONS = frozenset(JOB_FUNCTIONS.values())  # jobs with a job.json on disk


def refusal(job: Job) -> str | None:
    """Why a LeaF worker will not run `job`, or None for one of LeaF's own jobs: a function
    from the allow-list called with one JSON object, a server-made id, and nothing RQ
    would import or contact besides. Reads the job's data only: nothing is imported."""
    try:
        name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except Exception:  # whatever is in Redis, a bad job must not stop the worker
        return "its data cannot be read"
    if name not in ALLOWED_FUNCTIONS:
        return (f"{str(name)[:200]!r} is not one of LeaF's job functions "
                f"({', '.join(sorted(ALLOWED_FUNCTIONS))})")
    if instance is not None:
        return "it names a method of an object"
    if kwargs or len(args) != 1 or not isinstance(args[0], dict):
        return "its arguments are not one JSON object"
    if not is_id(job.id):
        return "its id is not one the service makes"
    extras = [field for field, value in zip(
        EXTRA_FIELDS, job.connection.hmget(job.key, EXTRA_FIELDS), strict=True) if value]
    if extras:
        return f"it carries {', '.join(extras)}"
    return None


class LeafWorker(SimpleWorker):
    # Timeouts by timer, not SIGALRM, so the worker also runs in a thread (tests, embedding).
    death_penalty_class = TimerDeathPenalty
    # While Redis is away RQ retries with exponential backoff; capped low so that the worker
    # is back within seconds of Redis, not a minute.
    max_connection_wait_time = RECONNECT_MAX_S

    def __init__(self, queues: Sequence[str], *, settings: Settings, connection: Redis,
                 poll_s: int | None = None, **kwargs: Any):
        from leaf_engine.sandbox import allow_unsandboxed

        self.settings = settings
        self.poll_s = poll_s
        super().__init__(
            list(queues), connection=connection, serializer=SERIALIZER,
            worker_ttl=WORKER_TTL_S, maintenance_interval=MAINTENANCE_INTERVAL_S,
            job_monitoring_interval=max(1, math.ceil(settings.heartbeat_s)), **kwargs,
        )
        self.context = WorkerContext.create(settings, connection)
        self.context.on_cancel = self._mark_stopped
        runtime.install(self.context)
        # Evaluated code runs isolated, or not at all unless the operator opted out.
        allow_unsandboxed(settings.allow_unsandboxed_code)
        self.code_runner_problem()  # probes bubblewrap once per process, before registering
        self._alive_stop = threading.Event()
        self._alive_thread: threading.Thread | None = None
        self.stop_asked = False  # a stop was requested (signal, command): not an error

    @property
    def dequeue_timeout(self) -> int:
        # RQ derives it from worker_ttl (minus 15 s); liveness has its own thread here.
        return DEQUEUE_TIMEOUT_S

    # -------------------------------------------------------------- heartbeats

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # Whatever RQ asks for, the registration outlives only a few beats: /health counts
        # registrations, and a killed worker must drop out of it within seconds.
        super().heartbeat(WORKER_TTL_S, pipeline)
        # A Redis that restarted without its data has forgotten this worker: list it again,
        # or /health would count no workers while this one works.
        worker_registration.register(self, pipeline)
        report_code_runner(self.connection, self.name, self.code_runner_problem())

    def code_runner_problem(self) -> str | None:
        """Why this worker cannot run evaluated code, or None."""
        from leaf_engine.sandbox import isolation_problem

        return None if self.settings.allow_unsandboxed_code else isolation_problem()

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        problem = self.code_runner_problem()  # probed in __init__, so the birth is quick
        super().register_birth(*args, **kwargs)
        # RQ gives a new registration worker_ttl + 60 s; a worker killed before its first
        # beat must still leave /health within WORKER_TTL_S.
        self.connection.expire(self.key, WORKER_TTL_S)
        report_code_runner(self.connection, self.name, problem)

    def register_death(self, *args: Any, **kwargs: Any) -> None:
        super().register_death(*args, **kwargs)
        self.connection.delete(CODE_RUNNER_KEY.format(self.name))

    def _keep_alive(self) -> None:
        while not self._alive_stop.wait(WORKER_BEAT_S):
            try:
                forgotten = not self.connection.exists(self.key)
                self.heartbeat()
                if forgotten:  # Redis lost it: write the whole registration again
                    self.connection.hset(self.key, mapping=self.serialize())
            except Exception:  # Redis away: RQ's loop reports that and reconnects
                log.debug("worker heartbeat failed", exc_info=True)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return max(2, math.ceil(self.settings.heartbeat_s * HEARTBEATS_PER_TTL))

    def execute_job(self, job: Job, queue: Queue) -> None:
        problem = refusal(job)
        if problem is None and self._canceled_on_disk(job):
            self._skip_canceled(job, queue)
            return
        execution = self.prepare_execution(job)
        if problem is not None:
            self._refuse(job, queue, execution, problem)
        else:
            with self._beating(job, execution):
                self.perform_job(job, queue, execution)
        self.set_state(WorkerStatus.IDLE)

    def _refuse(self, job: Job, queue: Queue, execution: Any, problem: str) -> None:
        """Fail the job with the reason, through RQ's own bookkeeping, without importing or
        calling anything it names."""
        log.error("refused job %r from queue %s: %s", job.id, queue.name, problem)
        job.webhooks = []  # failure handling would post to them
        job.retries_left = None  # a retry would only be refused again
        # Not RQ's prepare_job_execution: it reads the job's function name, which may be
        # what could not be read.
        self.connection.lrem(queue.intermediate_queue_key, 1, job.id)
        job.ended_at = now()
        self.handle_job_failure(job, queue, exc_string=f"JobRefused: this worker runs only "
                                                         f"LeaF's job functions; {problem}",
                                execution=execution)

    def _canceled_on_disk(self, job: Job) -> bool:
        if job.func_name not in DURABLE_FUNCTIONS:
            return False
        record = self.context.store.job_record(job.id)
        return record is not None and record.get("status") == "canceled"

    def _skip_canceled(self, job: Job, queue: Queue) -> None:
        """job.json, written at cancel time, outlives a Redis that came back from an older
        state still holding the job queued: the job stays canceled."""
        log.warning("job %s was canceled but Redis still had it queued; not running it",
                    job.id)
        with contextlib.suppress(InvalidJobOperation):
            job.cancel()
        self.connection.lrem(queue.intermediate_queue_key, 1, job.id)
        self.set_state(WorkerStatus.IDLE)

    @contextmanager
    def _beating(self, job: Job, execution: Any) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.heartbeat_s):
                try:
                    self.maintain_heartbeats(job, execution)
                except Exception:  # a missed beat is survivable; the next one may work
                    log.warning("heartbeat for job %s failed", job.id, exc_info=True)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # A failure caused by what a user sent: the job's error says it all, so the log gets
        # one line instead of a traceback.
        if not (isinstance(exc_info[1], LeafError) and exc_info[1].user_fault):
            super().handle_exception(job, *exc_info)
            return
        self.log.warning("job %s failed on its input: %s", job.id, exc_info[1])
        # RQ's rule for its handler chain: one that returns False ends it.
        for handler in self._exc_handlers:
            if handler(job, *exc_info) is False:
                break

    # -------------------------------------------------------------- stopping

    def _mark_stopped(self, job_id: str) -> None:
        # RQ then records the job as stopped rather than failed.
        self._stopped_job_id = job_id

    def kill_horse(self, sig: Any = None) -> None:
        """RQ's stop-job command: there is no horse, so ask the job to stop instead."""
        job_id = self._stopped_job_id or self.get_current_job_id()
        if job_id:
            self.connection.set(CANCEL_KEY.format(job_id), 1, ex=3600)

    def handle_warm_shutdown_request(self) -> None:
        # The running job stops at its next progress step and fails with a clear message.
        self.stop_asked = True
        self.context.shutdown.set()

    def request_stop_now(self) -> None:
        """Stop the work loop from another thread (tests, embedding)."""
        self._stop_requested = True
        self.stop_asked = True
        self.context.shutdown.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            super()._install_signal_handlers()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None
                                     ) -> tuple[Job, Queue] | None:
        if self.poll_s is None or timeout is None:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        # In a thread no signal interrupts the blocking pop: wait in short slices and look
        # for a stop request between them (RQ's loop ends on an idle timeout).
        while not self._stop_requested:
            found = super().dequeue_job_and_maintain_ttl(self.poll_s, max_idle_time=self.poll_s)
            if found is not None:
                return found
        return None

    # -------------------------------------------------------------- start-up

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        # Load first, register after: /health counts a worker once it can answer quickly.
        if self.settings.preload:
            self.preload()
        super().bootstrap(*args, **kwargs)
        self._alive_thread = threading.Thread(target=self._keep_alive, name="worker-alive",
                                              daemon=True)
        self._alive_thread.start()

    def teardown(self) -> None:
        # Stop beating first: a beat after RQ registers the death would list a dead worker.
        self._alive_stop.set()
        if self._alive_thread is not None:
            self._alive_thread.join()
        try:
            super().teardown()
        except REDIS_AWAY as err:  # its registration expires by itself within seconds
            log.warning("could not record this worker's end in Redis: %s", err)

    def preload(self) -> None:
        """Load the default pair now, so the first /detect does not wait for it."""
        for name in (self.settings.default_teacher, self.settings.default_student):
            try:
                self.context.models.get(self.context.model_ref(name))
            except Exception as err:  # a missing model fails its jobs, not the worker
                log.warning("could not preload model '%s': %s", name, err)


def make_worker(settings: Settings, connection: Redis, queues: Sequence[str] = QUEUES,
                **kwargs: Any) -> LeafWorker:
    return LeafWorker(queues, settings=settings, connection=connection, **kwargs)
