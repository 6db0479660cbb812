"""Cached /detect answers, rendered once per (analysis, thresholds) and kept as bytes.

A cached answer is a pure function of the analysis (named by its content hash) and the
detection config, so the rendered JSON can be reused for as long as the process lives: a
repeat skips `decide`, validation and serialisation, which are most of a cached answer's cost.

`remember` also files the answer under the digest of the request body that asked for it, so
that `app.middleware.CachedDetect` can answer the same body again without routing, parsing or
hashing the text: the cheapest path a cached answer can take. Such an entry names the
fingerprints of the models' files it was computed with and is used only while they still
hold, so a model whose files change on disk is not answered for from memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import astuple

from fastapi.responses import Response

from app.schemas import DetectResponse
from leaf_engine.analysis import DetectConfig
from leaf_service.cache import ModelRef, cached_fingerprint

MAX_BYTES = 64 << 20  # rendered answers kept, in bytes (~10 KB each for a short prompt)
MAX_BODIES = 16_384  # request-body digests kept; each names a rendered answer

Entry = tuple[object, ...]


class RenderedRecords:
    def __init__(self, max_bytes: int = MAX_BYTES, max_bodies: int = MAX_BODIES):
        self.max_bytes = max_bytes
        self.max_bodies = max_bodies
        self._entries: OrderedDict[Entry, bytes] = OrderedDict()
        self._bytes = 0
        self._bodies: OrderedDict[bytes, tuple[Entry, tuple[tuple[str, str], ...]]] = (
            OrderedDict())
        self._lock = threading.Lock()

    def get(self, key: str, config: DetectConfig) -> Response | None:
        body = self._get((key, *astuple(config)))
        return None if body is None else Response(body, media_type="application/json")

    def _get(self, entry: Entry) -> bytes | None:
        with self._lock:
            body = self._entries.get(entry)
            if body is not None:
                self._entries.move_to_end(entry)
            return body

    def render(self, key: str, config: DetectConfig, render: Callable[[], DetectResponse]
               ) -> Response:
        body = render().model_dump_json().encode()
        entry = (key, *astuple(config))
        with self._lock:
            old = self._entries.pop(entry, None)
            self._bytes += len(body) - (len(old) if old is not None else 0)
            self._entries[entry] = body
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
        return Response(body, media_type="application/json")

    def remember(self, digest: bytes, key: str, config: DetectConfig,
                 models: tuple[ModelRef, ...]) -> None:
        """File the rendered answer for (key, config) under a request body's digest, with
        the models (and their files' fingerprints) it depends on."""
        prints = tuple((ref.path, cached_fingerprint(ref.path)) for ref in models)
        with self._lock:
            self._bodies[digest] = ((key, *astuple(config)), prints)
            self._bodies.move_to_end(digest)
            while len(self._bodies) > self.max_bodies:
                self._bodies.popitem(last=False)

    def by_body(self, digest: bytes) -> bytes | None:
        """The answer to a request body seen before, while its models are unchanged."""
        with self._lock:
            found = self._bodies.get(digest)
        if found is None:
            return None
        entry, prints = found
        # The prompt templates are settings, fixed for the process; the files may change.
        if any(cached_fingerprint(path) != value for path, value in prints):
            with self._lock:
                self._bodies.pop(digest, None)
            return None
        return self._get(entry)

    def __len__(self) -> int:
        return len(self._entries)
