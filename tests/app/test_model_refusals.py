"""Jobs that cannot succeed are refused at submission, and every error names models by
their LEAF_MODELS names: never a path on the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue

from app.main import create_app
from leaf_service.queues import QUEUES
from leaf_service.settings import Settings
from tests import tiny
from tests.service import ROWS, drain, jsonl, make_settings, wait_job
from tests.tiny_gguf import write_llama_gguf


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory, llama_pair: tuple[Path, Path]
        ) -> dict[str, Path]:
    """Models under a directory whose name must never reach a user: a GGUF teacher, a
    student saved from it (one vocabulary), and a word-level model (another vocabulary)."""
    root = tmp_path_factory.mktemp("server-secret")
    tok = tiny.bpe_tokenizer()
    gguf = write_llama_gguf(root / "teacher.gguf", tiny.build_model("llama", len(tok), seed=6),
                            tok, chat_template=tiny.CHAT_TEMPLATE)
    words = tiny.save_pair(root, "llama", tiny.word_tokenizer(), seed=7)
    return {"gguf-teacher": gguf, "bpe-student": llama_pair[1], "word-student": words,
            "gone-student": root / "deleted-model"}


@pytest.fixture
def zoo_settings(redis_url: str, redis: Redis, tmp_path: Path, llama_pair: tuple[Path, Path],
                 zoo: dict[str, Path]) -> Settings:
    models = {name: {"path": str(path)} for name, path in zoo.items()}
    return make_settings(redis_url, tmp_path / "data", llama_pair, models=models,
                         default_teacher="gguf-teacher", default_student="bpe-student")


@pytest.fixture
def zoo_client(zoo_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(zoo_settings)) as client:
        yield client


@pytest.fixture
def rows(zoo_client: TestClient) -> str:
    response = zoo_client.post("/datasets?name=rows.jsonl", content=jsonl(ROWS),
                               headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _queued(redis: Redis) -> int:
    return sum(Queue(name, connection=redis).count for name in QUEUES)


def _distill(client: TestClient, dataset: str, **models: str) -> Any:
    return client.post("/jobs", json={"kind": "distill", "dataset_id": dataset, "epochs": 1,
                                      "batch_size": 2, **models})


def test_distill_between_vocabularies_is_refused_naming_the_student(
        zoo_client: TestClient, rows: str, redis: Redis) -> None:
    response = _distill(zoo_client, rows, teacher="gguf-teacher", student="word-student")
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "student"
    assert ("'gguf-teacher' and 'word-student' use different tokenizers; distillation needs "
            "a shared vocabulary") in body["detail"]
    assert "server-secret" not in response.text
    assert _queued(redis) == 0 and zoo_client.get("/jobs").json()["total"] == 0


def test_unknown_models_are_refused_naming_the_field(zoo_client: TestClient, rows: str,
                                                     redis: Redis) -> None:
    response = _distill(zoo_client, rows, teacher="no-such-model")
    assert response.status_code == 422 and response.json()["field"] == "teacher"
    assert "gguf-teacher" in response.json()["detail"]  # the names one may use
    detect = zoo_client.post("/jobs", json={"kind": "detect", "dataset_id": rows,
                                            "student": "nope"})
    assert detect.status_code == 422 and detect.json()["field"] == "student"
    assert _queued(redis) == 0


def test_a_gguf_teacher_and_a_student_of_its_vocabulary_are_accepted(
        zoo_client: TestClient, rows: str, redis: Redis) -> None:
    response = _distill(zoo_client, rows)  # the defaults: gguf-teacher, bpe-student
    assert response.status_code == 202, response.text
    assert _queued(redis) == 1


def test_models_list_shows_gguf_models_without_paths(zoo_client: TestClient) -> None:
    response = zoo_client.get("/models")
    listed = {m["name"]: (m["source"], m["available"]) for m in response.json()["models"]}
    assert listed == {"gguf-teacher": ("local", True), "bpe-student": ("local", True),
                      "word-student": ("local", True), "gone-student": ("local", False)}
    assert "server-secret" not in response.text and ".gguf" not in response.text


def test_worker_errors_name_models_not_paths(zoo_client: TestClient, zoo_settings: Settings,
                                             redis_url: str, rows: str) -> None:
    """A student whose files are gone cannot be fingerprinted, so the API leaves it to the
    worker; the worker's error names it as configured."""
    response = _distill(zoo_client, rows, student="gone-student")
    assert response.status_code == 202, response.text
    drain(zoo_settings, redis_url)
    job = wait_job(zoo_client, response.json()["id"])
    assert job["status"] == "failed"
    assert "'gone-student'" in job["error"] and "server-secret" not in job["error"], job


def test_worker_failure_text_loses_server_paths(zoo_settings: Settings, redis: Redis,
                                                zoo: dict[str, Path]) -> None:
    """Whatever an exception says (a library's OSError quotes its file), a job's error shows
    configured models by name and data-dir paths relative to it."""
    from workers.runtime import WorkerContext

    ctx = WorkerContext.create(zoo_settings, redis)
    data = zoo_settings.data_dir.resolve()
    text = ctx.public_text(f"OSError: cannot open {zoo['gguf-teacher']} or "
                           f"{data}/datasets/abc/rows.jsonl")
    assert text == "OSError: cannot open 'gguf-teacher' or datasets/abc/rows.jsonl"


def test_workers_load_models_by_name_with_their_template(
        redis_url: str, redis: Redis, tmp_path: Path, llama_pair: tuple[Path, Path],
        zoo: dict[str, Path]) -> None:
    from workers.runtime import WorkerContext

    models = {"chatty": {"path": str(llama_pair[0])},
              "plain": {"path": str(llama_pair[1]), "prompt_template": "Q: {instruction}\nA:",
                        "force_template": True},
              "gguf": {"path": str(zoo["gguf-teacher"])}}
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, models=models,
                             default_teacher="chatty", default_student="plain")
    ctx = WorkerContext.create(settings, redis)
    chatty, plain, gguf = (ctx.models.get(ctx.model_ref(n)) for n in ("chatty", "plain", "gguf"))
    assert (chatty.name, chatty.template.kind) == ("chatty", "chat")
    assert (plain.name, plain.template.plain) == ("plain", "Q: {instruction}\nA:")
    assert (gguf.name, gguf.template.kind, gguf.template_note) == ("gguf", "chat", None)
