"""Faults, for real: workers killed with SIGKILL mid-job, Redis stopped under a running API,
and jobs that raise (a broken model, an allocation over the worker's memory cap).

Each test prints the figure it measured (`pytest -s`); docs/reliability.md records them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.registry import StartedJobRegistry

from app.main import create_app
from leaf_service.embedded import AOF_FILE, EmbeddedRedis
from leaf_service.queues import LONG_QUEUE, SERIALIZER, SHORT_QUEUE
from tests.reliability.procs import service_env, start_worker, stop, vm_data_bytes
from tests.service import ROWS, jsonl, make_settings, running_worker, wait_for, wait_job

NDJSON = {"content-type": "application/x-ndjson"}
PROMPT = {"instruction": "Bob had 12 apples and gave 4 to Carl.", "output": "8."}
OTHER = {"instruction": "Ann has 7 pens. She buys 5 more pens.", "output": "12."}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def many_rows(n: int, words: int = 6) -> list[dict[str, str]]:
    return [{"instruction": f"Ann has {i} pens and {i + 1} books. " + "How many pens? " * words,
             "output": f"The answer is {i}."} for i in range(n)]


def started_jobs(redis: Redis, queue_name: str) -> list[str]:
    return StartedJobRegistry(queue_name, connection=redis, serializer=SERIALIZER
                              ).get_job_ids(cleanup=False)


def figure(name: str, value: Any) -> None:
    print(f"\n[figure] {name}: {value}")


# ---------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_a_killed_workers_job_is_retried_by_the_next_worker(tmp_path: Path, redis: Redis,
                                                            redis_url: str, llama_pair) -> None:
    """With LEAF_JOB_RETRIES=1, a job whose worker is SIGKILLed mid-way leaves "started"
    within a few heartbeats, is queued again and finished by a new worker, with complete
    outputs; the dataset and an earlier job's outputs are untouched. (Without retries it ends
    failed: tests/workers/test_worker.py.)"""
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, job_retries=1)
    env = service_env(settings)
    with TestClient(create_app(settings)) as client:
        small = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
        # Enough rows that the job is still running when the worker is killed (60 rows
        # sometimes finished first, once the models were loaded).
        rows = many_rows(600)
        big = client.post("/datasets", content=jsonl(rows), headers=NDJSON).json()
        data = settings.data_dir
        worker = start_worker(env, tmp_path / "worker1.log")
        try:
            done = client.post("/jobs", json={"kind": "detect", "dataset_id": small["id"]})
            assert wait_job(client, done.json()["id"])["status"] == "finished"
            kept = {p.name: digest(p) for p in (data / "jobs" / done.json()["id"]).iterdir()}
            dataset_bytes = digest(data / "datasets" / big["id"] / "rows.jsonl")
            job_id = client.post("/jobs", json={"kind": "detect", "dataset_id": big["id"],
                                                "batch_size": 1}).json()["id"]
            wait_for(lambda: client.get(f"/jobs/{job_id}").json()["progress"] > 0, timeout=120)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        killed = time.monotonic()
        # Someone looking at the job (the API's cleanup) is what notices.
        left = wait_for(lambda: (lambda j: j if j["status"] != "started" else None)(
            client.get(f"/jobs/{job_id}").json()), timeout=60, every=0.1)
        figure("SIGKILL to job out of 'started' (heartbeat 0.5 s, retries 1)",
               f"{time.monotonic() - killed:.1f} s, now {left['status']}")
        assert left["status"] == "queued"  # retried, not failed
        replacement = start_worker(env, tmp_path / "worker2.log")
        try:
            job = wait_job(client, job_id, timeout=300)
        finally:
            stop(replacement)
        assert job["status"] == "finished", job["error"]
        assert job["result"]["records"] == len(rows)
        lines = (data / "jobs" / job_id / "detections.jsonl").read_text().splitlines()
        assert [json.loads(line)["id"] for line in lines] == [str(i + 1) for i in range(600)]
        assert digest(data / "datasets" / big["id"] / "rows.jsonl") == dataset_bytes
        assert {p.name: digest(p) for p in (data / "jobs" / done.json()["id"]).iterdir()
                } == kept
        assert started_jobs(redis, LONG_QUEUE) == []


@pytest.mark.slow
def test_a_detect_request_waiting_on_a_killed_worker_gets_an_answer(
    tmp_path: Path, redis: Redis, redis_url: str, llama_pair
) -> None:
    """POST /detect waits for its job; if the worker dies under it, the request ends with a
    502 naming the cause once the job's heartbeat lapses, not when its wait runs out."""
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, detect_wait_s=120.0)
    env = service_env(settings)  # no preload: the first job loads the models, slowly
    answer: dict[str, Any] = {}
    with TestClient(create_app(settings)) as client:
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            asking = threading.Thread(target=lambda: answer.update(
                response=client.post("/detect", json=PROMPT)), daemon=True)
            asking.start()
            wait_for(lambda: started_jobs(redis, SHORT_QUEUE), timeout=120, every=0.02)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        killed = time.monotonic()
        asking.join(timeout=60)
        assert not asking.is_alive(), "the request was still waiting"
        figure("SIGKILL to the waiting /detect answered (heartbeat 0.5 s)",
               f"{time.monotonic() - killed:.1f} s")
        response = answer["response"]
        assert response.status_code == 502, response.text
        assert "killed or crashed" in response.json()["detail"]
        assert started_jobs(redis, SHORT_QUEUE) == []
        with running_worker(settings, redis_url):  # the next worker answers it
            again = client.post("/detect", json=PROMPT)
            assert again.status_code == 200 and again.json()["cached"] is False


