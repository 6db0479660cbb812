"""Access: the token gate on every endpoint, downloads that cannot leave a job's directory,
server-made ids, and workers that load only configured models and never run remote code."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from leaf_service import jobs as jobstate
from leaf_service.queues import (
    JOB_FUNCTIONS,
    LONG_QUEUE,
    PROMPT_FUNCTION,
    SHORT_QUEUE,
    is_id,
    new_id,
)
from leaf_service.settings import Settings
from leaf_service.store import DataStore, utcnow
from tests.service import ROWS, drain, jsonl, make_settings, running_worker, wait_for, wait_job

TOKEN = "s3cret-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NDJSON = {"content-type": "application/x-ndjson"}
SOME_ID = "0123456789abcdef0123"
SECRET = "TOP-SECRET-CONTENT"


@pytest.fixture
def guarded(redis_url: str, redis: Redis, tmp_path: Path, llama_pair: tuple[Path, Path]
            ) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, api_token=TOKEN,
                             max_upload_bytes=4096)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def every_request(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) for every operation of the schema and the docs pages, ids filled in."""
    fill = {"{job_id}": SOME_ID, "{dataset_id}": SOME_ID, "{name}": "detections.jsonl"}
    out = [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"),
           ("GET", "/docs/oauth2-redirect")]
    for path, operations in client.get("/openapi.json", headers=AUTH).json()["paths"].items():
        for placeholder, value in fill.items():
            path = path.replace(placeholder, value)
        out += [(method.upper(), path) for method in operations]
    return out


BAD_CREDENTIALS = [
    ({}, "needs an API token"),
    ({"Authorization": "Bearer wrong"}, "wrong"),
    ({"Authorization": f"Bearer {TOKEN}x"}, "wrong"),
    ({"Authorization": f"Bearer {TOKEN[:-1]}"}, "wrong"),
    ({"Authorization": TOKEN}, "needs an API token"),  # no scheme
    ({"Authorization": "Bearer"}, "needs an API token"),
    ({"Authorization": "Basic " + base64.b64encode(f"leaf:{TOKEN}".encode()).decode()},
     "needs an API token"),
    ({"Authorization": "Token " + TOKEN}, "needs an API token"),
]


def test_every_endpoint_but_health_and_the_page_needs_the_token(guarded) -> None:
    client, _ = guarded
    requests = every_request(client)
    assert len(requests) >= 18  # every route was found
    for method, path in requests:
        if path == "/health":
            continue
        for headers, message in BAD_CREDENTIALS:
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert message in response.json()["detail"], (method, path)
    # Open without it: the health check, the page and its files.
    assert client.get("/health").status_code == 200
    for page in ("/", "/index.html", "/api.js", "/style.css"):
        assert client.get(page).status_code == 200, page
    # With it, everything answers as usual; the scheme's case does not matter.
    assert client.get("/models", headers=AUTH).status_code == 200
    assert client.get("/models", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert client.get("/openapi.json", headers=AUTH).json()["paths"]
    assert client.get("/docs", headers=AUTH).status_code == 200


def test_the_gate_answers_before_anything_else(guarded) -> None:
    """Without the token nothing is parsed, size-checked, routed or stored."""
    client, settings = guarded
    broken = client.post("/detect", content=b'{"instruction": ',
                         headers={"content-type": "application/json"})
    too_big = client.post("/datasets", content=b"x" * 10_000, headers=NDJSON)
    wrong_method = client.put("/jobs")
    no_such_route = client.get("/jobs/a/b/c")
    for response in (broken, too_big, wrong_method, no_such_route):
        assert response.status_code == 401, response.text
    assert list((settings.data_dir / "datasets").iterdir()) == []


def test_public_docs_open_the_docs_only(redis_url: str, redis: Redis, tmp_path: Path,
                                        llama_pair) -> None:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, api_token=TOKEN,
                             public_docs=True)
    with TestClient(create_app(settings)) as client:
        spec = client.get("/openapi.json")
        assert spec.status_code == 200 and "HTTPBearer" in spec.json()["components"][
            "securitySchemes"]
        assert client.get("/docs").status_code == 200 and client.get("/redoc").status_code == 200
        assert client.get("/models").status_code == 401 and client.get("/jobs").status_code == 401


# ---------------------------------------------------------------------------- downloads


