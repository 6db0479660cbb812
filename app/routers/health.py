"""GET /health: is Redis reachable, and are workers alive to take the queued jobs."""

from __future__ import annotations

import redis as redis_lib
from fastapi import APIRouter
from fastapi.responses import JSONResponse

import leaf_engine
from app.deps import RedisDep
from app.schemas import Health
from leaf_service.jobs import live_workers, workers_problem
from leaf_service.queues import QUEUES

router = APIRouter(prefix="/health", tags=["health"])


@router.get("", response_model=Health,
            responses={503: {"model": Health, "description": "Redis is unreachable"}})
def health(redis: RedisDep) -> Health | JSONResponse:
    """Always open, even with LEAF_API_TOKEN set: load balancers and compose use it.
    `degraded` (with a `reason`) while no live worker takes a queue: jobs are still
    accepted, and wait."""
    try:
        redis.ping()
        total, per_queue = live_workers(redis)
        with redis.pipeline(transaction=False) as pipe:
            for name in QUEUES:
                pipe.llen(f"rq:queue:{name}")
            lengths = pipe.execute()
    except (redis_lib.exceptions.ConnectionError, redis_lib.exceptions.TimeoutError) as err:
        body = Health(status="unavailable", redis=f"unreachable: {err}", workers=0, queues={},
                      reason="Redis is unreachable: nothing can be queued or looked up",
                      version=leaf_engine.__version__)
        return JSONResponse(body.model_dump(), status_code=503)
    queues = dict(zip(QUEUES, (int(x) for x in lengths), strict=True))
    reason = workers_problem(total, per_queue)
    return Health(status="ok" if reason is None else "degraded", redis="ok", workers=total,
                  queues=queues, reason=reason, version=leaf_engine.__version__)