# ---------------------------------------------------------------------------- Redis down


@pytest.mark.slow
def test_redis_stopped_under_a_running_api(tmp_path: Path, llama_pair) -> None:
    """A real redis-server is killed (SIGKILL: a crash) while the API and a worker run, and
    later started again on the same socket with its files gone. Meanwhile: 503s that say so,
    answers that need no Redis still given, nothing on disk lost; afterwards the API and the
    worker carry on by themselves."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = make_settings(server.url, tmp_path / "data", llama_pair)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client, \
                running_worker(settings, server.url):
            dataset = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
            job_id = client.post("/jobs", json={"kind": "detect",
                                                "dataset_id": dataset["id"]}).json()["id"]
            finished = wait_job(client, job_id)
            assert finished["status"] == "finished"
            assert client.post("/detect", json=PROMPT).json()["cached"] is False
            assert client.post("/detect", json=PROMPT).json()["cached"] is True
            files = {p.name: digest(p) for p in (settings.data_dir / "jobs" / job_id).iterdir()
                     if p.name != "job.json"}
            rows = digest(settings.data_dir / "datasets" / dataset["id"] / "rows.jsonl")

            assert server.process is not None
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=10)
            started = time.monotonic()
            down = {
                "health": client.get("/health"),
                "detect a new prompt": client.post("/detect", json=OTHER),
                "job status": client.get(f"/jobs/{job_id}"),
                "submit a job": client.post("/jobs", json={"kind": "detect",
                                                           "dataset_id": dataset["id"]}),
                "list jobs": client.get("/jobs"),
                "cancel": client.delete(f"/jobs/{job_id}"),
            }
            figure("requests while Redis is down", f"{len(down)} in "
                   f"{1000 * (time.monotonic() - started) / len(down):.0f} ms each")
            assert down["health"].status_code == 503
            assert down["health"].json()["status"] == "unavailable"
            for what, response in list(down.items())[1:]:
                assert response.status_code == 503, (what, response.text)
                assert "Redis" in response.json()["detail"]
                assert response.headers["retry-after"]
            # What needs no Redis still works: the disk, and cached answers the API has
            # already given (it keeps them rendered in memory).
            assert client.get("/datasets").json()["datasets"][0]["id"] == dataset["id"]
            cached = client.post("/detect", json=PROMPT)
            assert cached.status_code == 200 and cached.json()["cached"] is True
            upload = client.post("/datasets", content=jsonl(ROWS[:1]), headers=NDJSON)
            assert upload.status_code == 201

            time.sleep(1.0)  # a real outage, long enough for the worker to notice
            # Same socket, no data: a Redis that lost everything (the embedded one keeps an
            # append-only file: tests/reliability/test_durability.py).
            for name in ("dump.rdb", AOF_FILE):
                (tmp_path / "redis" / name).unlink(missing_ok=True)
            server = EmbeddedRedis(tmp_path / "redis").start()
            restarted = time.monotonic()
            wait_for(lambda: client.get("/health").json().get("workers") == 1, timeout=60,
                     every=0.1)
            figure("Redis back to /health ok with the worker counted",
                   f"{time.monotonic() - restarted:.1f} s")
            # Redis lost the job; job.json did not.
            again = client.get(f"/jobs/{job_id}").json()
            assert again["status"] == "finished" and again["result"] == finished["result"]
            assert {p.name: digest(p) for p in (settings.data_dir / "jobs" / job_id).iterdir()
                    if p.name != "job.json"} == files
            assert digest(settings.data_dir / "datasets" / dataset["id"] / "rows.jsonl") == rows
            download = client.get(f"/jobs/{job_id}/files/detections.jsonl")
            assert download.status_code == 200
            # New work flows through the same API and worker, without a restart of either.
            fresh = client.post("/detect", json=OTHER)
            assert fresh.status_code == 200 and fresh.json()["cached"] is False
            follow = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"]})
            assert wait_job(client, follow.json()["id"])["status"] == "finished"
            figure("Redis back to a new /detect computed by the worker",
                   f"{time.monotonic() - restarted:.1f} s")
    finally:
        server.stop()


# ---------------------------------------------------------------------------- failing jobs


@pytest.mark.slow
def test_a_failing_job_reports_why_and_frees_the_worker(tmp_path: Path, redis: Redis,
                                                        redis_url: str, llama_pair) -> None:
    """One worker process, three jobs in a row: one naming a broken model, one that needs
    more memory than the worker may have (RLIMIT_DATA, LEAF_WORKER_MEMORY_MB's mechanism),
    one that fits. The first two fail with their reason in GET /jobs/{id}; the third
    finishes, on the same worker."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    models = {"tiny-teacher": {"path": str(llama_pair[0])},
              "tiny-student": {"path": str(llama_pair[1])}, "broken": {"path": str(broken)}}
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, models=models,
                             preload=True)
    env = service_env(settings, LEAF_WORKER_MEMORY_MB=8192)
    with TestClient(create_app(settings)) as client:
        small = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
        big = client.post("/datasets", content=jsonl(many_rows(512, words=8)),
                          headers=NDJSON).json()
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            wait_for(lambda: client.get("/health").json()["workers"] == 1, timeout=120)
            process = psutil.Process(worker.pid)
            assert process.rlimit(psutil.RLIMIT_DATA)[0] == 8192 << 20  # the setting applied

            bad_model = client.post("/jobs", json={"kind": "detect", "dataset_id": small["id"],
                                                   "teacher": "broken"}).json()["id"]
            failed = wait_job(client, bad_model)
            assert failed["status"] == "failed"
            assert "cannot load a model config" in failed["error"] and "broken" in failed[
                "error"]

            # Tighten the cap to what the idle worker (models loaded) uses, plus 128 MiB.
            idle = vm_data_bytes(worker.pid)
            process.rlimit(psutil.RLIMIT_DATA, (idle + (128 << 20), process.rlimit(
                psutil.RLIMIT_DATA)[1]))
            hungry = client.post("/jobs", json={"kind": "detect", "dataset_id": big["id"],
                                                "batch_size": 512}).json()["id"]
            oom = wait_job(client, hungry, timeout=120)
            figure("out-of-memory job", f"{oom['status']}: {oom['error']}")
            assert oom["status"] == "failed" and oom["error"].startswith("out of memory")
            assert "batch_size" in oom["error"]

            fits = client.post("/jobs", json={"kind": "detect", "dataset_id": small["id"],
                                              "batch_size": 2}).json()["id"]
            assert wait_job(client, fits, timeout=120)["status"] == "finished"
            assert worker.poll() is None  # the same worker, still running
            figure("worker data segment after the three jobs",
                   f"{vm_data_bytes(worker.pid) / 2**20:.0f} MiB (idle {idle / 2**20:.0f})")
        finally:
            stop(worker)
