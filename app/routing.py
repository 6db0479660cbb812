"""Adjustments to how FastAPI serves this app: static files that never shadow an API route
and are revalidated on every load, and an OpenAPI schema that says what this configuration
accepts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Scope

from app.schemas import SETTING_KEY
from app.settings import Settings


class RevalidatedFiles(StaticFiles):
    """The page's modules have no content hash in their names, so a browser must ask (a
    cheap 304 by ETag) before reusing one; otherwise an upgraded server meets stale code."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


class ReadOnlyMount(Mount):
    """Static files for GET and HEAD on paths no API route has, so that a wrong method on an
    API path gets that route's 405 (and Allow header), not the file server's answer."""

    def __init__(self, path: str, *, app: ASGIApp, name: str, api: Router):
        super().__init__(path, app=app, name=name)
        self.api = api

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and (scope["method"] not in {"GET", "HEAD"} or any(
                route.matches(scope)[0] is Match.PARTIAL for route in self.api.routes
                if route is not self)):
            return Match.NONE, {}
        return super().matches(scope)


def configured_openapi(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """The schema, fitted to the settings: the configured model names as an enum and the
    configured text limits as maxLength (so that a client, or a fuzzer, can tell a valid
    request from the schema alone); and, with no LEAF_API_TOKEN, no auth (the routes
    otherwise declare the bearer scheme and its 401)."""
    build = app.openapi
    values: dict[str, Callable[[dict[str, Any]], None]] = {
        "models": lambda node: node.update(enum=sorted(settings.models)),
        "max_instruction_chars": lambda node: node.update(
            maxLength=settings.max_instruction_chars),
        "max_output_chars": lambda node: node.update(maxLength=settings.max_output_chars),
    }

    def fill(node: Any) -> None:
        if isinstance(node, dict):
            setting = node.pop(SETTING_KEY, None)
            if setting is not None:
                values[setting](node)
            for child in node.values():
                fill(child)
        elif isinstance(node, list):
            for child in node:
                fill(child)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            fill(schema)
            if settings.token is None:
                for operations in schema.get("paths", {}).values():
                    for operation in operations.values():
                        operation.pop("security", None)
                        operation.get("responses", {}).pop("401", None)
                schema.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
