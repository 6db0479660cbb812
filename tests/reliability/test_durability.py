"""Durability of the embedded Redis, for real: redis-server SIGKILLed with jobs queued and
started again on the same data dir; Redis restored from an older copy of its files after a
cancel.

Each test prints the figure it measured (`pytest -s`); docs/reliability.md records them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from rq.job import Job, JobStatus

from app.main import create_app
from leaf_service.embedded import AOF_FILE, EmbeddedRedis
from leaf_service.queues import SERIALIZER, connect
from tests.service import ROWS, drain, jsonl, make_settings, running_worker, wait_for, wait_job

NDJSON = {"content-type": "application/x-ndjson"}
PROMPTS = [{"instruction": "Ann has 7 pens. She buys 5 more pens.", "output": "12."},
           {"instruction": "Bob had 12 apples and gave 4 to Carl.", "output": "8."},
           {"instruction": "Please answer the question below.", "output": "3."}]


def figure(name: str, value: Any) -> None:
    print(f"\n[figure] {name}: {value}")


def _kill(server: EmbeddedRedis) -> None:
    """A crash: SIGKILL, no chance to save."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


@pytest.mark.slow
def test_every_accepted_job_survives_a_redis_crash(tmp_path: Path, llama_pair) -> None:
    """Dataset jobs (202) and /detect prompts answered 202 are queued, one job is canceled,
    redis-server is SIGKILLed at once and started again on its data dir. Every job is still
    there, queued, none lost or 404; a worker then finishes them all, and the canceled one
    stays canceled."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = make_settings(server.url, tmp_path / "data", llama_pair, detect_wait_s=0.0)
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            dataset = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
            jobs = [client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"],
                                               "tau": tau}) for tau in (0.1, 0.2, 0.3)]
            assert all(r.status_code == 202 for r in jobs)
            job_ids = [r.json()["id"] for r in jobs]
            prompts = [client.post("/detect", json=p) for p in PROMPTS]
            assert all(r.status_code == 202 for r in prompts), [r.text for r in prompts]
            prompt_ids = [r.json()["job_id"] for r in prompts]
            canceled = job_ids.pop()
            assert client.delete(f"/jobs/{canceled}").json()["status"] == "canceled"

            _kill(server)  # within milliseconds of the last write
            started = time.monotonic()
            server = EmbeddedRedis(tmp_path / "redis").start()
            figure("redis-server SIGKILLed and started again",
                   f"{time.monotonic() - started:.2f} s, "
                   f"{len(job_ids) + len(prompt_ids) + 1} jobs in it")
            for job_id in job_ids + prompt_ids:
                view = client.get(f"/jobs/{job_id}")
                assert view.status_code == 200, (job_id, view.text)
                assert view.json()["status"] == "queued", view.json()
            assert client.get(f"/jobs/{canceled}").json()["status"] == "canceled"

            drain(settings, server.url)
            for job_id in job_ids + prompt_ids:
                view = client.get(f"/jobs/{job_id}").json()
                assert view["status"] == "finished", view
            assert client.get(f"/jobs/{job_ids[0]}").json()["result"]["records"] == len(ROWS)
            for prompt in PROMPTS:
                again = client.post("/detect", json=prompt)
                assert again.status_code == 200 and again.json()["cached"] is True
            assert client.get(f"/jobs/{canceled}").json()["status"] == "canceled"
            assert not (settings.data_dir / "jobs" / canceled / "detections.jsonl").exists()
            figure("jobs lost to the crash", f"0 of {len(job_ids) + len(prompt_ids)}")
    finally:
        server.stop()


@pytest.mark.slow
def test_a_canceled_job_stays_canceled_when_redis_comes_back_older(tmp_path: Path,
                                                                   llama_pair) -> None:
    """Redis comes back from files older than a cancel (a restored backup, a lost
    append-only tail): it still has the job queued, and no cancel flag. job.json says
    canceled, so the API says canceled and the worker skips it; the job queued beside it
    runs."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = make_settings(server.url, tmp_path / "data", llama_pair)
    stale = tmp_path / "stale"
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            dataset = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
            doomed, kept = (client.post("/jobs", json={"kind": "detect",
                                                       "dataset_id": dataset["id"]}
                                        ).json()["id"] for _ in range(2))
            stale.mkdir()
            shutil.copy2(tmp_path / "redis" / AOF_FILE, stale / AOF_FILE)
            assert client.delete(f"/jobs/{doomed}").json()["status"] == "canceled"

            _kill(server)
            shutil.copy2(stale / AOF_FILE, tmp_path / "redis" / AOF_FILE)
            server = EmbeddedRedis(tmp_path / "redis").start()
            redis = connect(server.url)
            job = Job.fetch(doomed, connection=redis, serializer=SERIALIZER)
            assert job.get_status() == JobStatus.QUEUED  # Redis really is behind the cancel
            assert client.get(f"/jobs/{doomed}").json()["status"] == "canceled"

            drain(settings, server.url)
            assert client.get(f"/jobs/{kept}").json()["status"] == "finished"
            assert job.get_status() == JobStatus.CANCELED
            record = json.loads((settings.data_dir / "jobs" / doomed / "job.json").read_text())
            assert record["status"] == "canceled" and record["started_at"] is None
            assert not (settings.data_dir / "jobs" / doomed / "detections.jsonl").exists()
            assert client.get(f"/jobs/{doomed}").json()["status"] == "canceled"
    finally:
        server.stop()


