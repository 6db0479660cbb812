"""The queue, attacked and broken for real: jobs naming other code written straight into
Redis, workers killed or frozen under `leaf serve` and under the API, Redis killed under
`leaf serve`.

Each test prints the figure it measured (`pytest -s`); docs/reliability.md records them.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.callbacks import Callback
from rq.job import Job, JobStatus
from rq.queue import Queue

from app.main import create_app
from leaf_service import jobs as jobstate
from leaf_service.queues import (
    LONG_QUEUE,
    PROMPT_FUNCTION,
    SERIALIZER,
    SHORT_QUEUE,
    WORKER_TTL_S,
    new_id,
)
from leaf_service.settings import Settings
from tests.reliability.procs import leaf_serve, service_env, start_worker, stop
from tests.service import (
    ROWS,
    drain,
    jsonl,
    make_settings,
    running_worker,
    wait_for,
    wait_job,
)

NDJSON = {"content-type": "application/x-ndjson"}
PROMPT = {"instruction": "Bob had 12 apples and gave 4 to Carl.", "output": "8."}


def figure(name: str, value: Any) -> None:
    print(f"\n[figure] {name}: {value}")


# ---------------------------------------------------------------------------- allow-list


def _raw_job(redis: Redis, queue_name: str, func: str, *args: Any) -> str:
    """A job written into Redis the way any client of the socket could, without RQ."""
    job_id = new_id()
    redis.hset(f"rq:job:{job_id}", mapping={
        "data": json.dumps([func, None, list(args), {}]), "status": "queued",
        "origin": queue_name, "created_at": "2026-01-01T00:00:00.000000Z",
        "enqueued_at": "2026-01-01T00:00:00.000000Z", "description": "raw", "timeout": 60})
    redis.rpush(f"rq:queue:{queue_name}", job_id)
    return job_id


def test_the_worker_runs_only_leafs_job_functions(tmp_path: Path, redis: Redis,
                                                  settings: Settings, redis_url: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Jobs naming `os.system`, `builtins.eval`, helpers of workers.jobs that are not job
    functions, a module that does something on import, and a LeaF job function carrying a
    failure callback, put on both queues with RQ's own client and as raw hashes: a burst
    worker fails every one with the reason, nothing they name runs or is imported."""
    marker = tmp_path / "pwned"
    touch = f"touch {marker}"
    write = f"open({str(marker)!r}, 'w').write('x')"
    short = Queue(SHORT_QUEUE, connection=redis, serializer=SERIALIZER)
    long = Queue(LONG_QUEUE, connection=redis, serializer=SERIALIZER)
    attacks = {
        "os.system": short.enqueue("os.system", touch).id,
        "builtins.eval": long.enqueue("builtins.eval", write).id,
        "builtins.exec (raw)": _raw_job(redis, SHORT_QUEUE, "builtins.exec", write),
        "posix.system (raw, LeaF-style id)": _raw_job(redis, LONG_QUEUE, "posix.system", touch),
        "workers.jobs helper": long.enqueue("workers.jobs._public_paths", {"a": 1},
                                            str(tmp_path), {}).id,
        "workers.jobs.tarfile.open": long.enqueue("workers.jobs.tarfile.open", str(marker),
                                                  "w").id,
        "import side effect": short.enqueue("this.s").id,
        "unreadable data (raw)": _raw_job(redis, SHORT_QUEUE, "os.system", touch),
        "job function + callback": short.enqueue(
            PROMPT_FUNCTION, {"cache_key": "x"}, job_id=new_id(),
            on_failure=Callback("os.system")).id,
    }
    redis.hset(f"rq:job:{attacks['unreadable data (raw)']}", "data", b"\x00not json")
    imported_before = "this" in sys.modules
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="workers.worker"):
        drain(settings, redis_url)
    figure("foreign jobs refused", f"{len(attacks)} in {time.monotonic() - started:.2f} s, "
                                   "none run")
    assert not marker.exists(), "a refused job ran"
    assert ("this" in sys.modules) == imported_before, "a refused job's module was imported"
    for what, job_id in attacks.items():
        job = Job.fetch(job_id, connection=redis, serializer=SERIALIZER)
        assert job.get_status() == JobStatus.FAILED, what
        text = job.latest_result().exc_string
        assert "JobRefused: this worker runs only LeaF's job functions" in text, (what, text)
        assert "stage" not in job.meta, what  # the job function never started
    assert "not one of LeaF's job functions" in Job.fetch(
        attacks["os.system"], connection=redis, serializer=SERIALIZER).latest_result(
    ).exc_string
    assert "carries failure_callback_name" in Job.fetch(
        attacks["job function + callback"], connection=redis, serializer=SERIALIZER
    ).latest_result().exc_string
    refused = [r for r in caplog.records if r.levelno >= logging.ERROR
               and r.getMessage().startswith("refused job")]
    assert len(refused) == len(attacks)
    assert redis.llen(f"rq:queue:{SHORT_QUEUE}") == redis.llen(f"rq:queue:{LONG_QUEUE}") == 0


