"""One prompt's analysis by a worker: queue it (or join the job already computing it), then
wait for its analysis, or for why it cannot come.

The API answers a cached prompt without this module; here is what a miss costs. Waiting is
async, polled on the async Redis client: each poll is two cheap reads (the analysis cache and
the job's status), first after `POLL_FIRST_S`, then backing off to every `POLL_MAX_S`. Only a
job that ended without its analysis in the cache is read whole, in a thread.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from anyio import to_thread
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq.job import Job

from leaf_engine.analysis import DetectConfig
from leaf_service import jobs as jobstate
from leaf_service.cache import AnalysisParams, record_id
from leaf_service.jobs import JobFailure
from leaf_service.queues import PROMPT_FUNCTION, SHORT_QUEUE, new_id
from leaf_service.settings import Settings
from leaf_service.specs import PromptSpec

INFLIGHT_KEY = "leaf:inflight:{}"  # analysis cache key -> the id of the job computing it
POLL_FIRST_S = 0.01  # seconds before the first look, growing by half each time
POLL_MAX_S = 0.1  # seconds between looks, at most
PROMPT_RESULT_TTL_S = 3600  # the analysis is in the cache; the job's copy is for polling
_ENDED = frozenset({"failed", "stopped", "canceled", "finished", "gone"})  # RQ's, and "gone"

Status = Literal["finished", "queued", "started", "failed", "canceled", "gone"]


@dataclass(frozen=True)
class Outcome:
    """How a wait for a prompt's job ended.

    finished: `analysis` is the raw analysis (or None if the job finished without one);
    queued / started: the wait ran out first; failed: `failure` says why; canceled; gone:
    Redis no longer knows the job.
    """

    job_id: str
    status: Status
    analysis: dict[str, Any] | None = None
    failure: JobFailure | None = None


def submit(redis: Redis, settings: Settings, *, key: str, teacher: str, student: str,
           instruction: str, output: str, params: AnalysisParams, config: DetectConfig) -> str:
    """The id of a job computing the analysis cached under `key`: one already queued or
    running, or a new one on the short queue. `config` is kept in the job's meta so that
    GET /jobs/{id} shows the record for the request's thresholds.

    Two requests racing past the check both enqueue; the second job then finds the first's
    analysis in the cache and returns at once, so a race costs a queue slot, not a model run.
    """
    marker = INFLIGHT_KEY.format(key)
    running = redis.get(marker)
    if running is not None:
        job = jobstate.fetch(redis, running.decode())
        if job is not None and jobstate.status_of(job) in {"queued", "started"}:
            return job.id
    spec = PromptSpec(teacher=teacher, student=student, instruction=instruction,
                      output=output, analysis=params, cache_key=key).to_json()
    meta = {"kind": "detect", "prompt": True, "dataset_id": None, "config": config.__dict__,
            "params": {"teacher": teacher, "student": student, **config.params()},
            "stage": "queued", "progress": 0.0}
    job_id = new_id()
    jobstate.enqueue(redis, settings, func=PROMPT_FUNCTION, spec=spec, job_id=job_id,
                     queue_name=SHORT_QUEUE, timeout=settings.detect_timeout_s,
                     result_ttl=PROMPT_RESULT_TTL_S, meta=meta,
                     description=f"detect prompt {record_id(key)}")
    redis.set(marker, job_id, ex=settings.detect_timeout_s)
    return job_id


async def wait(redis: Redis, aredis: AsyncRedis, settings: Settings, job_id: str,
               key: str) -> Outcome:
    """Until the analysis is in the cache (its job, or another that batched it, finished),
    the job ended without it, or LEAF_DETECT_WAIT_S is over."""
    deadline = time.monotonic() + settings.detect_wait_s
    delay = POLL_FIRST_S
    job_key = Job.key_for(job_id)
    swept = time.monotonic()
    while True:
        async with aredis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.hget(job_key, "status")
            raw, status_raw = await pipe.execute()
        if raw is not None:
            return Outcome(job_id, "finished", analysis=json.loads(raw))
        status = status_raw.decode() if status_raw is not None else "gone"
        if status in _ENDED:
            return await to_thread.run_sync(_ended, redis, job_id)
        if status == "started" and time.monotonic() - swept >= jobstate.CLEANUP_EVERY_S:
            # A worker killed mid-job leaves it "started": let RQ's cleanup fail (or retry)
            # it once its heartbeat lapses, so this request ends instead of waiting it out.
            swept = time.monotonic()
            await to_thread.run_sync(jobstate.cleanup_abandoned, redis, SHORT_QUEUE)
        if time.monotonic() >= deadline:
            return Outcome(job_id, "started" if status == "started" else "queued")
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, POLL_MAX_S)


def _ended(redis: Redis, job_id: str) -> Outcome:
    """A job that ended without its analysis in the cache: its result, or why it failed."""
    job = jobstate.fetch(redis, job_id)
    if job is None:
        return Outcome(job_id, "gone")
    status = jobstate.status_of(job)
    if status == "finished":
        value = job.return_value()
        found = value["analysis"] if isinstance(value, dict) and "analysis" in value else None
        return Outcome(job_id, "finished", analysis=found)  # None: the cache entry is gone
    if status == "canceled":
        return Outcome(job_id, "canceled")
    return Outcome(job_id, "failed", failure=jobstate.failure(job))
