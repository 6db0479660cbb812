from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from leaf_service import jobs as jobstate
from leaf_service.cache import ModelRef, model_identity
from leaf_service.jobs import MODEL_ARCHIVE, RESUME_ARCHIVE
from leaf_service.queues import JOB_FUNCTIONS, LONG_QUEUE, new_id
from leaf_service.settings import Settings
from tests.service import (
    STUDENT,
    TEACHER,
    drain,
    jsonl,
    make_settings,
    running_worker,
    wait_for,
    wait_job,
)
from workers.runtime import ModelCache

NDJSON = {"content-type": "application/x-ndjson"}
PROMPTS = [{"instruction": "Ann has 7 pens. She buys 5 more pens.", "output": "12."},
           {"instruction": "Bob had 12 apples and gave 4 to Carl.", "output": "8."}]


def test_models_stay_loaded_between_jobs(client: TestClient, worker) -> None:
    assert client.post("/detect", json=PROMPTS[0]).json()["cached"] is False
    loaded = dict(worker.context.models._models)
    assert len(loaded) == 2
    assert client.post("/detect", json=PROMPTS[1]).json()["cached"] is False
    # Same objects: the second job loaded nothing.
    assert all(worker.context.models._models[k] is v for k, v in loaded.items())


def test_model_cache_is_bounded(llama_pair) -> None:
    cache = ModelCache(1, device="cpu", dtype="auto")
    first = cache.get(ModelRef(str(llama_pair[0])))
    assert cache.get(ModelRef(str(llama_pair[0]))) is first
    cache.get(ModelRef(str(llama_pair[1])))
    assert len(cache) == 1
    assert cache.get(ModelRef(str(llama_pair[0]))) is not first  # evicted, loaded again