@pytest.fixture
def planted(client: TestClient, settings: Settings, tmp_path: Path) -> dict[str, Any]:
    """A finished job with one output, a secret file outside DATA_DIR, and a second job."""
    store = DataStore(settings.data_dir)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    ids = []
    for _ in range(2):
        job_id = new_id()
        store.create_job({"id": job_id, "kind": "detect", "dataset_id": None, "params": {},
                          "status": "finished", "created_at": utcnow(), "started_at": utcnow(),
                          "ended_at": utcnow(), "result": {"records": 1}, "error": None})
        (store.job_dir(job_id) / "detections.jsonl").write_text('{"id": "a"}\n')
        ids.append(job_id)
    return {"store": store, "job": ids[0], "other": ids[1], "secret": secret}


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, int]]:
    """The app behind a real uvicorn on a free port, for requests whose raw bytes matter:
    HTTP clients resolve "." and ".." segments (even percent-encoded ones) before sending."""
    import uvicorn

    from tests.reliability.procs import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def raw_get(address: tuple[str, int], path: str) -> tuple[int, str]:
    """GET exactly this request target; (status, body)."""
    with socket.create_connection(address, timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: leaf\r\nConnection: close\r\n\r\n"
                     .encode("latin-1"))
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode("utf-8", "replace")


TRAVERSALS = [
    "..", ".", "../job.json", "..%2Fjob.json", "..%2F..%2F..%2Fsecret.txt",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt", "%252e%252e%252f%252e%252e%252fsecret.txt",
    "..%252f..%252f..%252fsecret.txt", "%2Fetc%2Fpasswd", "..%5C..%5C..%5Csecret.txt",
    "..\\..\\secret.txt", "detections.jsonl%00.txt", "job.json", "%2e", "%2e%2e", "...",
    "%2F", "detections.jsonl%2F", "%C0%AE%C0%AE%2Fsecret.txt", "..%c0%af..%c0%afsecret.txt",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAVERSALS)
def test_downloads_cannot_leave_the_job_directory(served, planted, name: str) -> None:
    job = planted["job"]
    assert raw_get(served, f"/jobs/{job}/files/detections.jsonl") == (200, '{"id": "a"}\n')
    absolute = str(planted["secret"])
    for path in (f"/jobs/{job}/files/{name}", f"/jobs/{job}/files/{name}/{name}",
                 f"/jobs/{job}/files/{name}/../../secret.txt",
                 f"/jobs/{job}/files/%2F{absolute.lstrip('/').replace('/', '%2F')}",
                 f"/jobs/{job}/files/{absolute}", f"/jobs/{name}/files/detections.jsonl",
                 f"/jobs/{job}%2F{name}", f"/datasets/{name}%2F{name}", f"/{name}/{name}/etc"):
        status, body = raw_get(served, path)
        assert status in (400, 404, 405, 422), (path, status)
        assert SECRET not in body and '"status": "finished"' not in body, path


def test_symlinks_planted_in_the_data_dir_are_never_followed(client: TestClient, planted,
                                                             tmp_path: Path) -> None:
    store: DataStore = planted["store"]
    job, other, secret = planted["job"], planted["other"], planted["secret"]
    job_dir = store.job_dir(job)
    (job_dir / "leak.jsonl").symlink_to(secret)
    (job_dir / "borrowed.jsonl").symlink_to(store.job_dir(other) / "detections.jsonl")
    listed = {f["name"] for f in client.get(f"/jobs/{job}").json()["files"]}
    assert listed == {"detections.jsonl"}
    for name in ("leak.jsonl", "borrowed.jsonl"):
        assert client.get(f"/jobs/{job}/files/{name}").status_code == 404

    # A whole job or dataset directory that is a link, to a convincing copy outside.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "job.json").write_text((job_dir / "job.json").read_text())
    (outside / "detections.jsonl").write_text(SECRET)
    (outside / "rows.jsonl").write_text(SECRET + "\n")
    (outside / "meta.json").write_text(json.dumps({"id": "x", "rows": 1}))
    linked_job, linked_dataset = new_id(), new_id()
    (store.jobs / linked_job).symlink_to(outside, target_is_directory=True)
    (store.datasets / linked_dataset).symlink_to(outside, target_is_directory=True)
    for path in (f"/jobs/{linked_job}", f"/jobs/{linked_job}/files/detections.jsonl",
                 f"/datasets/{linked_dataset}"):
        response = client.get(path)
        assert response.status_code == 404 and SECRET not in response.text, path
    assert linked_job not in client.get("/jobs").text
    assert linked_dataset not in client.get("/datasets").text
    submitted = client.post("/jobs", json={"kind": "detect", "dataset_id": linked_dataset})
    assert submitted.status_code == 404
    # What the workers read goes through the same store.
    assert store.dataset_rows_path(linked_dataset) is None
    assert store.job_file(linked_job, "detections.jsonl") is None


