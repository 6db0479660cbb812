"""Adjustments to how FastAPI serves this app: static files that never shadow an API route
and are revalidated on every load, and an OpenAPI schema that says what this configuration
accepts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Scope

from app.schemas import FORM_TEXT_BYTES, SETTING_KEY, jsonl_text
from leaf_service.settings import Settings

# What the page is made of. frontend/ is also a Python package (its __init__.py, a
# __pycache__ beside it), and nothing but these suffixes is served from it.
ASSET_SUFFIXES = frozenset({".html", ".css", ".js", ".mjs", ".svg", ".png", ".jpg", ".jpeg",
                            ".gif", ".webp", ".ico", ".woff", ".woff2"})


def is_asset(path: str) -> bool:
    """Whether a path under the static directory (as StaticFiles normalises it; "." is the
    directory itself, whose index.html is the page) names a file of the page: an asset
    suffix, and no hidden or private component (`.git`, `__pycache__`)."""
    if path in {"", "."}:
        return True
    parts = PurePosixPath(path.replace(os.sep, "/")).parts
    return bool(parts) and not any(part.startswith((".", "_")) for part in parts) and \
        PurePosixPath(parts[-1]).suffix.lower() in ASSET_SUFFIXES


class RevalidatedFiles(StaticFiles):
    """The page's files, and only those (`is_asset`): anything else is a 404, as if absent.

    The page's modules have no content hash in their names, so a browser must ask (a cheap
    304 by ETag) before reusing one; otherwise an upgraded server meets stale code."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if not is_asset(path):
            return "", None
        return super().lookup_path(path)

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
    """The schema, fitted to the settings: the configured model names as an enum, the
    configured text limits as maxLength and an upload's rows as a pattern (so that a client,
    or a fuzzer, can tell a valid request from the schema alone); and, with no
    LEAF_API_TOKEN, no auth (the routes otherwise declare the bearer scheme and its 401)."""
    build = app.openapi

    def jsonl(max_bytes: int) -> dict[str, Any]:
        return jsonl_text(instruction_chars=settings.max_instruction_chars,
                          output_chars=settings.max_output_chars, rows=settings.max_rows,
                          max_bytes=max_bytes)

    values: dict[str, Callable[[dict[str, Any]], None]] = {
        "models": lambda node: node.update(enum=sorted(settings.models)),
        "max_instruction_chars": lambda node: node.update(
            maxLength=settings.max_instruction_chars),
        "max_output_chars": lambda node: node.update(maxLength=settings.max_output_chars),
        "upload_form": lambda node: node.update(jsonl(min(settings.max_upload_bytes,
                                                          FORM_TEXT_BYTES))),
        "upload_body": lambda node: node.update(jsonl(settings.max_upload_bytes)),
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