@pytest.mark.slow
def test_a_killed_worker_fails_its_job_and_another_carries_on(
    tmp_path: Path, redis, redis_url: str, llama_pair
) -> None:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair)
    env = {**os.environ, "LEAF_REDIS_URL": redis_url, "LEAF_DATA_DIR": str(settings.data_dir),
           "LEAF_MODELS": json.dumps({k: v.model_dump() for k, v in settings.models.items()}),
           "LEAF_DEFAULT_TEACHER": settings.default_teacher, "LEAF_HEARTBEAT_S": "0.5",
           "LEAF_DEFAULT_STUDENT": settings.default_student, "LEAF_PRELOAD": "false",
           "LEAF_DEVICE": "cpu"}
    rows = [{"instruction": f"Ann has {i} pens and {i + 1} books. How many pens?",
             "output": f"The answer is {i}."} for i in range(400)]
    with TestClient(create_app(settings)) as client:
        dataset = client.post("/datasets", content=jsonl(rows), headers=NDJSON).json()
        job_id = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"],
                                            "batch_size": 1}).json()["id"]
        worker = subprocess.Popen([sys.executable, "-m", "leaf_cli.main", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # Kill it mid-way: once the job has made progress.
            wait_for(lambda: client.get(f"/jobs/{job_id}").json()["progress"] > 0,
                     timeout=120)
        finally:
            worker.kill()
            worker.wait(timeout=30)
        killed_at = time.monotonic()
        failed = wait_job(client, job_id, timeout=30)
        assert failed["status"] == "failed"
        assert "killed or crashed" in failed["error"]
        # Bounded: about the heartbeat TTL (4 beats of 0.5 s), not the job timeout.
        assert time.monotonic() - killed_at < 15
        record = json.loads((settings.data_dir / "jobs" / job_id / "job.json").read_text())
        assert record["status"] == "failed"
        assert client.get(f"/datasets/{dataset['id']}").json()["rows"] == 400
        with running_worker(settings, redis_url):
            small = client.post("/datasets", content=jsonl(PROMPTS), headers=NDJSON).json()
            follow = client.post("/jobs", json={"kind": "detect", "dataset_id": small["id"]})
            assert wait_job(client, follow.json()["id"])["status"] == "finished"


def test_queued_prompts_share_one_batch(tmp_path: Path, redis, redis_url: str,
                                        llama_pair) -> None:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, detect_wait_s=0.0)
    prompts = [*PROMPTS, {"instruction": "Please answer the question below.", "output": "3."}]
    with TestClient(create_app(settings)) as client:
        ids = [client.post("/detect", json=p).json()["job_id"] for p in prompts]
        with running_worker(settings, redis_url):
            jobs = [wait_job(client, i) for i in ids]
        assert all(j["status"] == "finished" for j in jobs)
        values = [jobstate.fetch(redis, i).return_value() for i in ids]
        assert values[0]["batched"] == 3  # one model pass for all three
        assert all("batched" not in v for v in values[1:])  # found in the cache
        for prompt, job in zip(prompts, jobs, strict=True):
            again = client.post("/detect", json=prompt).json()
            assert again["cached"] is True and again["tokens"] == job["result"]["record"][
                "tokens"]


def _queue_detect(redis, settings: Settings, payload: dict[str, Any]) -> str:
    """Queue a detect job with `payload` as is, the way the API queues one."""
    job_id = new_id()
    jobstate.enqueue(redis, settings, func=JOB_FUNCTIONS["detect"], spec=payload,
                     job_id=job_id, queue_name=LONG_QUEUE, timeout=600, result_ttl=600,
                     meta={"kind": "detect"}, description="detect")
    return job_id


def _old_detect_payload(settings: Settings, dataset_id: str) -> dict[str, Any]:
    """A detect job's argument as the API queued it before specs were typed."""
    ids = {f"{role}_id": model_identity(ModelRef(settings.models[name].path,
                                                 settings.models[name].prompt_template))
           for role, name in (("teacher", TEACHER), ("student", STUDENT))}
    return {"teacher": TEACHER, "student": STUDENT, **ids,
            "config": {"tau": 0.3, "percentile": None, "method": "gradient",
                       "level": "instruction", "segments": 2, "seed": 0, "unit": "token",
                       "min_gap": 0.0},
            "analysis": {"level": "instruction", "segments": 2, "surprisal": False,
                         "truncate": False},
            "batch_size": 4, "truncate": False, "export_pruned": True, "dataset_id": dataset_id}


def test_a_job_queued_before_specs_were_typed_still_runs(
    client: TestClient, settings: Settings, redis, redis_url: str, dataset: dict[str, Any]
) -> None:
    job_id = _queue_detect(redis, settings, _old_detect_payload(settings, dataset["id"]))
    drain(settings, redis_url)
    job = jobstate.fetch(redis, job_id)
    assert jobstate.status_of(job) == "finished", jobstate.failure_text(job)
    result = job.return_value()
    assert result["records"] == 3 and result["computed"] == 3
    lines = (settings.data_dir / "jobs" / job_id / "detections.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "3"]
    pruned = (settings.data_dir / "jobs" / job_id / "pruned.jsonl").read_text().splitlines()
    # One export row per flagged run (a span), or one unchanged row for a record with none.
    assert len(pruned) == result["pruned_rows"] >= result["spans"]
    assert sum(bool(json.loads(row)["masked_tokens"]) for row in pruned) >= result["spans"]


def test_a_malformed_spec_fails_its_job_naming_the_field(
    client: TestClient, settings: Settings, redis, redis_url: str, dataset: dict[str, Any]
) -> None:
    payload = _old_detect_payload(settings, dataset["id"])
    unknown_id = _queue_detect(redis, settings, {**payload, "colour": "red"})
    del payload["batch_size"]
    missing_id = _queue_detect(redis, settings, payload)
    drain(settings, redis_url)
    for job_id, text in ((unknown_id, "colour: unknown field"),
                         (missing_id, "batch_size: missing")):
        job = jobstate.fetch(redis, job_id)
        assert jobstate.status_of(job) == "failed"
        assert jobstate.failure_text(job).startswith(text)
        assert job.meta["error_type"] == "InputError"


def test_a_detect_job_mixes_cached_and_new_rows_in_order(
    client: TestClient, settings: Settings, redis_url: str
) -> None:
    from tests.service import ROWS

    def detect(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
        dataset = client.post("/datasets", content=jsonl(rows), headers=NDJSON).json()
        job_id = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"],
                                            "tau": 0.3}).json()["id"]
        drain(settings, redis_url)
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "finished", job["error"]
        return job["result"], client.get(f"/jobs/{job_id}/files/detections.jsonl"
                                         ).text.splitlines()

    first, first_lines = detect([ROWS[0], ROWS[2]])
    assert (first["cached"], first["computed"]) == (0, 2)
    result, lines = detect(ROWS)  # rows 0 and 2 from the cache, row 1 computed between them
    assert (result["cached"], result["computed"]) == (2, 1)
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "3"]
    # A cached analysis gives the same record (a row without an id is numbered by line).
    first_records = [json.loads(line) for line in first_lines]
    assert json.loads(lines[0]) == first_records[0]
    assert json.loads(lines[2]) == {**first_records[1], "id": "3"}


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive.getmembers()
                if m.isfile()}


