"""POST /detect: one prompt's detection record, from the cache or a worker.

The raw analysis is looked up by content hash; on a hit, tau and the other thresholds are
applied here (microseconds, no worker). On a miss the prompt is queued for a worker (an
identical prompt already queued is joined, not queued twice), and the request waits up to
LEAF_DETECT_WAIT_S for it before answering 202 with the job id.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
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
from app.errors import ApiError, job_failed
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
from leaf_service import prompts
from leaf_service.cache import AnalysisParams, analysis_key, model_identity, record_id
from leaf_service.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/detect", tags=["detect"], dependencies=[Depends(require_token)],
                   responses=COMMON_ERRORS)

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
    job_id = await run_in_threadpool(
        prompts.submit, redis, settings, key=key, teacher=teacher, student=student,
        instruction=body.instruction, output=body.output, params=params, config=config)
    outcome = await prompts.wait(redis, aredis, settings, job_id, key)
    if outcome.analysis is not None:
        return _respond(outcome.analysis, config, key, cached=False, job_id=job_id)
    if outcome.status in {"queued", "started"}:
        pending = DetectPending(job_id=job_id, status=outcome.status,
                                detail=f"still {outcome.status}; poll GET /jobs/{job_id}")
        return JSONResponse(pending.model_dump(), status_code=202)
    if outcome.status == "gone":
        raise ApiError(502, f"detection job {job_id} disappeared before it finished")
    if outcome.status == "finished":
        raise ApiError(502, "the detection job finished without a result")
    if outcome.status == "canceled":
        raise ApiError(409, f"detection job {job_id} was canceled")
    assert outcome.failure is not None  # status "failed"
    raise job_failed(outcome.failure, "detection")


def _check_lengths(body: DetectRequest, settings: Settings) -> None:
    for field, limit, name in (
        ("instruction", settings.max_instruction_chars, "LEAF_MAX_INSTRUCTION_CHARS"),
        ("output", settings.max_output_chars, "LEAF_MAX_OUTPUT_CHARS"),
    ):
        length = len(getattr(body, field))
        if length > limit:
            raise ApiError(422, f"{field}: {length} characters, more than this server's limit "
                                f"of {limit} ({name})", field=field)


def _respond(analysis: dict[str, Any], config: DetectConfig, key: str, *, cached: bool,
             job_id: str | None) -> DetectResponse:
    record = decide(Analysis.from_dict(analysis), config, example_id=record_id(key))
    return DetectResponse(**record.to_dict(), cached=cached, job_id=job_id)
