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
  at its next progress step (a thread cannot be killed safely).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import Redis
from rq import worker_registration
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from app.settings import Settings
from leaf_engine.errors import (
    ConfigError,
    ContextTooLongError,
    IncompatibleModelsError,
    InputError,
)
from workers import runtime
from workers.queues import QUEUES, SERIALIZER
from workers.runtime import WorkerContext

log = logging.getLogger(__name__)

WORKER_TTL_S = 60  # a worker that stops heartbeating is gone from /health after this
MAINTENANCE_INTERVAL_S = 30  # registry cleanup (abandoned jobs) at least this often
HEARTBEATS_PER_TTL = 4  # a started job's registry entry outlives this many missed beats
RECONNECT_MAX_S = 5.0  # longest pause between attempts to reach a Redis that went away
# Failures caused by what a user sent: the job's error says it all, so the log gets one line.
USER_ERRORS = (InputError, ConfigError, ContextTooLongError, IncompatibleModelsError)


class LeafWorker(SimpleWorker):
    # Timeouts by timer, not SIGALRM, so the worker also runs in a thread (tests, embedding).
    death_penalty_class = TimerDeathPenalty
    # While Redis is away RQ retries with exponential backoff; capped low so that the worker
    # is back within seconds of Redis, not a minute.
    max_connection_wait_time = RECONNECT_MAX_S

    def __init__(self, queues: Sequence[str], *, settings: Settings, connection: Redis,
                 poll_s: int | None = None, **kwargs: Any):
        self.settings = settings
        self.poll_s = poll_s  # read by dequeue_timeout, which RQ's __init__ already calls
        super().__init__(
            list(queues), connection=connection, serializer=SERIALIZER,
            worker_ttl=WORKER_TTL_S, maintenance_interval=MAINTENANCE_INTERVAL_S,
            job_monitoring_interval=max(1, math.ceil(settings.heartbeat_s)), **kwargs,
        )
        self.context = WorkerContext.create(settings, connection)
        self.context.on_cancel = self._mark_stopped
        runtime.install(self.context)

    # -------------------------------------------------------------- heartbeats

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)
        # A Redis that restarted without its data has forgotten this worker: list it again,
        # or /health would count no workers while this one works.
        worker_registration.register(self, pipeline)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return max(2, math.ceil(self.settings.heartbeat_s * HEARTBEATS_PER_TTL))

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        with self._beating(job, execution):
            self.perform_job(job, queue, execution)
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
        if not isinstance(exc_info[1], USER_ERRORS):
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
            self.connection.set(runtime.CANCEL_KEY.format(job_id), 1, ex=3600)

    def handle_warm_shutdown_request(self) -> None:
        # The running job stops at its next progress step and fails with a clear message.
        self.context.shutdown.set()

    def request_stop_now(self) -> None:
        """Stop the work loop from another thread (tests, embedding)."""
        self._stop_requested = True
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