@pytest.mark.parametrize("best_is_last", [True, False])
def test_distill_downloads_split_the_model_from_the_resume_state(
    tmp_path: Path, best_is_last: bool
) -> None:
    from workers.jobs import _write_downloads

    def checkpoint(name: str) -> Path:
        path = tmp_path / "checkpoint" / name
        path.mkdir(parents=True)
        for file in ("config.json", "model.safetensors", "tokenizer.json",
                     "generation_config.json", "trainer_state.json"):
            (path / file).write_text(f"{name}/{file}")
        return path

    best = checkpoint("epoch-2")
    last = best if best_is_last else checkpoint("epoch-3")
    (last / "optimizer.pt").write_text("state")
    described = _write_downloads(best, last, tmp_path)
    assert set(described) == {MODEL_ARCHIVE, RESUME_ARCHIVE}
    assert "epoch-2" in described[MODEL_ARCHIVE] and "epoch-3" not in described[MODEL_ARCHIVE]
    model = _members(tmp_path / MODEL_ARCHIVE)
    assert model == {f"model/{f}": f"epoch-2/{f}".encode() for f in (
        "config.json", "model.safetensors", "tokenizer.json", "generation_config.json")}
    resume = _members(tmp_path / RESUME_ARCHIVE)
    if best_is_last:
        assert set(resume) == {"model/optimizer.pt", "model/trainer_state.json"}
    else:  # the last checkpoint's own weights come along: model.tar holds another's
        assert len(resume) == 6 and "with its weights" in described[RESUME_ARCHIVE]
    # Unpacked into one folder, model.tar then resume.tar give the last checkpoint whole.
    whole = {**model, **resume}
    assert whole == {f"model/{p.name}": p.read_bytes() for p in last.iterdir()}
    assert not list(tmp_path.glob(".*.tmp"))  # written under a hidden name, then renamed


def test_without_optimizer_state_there_is_no_resume_archive(tmp_path: Path) -> None:
    from workers.jobs import _write_downloads

    best = tmp_path / "checkpoint" / "epoch-1"
    best.mkdir(parents=True)
    (best / "config.json").write_text("{}")
    assert set(_write_downloads(best, best, tmp_path)) == {MODEL_ARCHIVE}
    assert not (tmp_path / RESUME_ARCHIVE).exists()


@pytest.mark.slow  # trains
def test_a_distill_job_offers_the_model_and_the_resume_state_apart(
    client: TestClient, settings: Settings, redis_url: str, dataset: dict[str, Any],
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM

    from leaf_engine.distill import distill
    from leaf_engine.distill_config import DistillConfig

    detect = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"],
                                        "tau": 0.3}).json()["id"]
    drain(settings, redis_url)
    options = {"epochs": 2, "batch_size": 2, "micro_batch_size": 1, "lr": 1e-3,
               "warmup_steps": 0, "hybrid_units": "pair", "counterfactuals": "both"}
    response = client.post("/jobs", json={"kind": "distill", "detect_job": detect, **options})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    drain(settings, redis_url)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "finished", job["error"]
    result = job["result"]
    assert result["config"]["hybrid_units"] == "pair"
    assert result["config"]["counterfactuals"] == "both"
    assert set(result["downloads"]) == {MODEL_ARCHIVE, RESUME_ARCHIVE}
    names = {f["name"] for f in job["files"]}
    assert {MODEL_ARCHIVE, RESUME_ARCHIVE, "result.json"} <= names
    assert "checkpoint.tar" not in names
    unpacked = tmp_path / "download"
    for name in (MODEL_ARCHIVE, RESUME_ARCHIVE):
        path = tmp_path / name
        path.write_bytes(client.get(f"/jobs/{job_id}/files/{name}").content)
        with tarfile.open(path) as archive:
            if name == MODEL_ARCHIVE:
                files = {Path(n).name for n in archive.getnames()}
                assert "model.safetensors" in files and "tokenizer.json" in files
                assert not files & {"optimizer.pt", "trainer_state.json"}
                archive.extractall(tmp_path / "model-only", filter="data")
            archive.extractall(unpacked, filter="data")
    AutoModelForCausalLM.from_pretrained(tmp_path / "model-only" / "model")
    # Both archives together resume the run: it is complete, so nothing is left to train.
    data = settings.data_dir / "jobs" / detect / "detections.jsonl"
    resumed = distill(DistillConfig(
        data=str(data), out=str(tmp_path / "resumed"), teacher=settings.models[TEACHER].path,
        student=settings.models[STUDENT].path, device="cpu", resume=str(unpacked / "model"),
        **options))
    assert resumed.steps == resumed.total_steps == result["steps"]
