"""POST /detect: one prompt's detection record, from the cache or a worker.

The raw analysis is looked up by content hash; on a hit, tau and the other thresholds are
applied here (microseconds, no worker). On a miss the prompt is queued for a worker (an
identical prompt already queued is joined, not queued twice), and the request waits up to
LEAF_DETECT_WAIT_S for it before answering 202 with the job id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq.job import Job
from starlette.concurrency import run_in_threadpool

from app.deps import (
    AsyncRedisDep,
    RedisDep,
    RenderedDep,
    SettingsDep,
    detect_config,
    require_token,
    resolve_model,
)
from app.errors import ApiError
from app.middleware import BODY_DIGEST
from app.schemas import (
    COMMON_ERRORS,
    DetectPending,
    DetectRequest,
    DetectResponse,
    error_responses,
    link,
)
from leaf_engine.analysis import Analysis, DetectConfig, decide
from leaf_service import jobs as jobstate
from leaf_service.cache import AnalysisParams, analysis_key, model_identity, record_id
from leaf_service.queues import PROMPT_FUNCTION, SHORT_QUEUE, new_id
from leaf_service.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/detect", tags=["detect"], dependencies=[Depends(require_token)],
                   responses=COMMON_ERRORS)

INFLIGHT_KEY = "leaf:inflight:{}"  # cache key -> the job computing it
POLL_FIRST_S = 0.01
POLL_MAX_S = 0.1
PROMPT_RESULT_TTL_S = 3600  # the analysis is in the cache; the job's copy is for polling
# The engine's ContextTooLongError: "example is 300 tokens, more than <model>'s context of 256"
_CONTEXT = re.compile(r"is (?P<tokens>\d+) tokens, more than (?P<model>.+)'s context of "
                      r"(?P<limit>\d+)")
EXAMPLE = {"instruction": "Ann has 7 pens. Her brother has 9 pens. She buys 5 more pens. How "
                          "many pens does Ann have now?",
           "output": "7 + 5 = 12. The answer is 12.", "tau": 0.1}


@router.post(
    "", response_model=DetectResponse,
    responses={
        202: {"model": DetectPending, "description": "still running; poll GET /jobs/{job_id}",
              "links": {"GetJob": link("/jobs/{job_id}", "get",
                                       job_id="$response.body#/job_id")}},
        **error_responses(409, 415, 502, e409="the detection job was canceled",
                          e503="Redis is unreachable or a model cannot be loaded"),
    },
)
async def detect(request: Request, body: Annotated[DetectRequest, Body(examples=[EXAMPLE])],
                 settings: SettingsDep, redis: RedisDep, aredis: AsyncRedisDep,
                 rendered: RenderedDep) -> DetectResponse | Response:
    """Detect confounders in one instruction/output pair: the record `leaf detect` writes,
    plus `cached` and `job_id`. A prompt analysed before is answered from the cache at once,
    for any thresholds; a new one waits for a worker up to LEAF_DETECT_WAIT_S, then 202."""
    _check_lengths(body, settings)
    config = detect_config(body)
    teacher, teacher_ref = resolve_model(settings, body.teacher, field="teacher",
                                         default=settings.default_teacher)
    student, student_ref = resolve_model(settings, body.student, field="student",
                                         default=settings.default_student)
    params = AnalysisParams(level=body.level, segments=body.segments,
                            surprisal=config.needs_surprisal)

    # Hashing the text and a model's (briefly remembered) fingerprint is cheap enough for
    # the event loop; it lets a repeat be answered without leaving it.
    key = analysis_key(model_identity(teacher_ref), model_identity(student_ref), params,
                       device=settings.device, dtype=settings.dtype,
                       instruction=body.instruction, output=body.output)
    answer = rendered.get(key, config)
    if answer is None:
        raw = await aredis.get(key)
        if raw is not None:
            hit = json.loads(raw)
            answer = rendered.render(key, config, lambda: _respond(hit, config, key,
                                                                   cached=True, job_id=None))
    if answer is not None:
        digest = request.scope.get("state", {}).get(BODY_DIGEST)
        if digest is not None:  # the same body again is answered by the fast path
            rendered.remember(digest, key, config, (teacher_ref, student_ref))
        return answer
    spec = {"teacher": teacher, "student": student, "instruction": body.instruction,
            "output": body.output, "analysis": params.__dict__, "cache_key": key}
    meta = {"kind": "detect", "prompt": True, "dataset_id": None, "config": config.__dict__,
            "params": {"teacher": teacher, "student": student, **config.params()},
            "stage": "queued", "progress": 0.0}
    job_id = await run_in_threadpool(_enqueue_or_join, redis, settings, key, spec, meta)
    return await _wait(redis, aredis, settings, job_id, key, config)


def _check_lengths(body: DetectRequest, settings: Settings) -> None:
    for field, limit, name in (
        ("instruction", settings.max_instruction_chars, "LEAF_MAX_INSTRUCTION_CHARS"),
        ("output", settings.max_output_chars, "LEAF_MAX_OUTPUT_CHARS"),
    ):
        length = len(getattr(body, field))
        if length > limit:
            raise ApiError(422, f"{field}: {length} characters, more than this server's limit "
                                f"of {limit} ({name})", field=field)


def _too_long(spec: dict[str, Any], text: str, settings: Settings) -> ApiError:
    """The 422 for a prompt over a model's context, in this API's terms.

    The engine's message is the CLI's: it names the model by its path on this server and
    suggests a command-line flag. Here the model is named as the request names it, and the
    field is the longer of the two texts: the tokenizer ran in the worker, so which holds
    more tokens is not known here, and either can be shortened unless the prompt alone
    fills the context."""
    instruction, output = str(spec.get("instruction", "")), str(spec.get("output", ""))
    field = "instruction" if len(instruction) >= len(output) else "output"
    found = _CONTEXT.search(text)
    if found is None:
        detail = "the instruction and output together do not fit in the models' context"
    else:
        paths = {settings.models[name].path: name for name in
                 (spec.get("student"), spec.get("teacher")) if name in settings.models}
        model = paths.get(found.group("model"))
        detail = (f"the instruction and output are {found.group('tokens')} tokens together, "
                  f"more than {f'model {model!r}' if model else 'the model'}'s context of "
                  f"{found.group('limit')} tokens")
    return ApiError(422, f"{field}: {detail}; shorten the instruction or the output",
                    field=field)


def _respond(analysis: dict[str, Any], config: DetectConfig, key: str, *, cached: bool,
             job_id: str | None) -> DetectResponse:
    record = decide(Analysis.from_dict(analysis), config, example_id=record_id(key))
    return DetectResponse(**record.to_dict(), cached=cached, job_id=job_id)


def _enqueue_or_join(redis: Redis, settings: Settings, key: str, spec: dict[str, Any],
                     meta: dict[str, Any]) -> str:
    """The id of a job computing this key: one already queued or running, or a new one.

    Two requests racing past the check both enqueue; the second job then finds the first's
    analysis in the cache and returns at once, so a race costs a queue slot, not a model run.
    """
    marker = INFLIGHT_KEY.format(key)
    running = redis.get(marker)
    if running is not None:
        job = jobstate.fetch(redis, running.decode())
        if job is not None and jobstate.status_of(job) in {"queued", "started"}:
            return job.id
    job_id = new_id()
    jobstate.enqueue(redis, settings, func=PROMPT_FUNCTION, spec=spec, job_id=job_id,
                     queue_name=SHORT_QUEUE, timeout=settings.detect_timeout_s,
                     result_ttl=PROMPT_RESULT_TTL_S, meta=meta,
                     description=f"detect prompt {record_id(key)}")
    redis.set(marker, job_id, ex=settings.detect_timeout_s)
    return job_id


async def _wait(redis: Redis, aredis: AsyncRedis, settings: Settings, job_id: str, key: str,
                config: DetectConfig) -> DetectResponse | JSONResponse:
    """Until the analysis is in the cache (its job, or another that batched it, finished),
    the job failed, or the wait is over. Each poll is two cheap reads on the async client."""
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
            return _respond(json.loads(raw), config, key, cached=False, job_id=job_id)
        status = status_raw.decode() if status_raw is not None else "gone"
        if status in {"failed", "stopped", "canceled", "finished", "gone"}:
            return await run_in_threadpool(_ended, redis, settings, job_id, key, config,
                                           status)
        if status == "started" and time.monotonic() - swept >= jobstate.CLEANUP_EVERY_S:
            # A worker killed mid-job leaves it "started": let RQ's cleanup fail (or retry)
            # it once its heartbeat lapses, so this request ends instead of waiting it out.
            swept = time.monotonic()
            await run_in_threadpool(jobstate.cleanup_abandoned, redis, SHORT_QUEUE)
        if time.monotonic() >= deadline:
            public = "started" if status == "started" else "queued"
            pending = DetectPending(job_id=job_id, status=public,
                                    detail=f"still {public}; poll GET /jobs/{job_id}")
            return JSONResponse(pending.model_dump(), status_code=202)
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, POLL_MAX_S)


def _ended(redis: Redis, settings: Settings, job_id: str, key: str, config: DetectConfig,
           status: str) -> DetectResponse:
    """A job that ended without its analysis in the cache: its result, or why it failed."""
    job = jobstate.fetch(redis, job_id)
    if job is None:
        raise ApiError(502, f"detection job {job_id} disappeared before it finished")
    public = jobstate.status_of(job)
    if public == "finished":
        value = job.return_value()
        if isinstance(value, dict) and "analysis" in value:  # the cache entry is gone
            return _respond(value["analysis"], config, key, cached=False, job_id=job_id)
        raise ApiError(502, "the detection job finished without a result")
    if public == "canceled":
        raise ApiError(409, f"detection job {job_id} was canceled")
    text = jobstate.failure_text(job)
    if jobstate.error_type(job) == "ContextTooLongError":
        spec = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
        raise _too_long(spec, text, settings)
    if jobstate.is_user_error(job):
        raise ApiError(422, text)
    if jobstate.error_type(job) == "ModelLoadError":
        raise ApiError(503, f"a model cannot be loaded: {text}")
    if jobstate.error_type(job) == "OutOfMemory":
        raise ApiError(503, f"the worker ran {text}")
    raise ApiError(502, f"detection failed: {text}")