def test_ids_are_the_servers(client: TestClient) -> None:
    first = client.post("/datasets?id=mine&dataset_id=mine", content=jsonl(ROWS), headers=NDJSON)
    second = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON)
    ids = [first.json()["id"], second.json()["id"]]
    assert all(is_id(i) for i in ids) and ids[0] != ids[1]  # same content, two datasets
    for body in ({"kind": "detect", "dataset_id": ids[0], "id": SOME_ID},
                 {"kind": "detect", "dataset_id": ids[0], "job_id": SOME_ID}):
        response = client.post("/jobs", json=body)
        assert response.status_code == 422 and response.json()["field"] in {"id", "job_id"}
    assert client.get("/jobs").json()["total"] == 0


# ---------------------------------------------------------------------------- workers


def test_a_worker_loads_only_models_it_is_configured_with(
    settings: Settings, redis: Redis, redis_url: str, llama_pair, tmp_path: Path
) -> None:
    """Jobs put on the queue directly (as anyone who can reach Redis could) may name paths
    and ids; the worker resolves names with its own allow-list and ids with its own store."""
    analysis = {"level": "instruction", "segments": 2, "surprisal": False, "truncate": False}
    bad = {
        "path as model": (PROMPT_FUNCTION, SHORT_QUEUE, {
            "teacher": str(llama_pair[0]), "student": "tiny-student", "instruction": "a b",
            "output": "c", "analysis": analysis, "cache_key": "leaf:analysis:test"}),
        "traversing dataset": (JOB_FUNCTIONS["detect"], LONG_QUEUE, {
            "dataset_id": "../../../etc", "teacher": "tiny-teacher", "student": "tiny-student",
            "teacher_id": "t", "student_id": "s", "config": {}, "analysis": analysis,
            "batch_size": 1, "truncate": False, "export_pruned": False}),
        "traversing checkpoint": (JOB_FUNCTIONS["evaluate"], LONG_QUEUE, {
            "dataset_id": new_id(), "model": None, "checkpoint_job": "../../..",
            "teacher": None, "config": {}}),
    }
    ids = {}
    for what, (func, queue_name, spec) in bad.items():
        job_id = new_id()
        jobstate.queue(redis, queue_name).enqueue_call(func, args=(spec,), job_id=job_id,
                                                       meta={"kind": "detect"})
        ids[what] = job_id
    drain(settings, redis_url)
    jobs = {what: _ended(redis, job_id) for what, job_id in ids.items()}
    assert jobs["path as model"].meta["error"] == (
        f"model '{llama_pair[0]}' is not configured on this worker")
    assert "no longer exists" in jobs["traversing dataset"].meta["error"]
    assert "not a finished distillation" in jobs["traversing checkpoint"].meta["error"]


def _ended(redis: Redis, job_id: str) -> Any:
    job = jobstate.fetch(redis, job_id)
    return job if job is not None and jobstate.status_of(job) in jobstate.FINAL else None


def test_remote_code_is_never_run(tmp_path: Path, redis: Redis, redis_url: str,
                                  llama_pair) -> None:
    """An allow-listed model whose config asks for its own Python code (auto_map): loading
    it fails, and the code never runs."""
    evil = tmp_path / "evil-model"
    shutil.copytree(llama_pair[0], evil)
    marker = tmp_path / "code-ran"
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="evil-llama", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "evil.EvilConfig",
                            "AutoModelForCausalLM": "evil.EvilForCausalLM"})
    (evil / "config.json").write_text(json.dumps(config))
    (evil / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text("
                                  "'ran')\n")
    models = {"tiny-teacher": {"path": str(llama_pair[0])},
              "tiny-student": {"path": str(llama_pair[1])}, "evil": {"path": str(evil)}}
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, models=models)
    with TestClient(create_app(settings)) as client, running_worker(settings, redis_url):
        response = client.post("/detect", json={"instruction": "Ann has 7 pens.",
                                                "output": "7.", "teacher": "evil"})
        assert response.status_code == 503 and "cannot" in response.json()["detail"]
        dataset = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
        job_id = client.post("/jobs", json={"kind": "detect", "dataset_id": dataset["id"],
                                            "student": "evil"}).json()["id"]
        job = wait_job(client, job_id)
        assert job["status"] == "failed" and "evil" in job["error"]
    assert not marker.exists()
