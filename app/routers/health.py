"""GET /health: is Redis reachable, and how many workers are alive."""

from __future__ import annotations

import redis as redis_lib
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from rq.worker_registration import get_keys

import leaf_engine
from app.deps import RedisDep
from app.schemas import Health
from workers.queues import QUEUES

router = APIRouter(prefix="/health", tags=["health"])


@router.get("", response_model=Health,
            responses={503: {"model": Health, "description": "Redis is unreachable"}})
def health(redis: RedisDep) -> Health | JSONResponse:
    """Always open, even with LEAF_API_TOKEN set: load balancers and compose use it."""
    try:
        redis.ping()
        keys = list(get_keys(connection=redis))
        with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            for name in QUEUES:
                pipe.llen(f"rq:queue:{name}")
            answers = pipe.execute()
    except (redis_lib.exceptions.ConnectionError, redis_lib.exceptions.TimeoutError) as err:
        body = Health(status="unavailable", redis=f"unreachable: {err}", workers=0, queues={},
                      version=leaf_engine.__version__)
        return JSONResponse(body.model_dump(), status_code=503)
    # A killed worker stays registered until its key expires; count live keys only.
    workers = sum(bool(x) for x in answers[: len(keys)])
    queues = dict(zip(QUEUES, (int(x) for x in answers[len(keys):]), strict=True))
    return Health(status="ok" if workers else "degraded", redis="ok", workers=workers,
                  queues=queues, version=leaf_engine.__version__)
