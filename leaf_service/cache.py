"""The analysis cache: raw per-token saliency in Redis, keyed by a content hash.

A key covers everything the model-dependent half of detection (`Detector.analyse`) depends
on: both models' identities, the worker's device and dtype setting, the prompt templates,
level, segments, whether surprisal was computed, truncation, and the text. It leaves out
tau, percentile, method (apart from the surprisal it needs), seed and unit: `decide` applies
those on read, so a new tau on a known prompt costs no model call.

The API computes keys to look up; workers compute them with the same function to store.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from leaf_engine.identity import fingerprint

CACHE_VERSION = 2  # bump when the Analysis JSON or its meaning changes
KEY_PREFIX = "leaf:analysis:"
FINGERPRINT_TTL_S = 5.0  # how long a model directory's fingerprint is trusted in-process


@dataclass(frozen=True)
class ModelRef:
    """What identifies a model to the cache: where it is and how prompts are built for it."""

    path: str
    prompt_template: str | None = None
    force_template: bool = False  # the plain template even where the model has a chat one


@dataclass(frozen=True)
class AnalysisParams:
    """The detection parameters that change the raw analysis."""

    level: str = "instruction"
    segments: int = 2
    surprisal: bool = False  # method ppl needs the student's surprisal too
    truncate: bool = False


_fingerprints: dict[str, tuple[float, str]] = {}
_fingerprint_lock = threading.Lock()


def cached_fingerprint(path: str) -> str:
    """`leaf_engine.identity.fingerprint`, remembered for a few seconds: it stats every file
    of the model directory, which adds up under many small requests."""
    now = time.monotonic()
    with _fingerprint_lock:
        hit = _fingerprints.get(path)
        if hit is not None and now - hit[0] < FINGERPRINT_TTL_S:
            return hit[1]
    value = fingerprint(path)
    with _fingerprint_lock:
        _fingerprints[path] = (now, value)
    return value


def model_identity(ref: ModelRef) -> str:
    """The cache's view of a model: its files' fingerprint and its prompt template."""
    parts: list[Any] = [cached_fingerprint(ref.path), ref.prompt_template]
    if ref.force_template:  # appended only when set, so the keys of unforced models stay
        parts.append(True)
    blob = json.dumps(parts).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def analysis_key(
    teacher: str, student: str, params: AnalysisParams, *, device: str, dtype: str,
    instruction: str, output: str,
) -> str:
    """The Redis key of one (instruction, output) pair's raw analysis; `teacher` and
    `student` are `model_identity` values.

    The API computes identities when a request arrives and hands them to the job, so the
    worker stores results under exactly the keys the API will look up.
    """
    content = {
        "v": CACHE_VERSION,
        "teacher": teacher,
        "student": student,
        "device": device,
        "dtype": dtype,
        "level": params.level,
        # Segments only shape response-level views.
        "segments": params.segments if params.level == "response" else None,
        "surprisal": params.surprisal,
        "truncate": params.truncate,
        "instruction": instruction,
        "output": output,
    }
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False).encode()
    return KEY_PREFIX + hashlib.sha256(blob).hexdigest()


def record_id(key: str) -> str:
    """A stable id for a prompt's detection record: the same for cached and fresh answers."""
    return key.removeprefix(KEY_PREFIX)[:16]


class AnalysisCache:
    """Raw `Analysis.to_dict()` JSON under content-hash keys, each with a TTL."""

    def __init__(self, redis: Redis, ttl_s: int):
        self.redis = redis
        self.ttl_s = ttl_s

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self.redis.get(key)
        return None if raw is None else json.loads(raw)

    def get_many(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        if not keys:
            return []
        return [None if raw is None else json.loads(raw) for raw in self.redis.mget(keys)]

    def put(self, key: str, analysis: dict[str, Any]) -> None:
        self.redis.set(key, json.dumps(analysis, separators=(",", ":")), ex=self.ttl_s)

    def put_many(self, items: Sequence[tuple[str, dict[str, Any]]]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for key, analysis in items:
                pipe.set(key, json.dumps(analysis, separators=(",", ":")), ex=self.ttl_s)
            pipe.execute()
