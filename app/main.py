"""The FastAPI app. Run with `leaf serve`, or `uvicorn --factory app.main:create_app`."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

import leaf_engine
from app import errors
from app.middleware import CachedDetect, TokenGate
from app.rendered import RenderedRecords
from app.routers import datasets, detect, examples, health, jobs, models
from app.routing import ReadOnlyMount, RevalidatedFiles, configured_openapi
from leaf_service.queues import connect, connect_async
from leaf_service.settings import Settings, get_settings
from leaf_service.store import DataStore

log = logging.getLogger(__name__)

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
UPLOAD_SLACK_BYTES = 1 << 20  # multipart framing around the file
JSON_SLACK_BYTES = 64 << 10
DOCS_URL, REDOC_URL, OPENAPI_URL = "/docs", "/redoc", "/openapi.json"
ROUTERS = (health, models, examples, detect, datasets, jobs)  # each with its own path prefix


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    embedded = None
    url = settings.redis_url
    if url is None:
        from leaf_service.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(settings.data_dir / "redis").start()
        url = embedded.url
        # The socket, not the URL: the URL carries the password.
        log.warning("LEAF_REDIS_URL is unset: started a Redis on %s with no worker; "
                    "`leaf serve` starts one of each", embedded.socket)
    redis = connect(url)
    aredis = connect_async(url)
    store = DataStore(settings.data_dir)
    store.ensure()
    app.state.redis = redis
    app.state.aredis = aredis
    app.state.store = store
    try:
        yield
    finally:
        redis.close()
        await aredis.aclose()
        if embedded is not None:
            embedded.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # FastAPI's OpenTelemetry hooks ask for the global providers on every request; that is
    # a noticeable share of a cached answer, so they are on only where OTEL is configured.
    otel = any(name.startswith(("OTEL_", "FASTAPI_OTEL_")) for name in os.environ)
    app = FastAPI(
        title="LeaF", version=leaf_engine.__version__, lifespan=lifespan,
        telemetry={"tracing": otel, "metrics": otel, "logs": otel},
        docs_url=DOCS_URL, redoc_url=REDOC_URL, openapi_url=OPENAPI_URL,
        description="Find confounding tokens with a teacher and a student model, prune them, "
                    "and distill the teacher's focus into the student. Errors are JSON: "
                    "`{detail, field?, line?, errors?}`. With LEAF_API_TOKEN set, every "
                    "endpoint but /health and the web page needs 'Authorization: Bearer "
                    "<token>' (these docs too, unless LEAF_PUBLIC_DOCS=true).",
    )
    app.state.settings = settings
    app.state.rendered = RenderedRecords()
    errors.install(app)
    for module in ROUTERS:
        app.include_router(module.router)
    app.openapi = configured_openapi(app, settings)  # type: ignore[method-assign]
    # Middleware added last runs first: the token gate, then the body limit, then the fast
    # path for repeated cached /detect bodies.
    app.add_middleware(CachedDetect, rendered=app.state.rendered)
    # Text fields may be JSON-escaped to 6 bytes a character.
    json_limit = 6 * (settings.max_instruction_chars + settings.max_output_chars)
    app.add_middleware(errors.BodyLimit, limit=json_limit + JSON_SLACK_BYTES,
                       upload_limit=settings.max_upload_bytes + UPLOAD_SLACK_BYTES,
                       upload_paths=("/datasets",))
    if settings.token is not None:
        protected = {module.router.prefix for module in ROUTERS}
        if not settings.public_docs:
            protected |= {DOCS_URL, REDOC_URL, OPENAPI_URL}
        app.add_middleware(TokenGate, token=settings.token, protected=protected)
    # Last, so API routes win; html=True serves index.html at /.
    if FRONTEND.is_dir():
        app.router.routes.append(ReadOnlyMount(
            "/", app=RevalidatedFiles(directory=FRONTEND, html=True), name="frontend",
            api=app.router))
    else:
        log.warning("no frontend directory at %s; serving the API only", FRONTEND)
    return app