def test_leaf_jobs_still_run_beside_refused_ones(client: TestClient, redis: Redis,
                                                 settings: Settings, redis_url: str,
                                                 tmp_path: Path) -> None:
    """The allow-list lets LeaF's own jobs through: a dataset job and a /detect job queued
    around a foreign one all finish in the same burst."""
    marker = tmp_path / "pwned"
    dataset = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
    job_id = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"]}
                         ).json()["id"]
    foreign = Queue(LONG_QUEUE, connection=redis, serializer=SERIALIZER).enqueue(
        "os.system", f"touch {marker}")
    drain(settings, redis_url)
    assert client.get(f"/jobs/{job_id}").json()["status"] == "finished"
    assert foreign.get_status() == JobStatus.FAILED and not marker.exists()


# ---------------------------------------------------------------------------- liveness


def test_queued_jobs_say_why_they_wait(client: TestClient, settings: Settings, redis_url: str,
                                       dataset: dict[str, Any]) -> None:
    """No worker: /health is degraded and says why, jobs are still accepted and their view
    says why they wait. A worker on the short queue only: the long queue's jobs say that."""
    health = client.get("/health").json()
    assert health["status"] == "degraded" and health["reason"] == (
        "no worker is running: queued jobs wait until one starts")
    accepted = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"]})
    assert accepted.status_code == 202
    view = client.get(f"/jobs/{accepted.json()['id']}").json()
    assert view["status"] == "queued"
    assert view["waiting"] == "no worker is running: the job waits until one starts"
    listed = client.get("/jobs").json()["jobs"]
    assert [j["waiting"] for j in listed] == [view["waiting"]]
    with running_worker(settings, redis_url, (SHORT_QUEUE,)):
        health = wait_for(lambda: (lambda h: h if h["workers"] == 1 else None)(
            client.get("/health").json()))
        assert health["status"] == "degraded"
        jobstate._seen_workers.clear()  # what views last saw of the workers, up to 1 s old
        assert health["reason"] == f"no worker takes queue {LONG_QUEUE}: its jobs wait until " \
                                   "one starts"
        assert client.get(f"/jobs/{accepted.json()['id']}").json()["waiting"] == (
            f"no worker takes queue {LONG_QUEUE}: the job waits until one starts")


@pytest.mark.slow
def test_a_killed_worker_leaves_health_within_its_ttl(tmp_path: Path, redis: Redis,
                                                      redis_url: str, llama_pair) -> None:
    """`leaf worker` SIGKILLed while idle: /health counts it no more within WORKER_TTL_S (and
    always within 10 s); meanwhile it says why jobs wait, a new job is still accepted (202)
    and its view says why it waits; the next worker runs it."""
    settings = make_settings(redis_url, tmp_path / "data", llama_pair)
    env = service_env(settings)
    with TestClient(create_app(settings)) as client:
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            wait_for(lambda: client.get("/health").json()["workers"] == 1, timeout=120)
            assert client.get("/health").json()["status"] == "ok"
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        killed = time.monotonic()
        health = wait_for(lambda: (lambda h: h if h["workers"] == 0 else None)(
            client.get("/health").json()), timeout=15, every=0.1)
        gone = time.monotonic() - killed
        figure("SIGKILLed worker gone from /health", f"{gone:.1f} s (TTL {WORKER_TTL_S} s)")
        assert gone <= 10
        assert health["status"] == "degraded" and "no worker is running" in health["reason"]
        dataset = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
        accepted = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"]})
        assert accepted.status_code == 202
        view = client.get(f"/jobs/{accepted.json()['id']}").json()
        assert view["status"] == "queued" and "no worker is running" in view["waiting"]
        replacement = start_worker(env, tmp_path / "worker2.log")
        try:
            done = wait_job(client, accepted.json()["id"], timeout=120)
        finally:
            stop(replacement)
        assert done["status"] == "finished" and done["waiting"] is None


