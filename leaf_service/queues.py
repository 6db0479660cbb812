"""Queue names, job kinds, ids and the Redis connection: shared by the API and the workers.

Torch-free: the API imports this module.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Literal

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

SHORT_QUEUE = "leaf-short"  # interactive /detect prompts: seconds each
LONG_QUEUE = "leaf-long"  # dataset jobs: minutes to days
QUEUES = (SHORT_QUEUE, LONG_QUEUE)  # a worker takes interactive work first

JobKind = Literal["detect", "distill", "evaluate", "calibrate"]
JOB_KINDS: tuple[JobKind, ...] = ("detect", "distill", "evaluate", "calibrate")
# Job functions are named by path so that enqueueing never imports them (nor torch).
PROMPT_FUNCTION = "workers.jobs.detect_prompt"
JOB_FUNCTIONS: dict[JobKind, str] = {
    "detect": "workers.jobs.detect_dataset",
    "distill": "workers.jobs.distill_dataset",
    "evaluate": "workers.jobs.evaluate_dataset",
    "calibrate": "workers.jobs.calibrate_dataset",
}
# What a LeaF worker will run. RQ imports and calls whatever function a job names, so
# anyone able to write to Redis could otherwise have `os.system` run as the worker.
ALLOWED_FUNCTIONS = frozenset({PROMPT_FUNCTION, *JOB_FUNCTIONS.values()})
# JSON, not pickle: a job's arguments can never carry code.
SERIALIZER = "rq.serializers.JSONSerializer"

ID_PATTERN = re.compile(r"^[0-9a-f]{20}$")
CONNECT_TIMEOUT_S = 2.0
# Worker liveness: a worker renews its registration every WORKER_BEAT_S, busy or idle, and
# the registration expires WORKER_TTL_S after the last renewal, so /health stops counting
# a killed worker within WORKER_TTL_S.
WORKER_BEAT_S = 2.0
WORKER_TTL_S = 7
SOCKET_TIMEOUT_S = 10.0
# Per live worker, renewed with its registration: "" where it can run evaluated code (under
# bubblewrap, or unsandboxed because its operator allowed that), else why it cannot. The API
# asks the workers rather than probing its own container, which may lack what they have.
CODE_RUNNER_KEY = "leaf:code-runner:{}"


def new_id() -> str:
    """A server-generated id: 12 hex digits of milliseconds, then 8 random ones. Ids sort by
    creation time, which is how datasets and jobs are listed."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(4)}"


def is_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))


def connect_async(url: str) -> AsyncRedis:
    """The API's client for what it awaits (cache reads, polls), with the same timeouts."""
    return AsyncRedis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                               socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30)


def connect(url: str) -> Redis:
    """A client with short timeouts, so an unreachable Redis fails requests fast (503)
    instead of hanging them; the pool reconnects by itself when Redis returns."""
    return Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                          socket_timeout=SOCKET_TIMEOUT_S, health_check_interval=30)


def report_code_runner(redis: Redis, worker: str, problem: str | None) -> None:
    redis.set(CODE_RUNNER_KEY.format(worker), problem or "", ex=WORKER_TTL_S)


def code_runner_problem(redis: Redis) -> str | None:
    """None if some live worker can run evaluated code, or if no worker has said (the job
    waits, and the worker that takes it decides); else one worker's reason why not."""
    problems = [redis.get(key) for key in redis.scan_iter(CODE_RUNNER_KEY.format("*"))]
    reported = [p.decode() for p in problems if p is not None]
    if not reported or "" in reported:
        return None
    return reported[0]
