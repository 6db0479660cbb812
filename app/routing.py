"""Two adjustments to how FastAPI serves this app: static files that never shadow an API
route, and an OpenAPI schema that declares auth only when a token is configured."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Scope


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


def without_auth(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """With no LEAF_API_TOKEN the API is open: say so in the schema, which otherwise
    declares the bearer scheme (and its 401) on every protected route."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.pop("security", None)
                    operation.get("responses", {}).pop("401", None)
            schema.get("components", {}).pop("securitySchemes", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