# ---------------------------------------------------------------------------- leaf serve


def _child(serve: Any, word: str) -> psutil.Process:
    found = [c for c in psutil.Process(serve.pid).children(recursive=True)
             if word in " ".join(c.cmdline())]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_leaf_serve_restarts_a_dead_worker_and_a_dead_redis(tmp_path: Path,
                                                            llama_pair) -> None:
    """Under `leaf serve`: a frozen worker (SIGSTOP) drops out of /health within 10 s, which
    then says why jobs wait while still accepting them; killed (SIGKILL), the worker is
    restarted and runs what waited. redis-server SIGKILLed: restarted, and the service
    answers again with every job and dataset intact and new work flowing."""
    settings = make_settings("unix:///unused", tmp_path / "data", llama_pair)
    env = service_env(settings, LEAF_DETECT_WAIT_S=60)
    env.pop("LEAF_REDIS_URL")
    log = tmp_path / "serve.log"
    with leaf_serve(env, log=log) as (url, serve):
        http = httpx.Client(base_url=url, timeout=60)
        dataset = http.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
        first = http.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"]}).json()
        wait_for(lambda: http.get(f"/jobs/{first['id']}").json()["status"] == "finished",
                 timeout=120, every=0.2)
        finished = http.get(f"/jobs/{first['id']}").json()

        # A frozen worker: alive to the supervisor, silent to Redis.
        worker = _child(serve, "worker")
        worker.suspend()
        frozen = time.monotonic()
        health = wait_for(lambda: (lambda h: h if h["workers"] == 0 else None)(
            http.get("/health").json()), timeout=15, every=0.1)
        figure("frozen worker gone from /health", f"{time.monotonic() - frozen:.1f} s")
        assert time.monotonic() - frozen <= 10
        assert health["status"] == "degraded" and "no worker is running" in health["reason"]
        waiting = http.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"]})
        assert waiting.status_code == 202
        assert "no worker" in http.get(f"/jobs/{waiting.json()['id']}").json()["waiting"]

        worker.kill()
        killed = time.monotonic()
        wait_for(lambda: http.get("/health").json()["status"] == "ok", timeout=120, every=0.2)
        figure("SIGKILLed worker back in /health (restarted by leaf serve)",
               f"{time.monotonic() - killed:.1f} s")
        assert _child(serve, "worker").pid != worker.pid
        wait_for(lambda: http.get(f"/jobs/{waiting.json()['id']}").json()["status"] ==
                 "finished", timeout=120, every=0.2)

        # Redis killed: a crash, no chance to save.
        redis_server = _child(serve, "redis-server")
        redis_server.kill()
        killed = time.monotonic()
        wait_for(lambda: _answers(http), timeout=60, every=0.1)
        figure("SIGKILLed redis-server answering again (restarted by leaf serve)",
               f"{time.monotonic() - killed:.1f} s")
        assert _child(serve, "redis-server").pid != redis_server.pid
        assert http.get(f"/jobs/{first['id']}").json()["result"] == finished["result"]
        assert http.get("/datasets").json()["datasets"][0]["id"] == dataset["id"]
        wait_for(lambda: http.get("/health").json()["status"] == "ok", timeout=60, every=0.2)
        fresh = http.post("/detect", json=PROMPT)
        assert fresh.status_code == 200 and fresh.json()["cached"] is False
        figure("SIGKILLed redis-server to a new /detect computed",
               f"{time.monotonic() - killed:.1f} s")
        served = Redis.from_url(_child(serve, "worker").environ()["LEAF_REDIS_URL"])
        assert served.config_get("appendonly")["appendonly"] == "yes"
    output = log.read_text()
    assert "the worker was killed by SIGKILL" in output
    assert "redis-server was killed by SIGKILL" in output
    assert "Traceback" not in output.split("redis-server was killed")[0]


def _answers(http: httpx.Client) -> bool:
    try:
        return http.get("/health").status_code == 200
    except httpx.HTTPError:
        return False
