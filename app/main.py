"""The FastAPI app. Run with `leaf serve`, or `uvicorn --factory app.main:create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

import leaf_engine
from app import errors
from app.rendered import RenderedRecords
from app.routers import datasets, detect, examples, health, jobs, models
from app.routing import ReadOnlyMount, without_auth
from app.settings import Settings, get_settings
from workers.queues import connect, connect_async
from workers.store import DataStore

log = logging.getLogger(__name__)

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
UPLOAD_SLACK_BYTES = 1 << 20  # multipart framing around the file
JSON_SLACK_BYTES = 64 << 10


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    embedded = None
    url = settings.redis_url
    if url is None:
        from workers.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(settings.data_dir / "redis").start()
        url = embedded.url
        log.warning("LEAF_REDIS_URL is unset: started a Redis at %s with no worker; "
                    "`leaf serve` starts one of each", url)
    redis = connect(url)
    aredis = connect_async(url)
    store = DataStore(settings.data_dir)
    store.ensure()
    app.state.redis = redis
    app.state.aredis = aredis
    app.state.store = store
    app.state.rendered = RenderedRecords()
    try:
        yield
    finally:
        redis.close()
        await aredis.aclose()
        if embedded is not None:
            embedded.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="LeaF", version=leaf_engine.__version__, lifespan=lifespan,
        description="Find confounding tokens with a teacher and a student model, prune them, "
                    "and distill the teacher's focus into the student. Errors are JSON: "
                    "`{detail, field?, line?, errors?}`.",
    )
    app.state.settings = settings
    errors.install(app)
    # Text fields may be JSON-escaped to 6 bytes a character.
    json_limit = 6 * (settings.max_instruction_chars + settings.max_output_chars)
    app.add_middleware(errors.BodyLimit, limit=json_limit + JSON_SLACK_BYTES,
                       upload_limit=settings.max_upload_bytes + UPLOAD_SLACK_BYTES,
                       upload_paths=("/datasets",))
    for module in (health, models, examples, detect, datasets, jobs):
        app.include_router(module.router)
    if settings.token is None:
        app.openapi = without_auth(app)  # type: ignore[method-assign]
    # Last, so API routes win; html=True serves index.html at /.
    if FRONTEND.is_dir():
        app.router.routes.append(ReadOnlyMount(
            "/", app=StaticFiles(directory=FRONTEND, html=True), name="frontend",
            api=app.router))
    else:
        log.warning("no frontend directory at %s; serving the API only", FRONTEND)
    return app
