"""Dependencies: what handlers need, and the lookups that end in 404."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from app.errors import ApiError, not_found
from app.rendered import RenderedRecords
from app.schemas import DetectParams
from leaf_engine.analysis import DetectConfig
from leaf_service import jobs as jobstate
from leaf_service.cache import ModelRef
from leaf_service.queues import is_id
from leaf_service.settings import Settings
from leaf_service.store import DataStore


# The lookups below are async on purpose: FastAPI runs a plain `def` dependency in the
# thread pool, a hop that costs more than these attribute reads.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> Redis:
    return request.app.state.redis


async def get_aredis(request: Request) -> AsyncRedis:
    return request.app.state.aredis


async def get_store(request: Request) -> DataStore:
    return request.app.state.store


async def get_rendered(request: Request) -> RenderedRecords:
    return request.app.state.rendered


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
AsyncRedisDep = Annotated[AsyncRedis, Depends(get_aredis)]
StoreDep = Annotated[DataStore, Depends(get_store)]
RenderedDep = Annotated[RenderedRecords, Depends(get_rendered)]

_bearer = HTTPBearer(auto_error=False, description="needed when LEAF_API_TOKEN is set")


def token_problem(expected: str, authorization: str | None) -> str | None:
    """Why an `Authorization` header does not carry the expected bearer token, or None if it
    does."""
    scheme, _, given = (authorization or "").partition(" ")
    if not authorization or scheme.lower() != "bearer" or not given.strip():
        return ("this service needs an API token: send 'Authorization: Bearer <token>' "
                "(the token is LEAF_API_TOKEN)")
    # Digests first, so that not even the token's length shows in the timing.
    if not hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(),
                               hashlib.sha256(expected.encode()).digest()):
        return "the API token is wrong"
    return None


def unauthorized(problem: str) -> ApiError:
    return ApiError(401, problem, headers={"WWW-Authenticate": "Bearer"})


async def require_token(
    request: Request, settings: SettingsDep,
    # Unused here: it is what declares the bearer scheme in the OpenAPI schema.
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With LEAF_API_TOKEN set, the request must carry `Authorization: Bearer <token>`.

    `app.middleware.TokenGate` enforces this before a request is read; this dependency
    declares the scheme (and its 401) in the schema and checks again, in case a route is
    ever served without the gate."""
    token = settings.token
    if token is None:
        return
    problem = token_problem(token, request.headers.get("authorization"))
    if problem is not None:
        raise unauthorized(problem)


JobId = Annotated[str, Path(description="a job id", max_length=64)]
DatasetId = Annotated[str, Path(description="a dataset id", max_length=64)]


def get_job_or_404(job_id: JobId, redis: RedisDep, store: StoreDep) -> jobstate.JobState:
    state = jobstate.load(redis, store, job_id) if is_id(job_id) else None
    if state is None:
        raise not_found("job", job_id)
    return state


def get_dataset_or_404(dataset_id: DatasetId, store: StoreDep) -> dict[str, Any]:
    meta = store.dataset_meta(dataset_id)
    if meta is None:
        raise not_found("dataset", dataset_id)
    return meta


JobDep = Annotated[jobstate.JobState, Depends(get_job_or_404)]
DatasetDep = Annotated[dict[str, Any], Depends(get_dataset_or_404)]


def resolve_model(settings: Settings, name: str | None, *, field: str,
                  default: str | None = None) -> tuple[str, ModelRef]:
    """A model name from the allow-list (or the default) and what the cache needs of it."""
    chosen = name if name is not None else default
    if chosen is None or chosen not in settings.models:
        known = ", ".join(sorted(settings.models))
        raise ApiError(422, f"{field}: unknown model '{chosen}'; configured models: {known}",
                       field=field)
    spec = settings.models[chosen]
    return chosen, ModelRef(spec.path, spec.prompt_template, spec.force_template)


def detect_config(body: DetectParams) -> DetectConfig:
    """The engine's config for a request's thresholds. A value it refuses raises its
    `ConfigError`, which names the field and answers 422 (`app.errors`)."""
    return DetectConfig(tau=0.1 if body.tau is None else body.tau,
                        percentile=body.percentile, method=body.method, level=body.level,
                        segments=body.segments, seed=body.seed, unit=body.unit,
                        normalise=body.normalise)
