"""`leaf worker`: run one LeaF worker on the service's queues."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import click

from leaf_service.queues import QUEUES

log = logging.getLogger(__name__)
PARENT_CHECK_S = 2.0


@click.command()
@click.option("--queues", "queue_names", default=",".join(QUEUES), show_default=True,
              help="Comma-separated queues, in priority order.")
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option("--name", default=None, help="Worker name (default: random).")
@click.option("--exit-with-parent", is_flag=True, hidden=True,
              help="Stop when the parent process dies (used by `leaf serve`).")
def worker(queue_names: str, burst: bool, name: str | None, exit_with_parent: bool) -> None:
    """Run a worker: takes detect, distill and evaluate jobs from Redis (LEAF_REDIS_URL)
    and keeps models loaded between them. Ctrl-C stops it after the current job's next
    step."""
    from leaf_engine.errors import ConfigError
    from leaf_service.queues import connect
    from leaf_service.settings import get_settings
    from workers.worker import make_worker

    settings = get_settings()
    if settings.redis_url is None:
        raise ConfigError("LEAF_REDIS_URL is not set: a worker needs the service's Redis "
                          "(`leaf serve` starts both)")
    queues = [q.strip() for q in queue_names.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown) or '(none)'}; "
                                 f"choose from {', '.join(QUEUES)}", param_hint="--queues")
    logging.getLogger("workers").setLevel(logging.INFO)
    if settings.worker_memory_mb:
        _cap_memory(settings.worker_memory_mb)
    w = make_worker(settings, connect(settings.redis_url), queues, name=name)
    if exit_with_parent:
        _watch_parent()
    w.work(burst=burst, logging_level="INFO")
    if not burst and not w.stop_asked:
        # RQ's loop ends by itself only on an error (logged above): say so in the exit
        # status, so that whatever restarts workers (leaf serve, compose) sees a failure.
        log.error("the worker stopped on an error; exiting")
        sys.exit(1)


def _cap_memory(mib: int) -> None:
    """RLIMIT_DATA: heap and anonymous mappings, where tensors live. An allocation past it
    fails (a MemoryError, or torch's "can't allocate memory"), which fails the job and frees
    what it held; the worker goes on with the next one."""
    import resource

    limit = mib << 20
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and limit > hard:
        raise click.BadParameter(f"{mib} MiB is above this process' hard limit of "
                                 f"{hard >> 20} MiB", param_hint="LEAF_WORKER_MEMORY_MB")
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    log.info("worker memory capped at %d MiB (LEAF_WORKER_MEMORY_MB)", mib)


def _watch_parent() -> None:
    """If the process that started us dies (even by SIGKILL), shut down like on Ctrl-C."""
    import signal

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        log.warning("parent process %d is gone; shutting down", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