@pytest.mark.slow
def test_a_job_running_through_a_redis_crash_ends_with_a_reason(tmp_path: Path,
                                                                llama_pair) -> None:
    """redis-server SIGKILLed under a started 60-row job and started again a second later
    (what `leaf serve`'s supervisor does). The job goes on through the outage where it can
    (progress and cancel checks skip a step); if it needed Redis meanwhile (its analysis
    cache) it fails. Either way it ends, finished with every record or failed with a reason
    that names no server path, never lost or left "started"; the next job finishes."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = make_settings(server.url, tmp_path / "data", llama_pair, heartbeat_s=2.0)
    rows = [{"instruction": f"Ann has {i} pens and {i + 1} books. " + "How many pens? " * 6,
             "output": f"The answer is {i}."} for i in range(60)]
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            dataset = client.post("/datasets", content=jsonl(rows), headers=NDJSON).json()
            job_id = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"],
                                                "batch_size": 1}).json()["id"]
            with running_worker(settings, server.url):
                wait_for(lambda: client.get(f"/jobs/{job_id}").json()["progress"] > 0,
                         timeout=120, every=0.1)
                _kill(server)
                time.sleep(1.0)
                server = EmbeddedRedis(tmp_path / "redis").start()
                back = time.monotonic()
                job = wait_job(client, job_id, timeout=120)
            figure("job started before a Redis crash", f"{job['status']} "
                   f"{time.monotonic() - back:.1f} s after Redis was back"
                   + (f": {job['error']}" if job["error"] else ""))
            record = json.loads((settings.data_dir / "jobs" / job_id / "job.json").read_text())
            if job["status"] == "finished":
                assert job["result"]["records"] == len(rows)
                detections = settings.data_dir / "jobs" / job_id / "detections.jsonl"
                assert len(detections.read_text().splitlines()) == len(rows)
            else:
                assert job["status"] == "failed"
                assert record["error"] == "Redis went away while the job ran; submit it again"
                assert str(tmp_path) not in job["error"]
            assert record["status"] == job["status"]
            small = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
            follow = client.post("/jobs", json={"kind": "detect", "dataset_id": small["id"]})
            drain(settings, server.url)
            assert client.get(f"/jobs/{follow.json()['id']}").json()["status"] == "finished"
    finally:
        server.stop()
