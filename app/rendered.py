"""Cached /detect answers, rendered once per (analysis, thresholds) and kept as bytes.

A cached answer is a pure function of the analysis (named by its content hash) and the
detection config, so the rendered JSON can be reused for as long as the process lives: a
repeat skips `decide`, validation and serialisation, which are most of a cached answer's cost.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import astuple

from fastapi.responses import Response

from app.schemas import DetectResponse
from leaf_engine.analysis import DetectConfig

MAX_ENTRIES = 2048  # ~10 KB each for a short prompt


class RenderedRecords:
    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, config: DetectConfig) -> Response | None:
        entry = (key, *astuple(config))
        with self._lock:
            body = self._entries.get(entry)
            if body is None:
                return None
            self._entries.move_to_end(entry)
        return Response(body, media_type="application/json")

    def render(self, key: str, config: DetectConfig, render: Callable[[], DetectResponse]
               ) -> Response:
        body = render().model_dump_json().encode()
        with self._lock:
            self._entries[(key, *astuple(config))] = body
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return Response(body, media_type="application/json")
