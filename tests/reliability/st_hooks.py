"""Schemathesis hooks for the fuzz pass (named in schemathesis.toml)."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx: Any, value: Any) -> bytes:
    """A JSONL upload is a string in the schema and goes on the wire as its bytes; the
    fuzzer's other values (numbers, objects, null) go as their JSON text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()
