from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from leaf_engine.units import is_word
from leaf_service.queues import SHORT_QUEUE
from leaf_service.settings import Settings
from tests.service import make_settings, running_worker, wait_job

PROMPT = {"instruction": "Bob had 12 apples and gave 4 to Carl. The sky is blue today.",
          "output": "The answer is 8."}


def _record(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in {"cached", "job_id"}}


def _flags(body: dict[str, Any]) -> list[bool]:
    return [t["confounder"] for t in body["tokens"]]


def test_second_detect_is_cached_with_the_same_record(client: TestClient, worker) -> None:
    first = client.post("/detect", json=PROMPT)
    assert first.status_code == 200, first.text
    assert first.json()["cached"] is False and first.json()["job_id"]
    second = client.post("/detect", json=PROMPT)
    assert second.status_code == 200
    assert second.json()["cached"] is True and second.json()["job_id"] is None
    assert _record(second.json()) == _record(first.json())
    record = first.json()
    assert record["instruction"] == PROMPT["instruction"] and record["params"]["tau"] == 0.1
    for token in record["tokens"]:
        assert PROMPT["instruction"][token["start"]:token["end"]] == token["text"]
        assert 0.0 <= token["score"] <= 1.0
    # The /detect job can be looked up by id, and shows the same record.
    job = client.get(f"/jobs/{record['job_id']}").json()
    assert job["status"] == "finished" and job["kind"] == "detect"
    assert job["result"]["record"] == _record({**record, "job_id": None, "cached": None})


def test_new_tau_on_a_cached_prompt_needs_no_worker(client: TestClient, settings: Settings,
                                                    redis: Redis, redis_url: str) -> None:
    with running_worker(settings, redis_url):
        assert client.post("/detect", json=PROMPT).status_code == 200
    # The worker is gone: every answer below must come from the cache.
    jobs_before = redis.zcard(f"rq:finished:{SHORT_QUEUE}")
    low = client.post("/detect", json={**PROMPT, "tau": 0.0}).json()
    high = client.post("/detect", json={**PROMPT, "tau": 1.0}).json()
    top = client.post("/detect", json={**PROMPT, "percentile": 50.0}).json()
    words = client.post("/detect", json={**PROMPT, "tau": 1.0, "unit": "word"}).json()
    assert all(b["cached"] for b in (low, high, top, words))
    visible = [is_word(t["text"]) for t in high["tokens"]]
    assert _flags(high) == visible  # every word scores <= 1; punctuation is never flagged
    assert 1 <= sum(_flags(low)) < sum(visible)  # only the minimum scores <= 0
    assert _flags(low) != _flags(high)
    assert top["params"]["percentile"] == 50.0 and "tau" not in top["params"]
    assert redis.llen(f"rq:queue:{SHORT_QUEUE}") == 0
    assert redis.zcard(f"rq:finished:{SHORT_QUEUE}") == jobs_before


def test_methods_and_response_level(client: TestClient, worker) -> None:
    ppl = client.post("/detect", json={**PROMPT, "method": "ppl", "tau": 0.3}).json()
    gradient = client.post("/detect", json={**PROMPT, "tau": 0.3}).json()
    assert ppl["cached"] is False and gradient["cached"] is False  # ppl needs surprisal too
    assert sum(_flags(ppl)) == sum(_flags(gradient))  # same count, other tokens
    rand = client.post("/detect", json={**PROMPT, "method": "random", "seed": 3,
                                        "tau": 0.3}).json()
    assert rand["cached"] is True and sum(_flags(rand)) == sum(_flags(gradient))
    response = client.post("/detect", json={
        **PROMPT, "output": "Step 1: take 4 from 12. Step 2: that leaves 8. The answer is 8.",
        "level": "response", "segments": 2})
    assert response.status_code == 200, response.text
    views = response.json()["views"]
    assert len(views) == 1 and views[0]["segment"] == 1
    assert {t["field"] for t in views[0]["tokens"]} == {"instruction", "output"}


def test_detect_answers_202_while_the_job_runs(tmp_path: Path, redis: Redis, redis_url: str,
                                               llama_pair) -> None:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, detect_wait_s=0.0)
    with TestClient(create_app(settings)) as client:
        response = client.post("/detect", json=PROMPT)
        assert response.status_code == 202
        job_id = response.json()["job_id"]
        assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
        # The same prompt again joins the queued job instead of queueing another.
        assert client.post("/detect", json=PROMPT).json()["job_id"] == job_id
        assert redis.llen(f"rq:queue:{SHORT_QUEUE}") == 1
        with running_worker(settings, redis_url):
            job = wait_job(client, job_id)
        assert job["status"] == "finished" and job["progress"] == 1.0
        assert job["result"]["record"]["tokens"]
        assert client.post("/detect", json=PROMPT).json()["cached"] is True


def _leaks(text: str, settings: Settings) -> list[str]:
    """Server paths and command-line flags found in an error meant for an API client."""
    paths = [str(settings.data_dir), *(m.path for m in settings.models.values())]
    return [p for p in paths if p in text] + re.findall(r"(?<!\w)--\w[\w-]*", text)


def test_prompt_too_long_for_the_model_is_422(client: TestClient, worker, settings: Settings,
                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        response = client.post("/detect", json={**PROMPT, "instruction": "apples " * 400})
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == "instruction" and error["detail"].startswith("instruction: ")
    # The model as the request names it, the figures, and no path or CLI flag of the server.
    assert re.search(r"\d+ tokens together, more than model 'tiny-(teacher|student)''s "
                     r"context of 256 tokens", error["detail"]), error
    assert _leaks(error["detail"], settings) == []
    # The user's mistake is one line in the worker's log, not a traceback.
    failed = [r for r in caplog.records if "failed on its input" in r.getMessage()]
    assert len(failed) == 1 and "context" in failed[0].getMessage()
    assert not any("Traceback" in r.getMessage() or r.exc_info for r in caplog.records)
    long_output = client.post("/detect", json={**PROMPT, "output": "The answer is 8. " * 100})
    assert long_output.status_code == 422 and long_output.json()["field"] == "output"
    assert _leaks(long_output.json()["detail"], settings) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**PROMPT, "colour": "blue"}, "colour"),
        ({**PROMPT, "tau": "0.1"}, "tau"),
        ({**PROMPT, "tau": False}, "tau"),
        ({**PROMPT, "tau": 1.5}, "tau"),
        ({**PROMPT, "percentile": 0}, "percentile"),
        ({**PROMPT, "segments": 4}, "segments"),
        ({**PROMPT, "segments": 2.5}, "segments"),
        ({**PROMPT, "segments": True}, "segments"),
        ({**PROMPT, "seed": -1}, "seed"),
        ({**PROMPT, "method": "attention"}, "method"),
        ({**PROMPT, "level": None}, "level"),
        ({**PROMPT, "instruction": ""}, "instruction"),
        ({**PROMPT, "instruction": 7}, "instruction"),
        ({"instruction": "a"}, "output"),
        ({**PROMPT, "teacher": "gpt-9"}, "teacher"),
        ({**PROMPT, "student": "../../etc/passwd"}, "student"),
        ({**PROMPT, "student": "/tmp/model"}, "student"),
    ],
)
def test_bad_detect_requests_are_422_naming_the_field(client: TestClient, body: dict[str, Any],
                                                      field: str) -> None:
    response = client.post("/detect", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field and field in error["detail"]


def test_both_thresholds_and_malformed_bodies(client: TestClient) -> None:
    both = client.post("/detect", json={**PROMPT, "tau": 0.1, "percentile": 5})
    assert both.status_code == 422 and "either tau or percentile" in both.json()["detail"]
    assert both.json()["field"] == "percentile"
    broken = client.post("/detect", content=b'{"instruction": "a", ',
                         headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "invalid JSON" in broken.json()["detail"]
    listed = client.post("/detect", json=[PROMPT])
    assert listed.status_code == 422
    empty = client.post("/detect")
    assert empty.status_code == 422


def test_text_limits_name_the_setting(tmp_path: Path, redis: Redis, redis_url: str,
                                      llama_pair) -> None:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair,
                             max_instruction_chars=20, max_output_chars=50)
    with TestClient(create_app(settings)) as client:
        response = client.post("/detect", json=PROMPT)
        assert response.status_code == 422
        assert response.json()["field"] == "instruction"
        detail = response.json()["detail"]
        assert detail == ("instruction: 60 characters, more than this server's limit of 20 "
                          "(LEAF_MAX_INSTRUCTION_CHARS)")
        assert _leaks(detail, settings) == []
        output = client.post("/detect", json={**PROMPT, "instruction": "Bob", "output": "x" * 51})
        assert output.status_code == 422 and output.json()["field"] == "output"
        huge = client.post("/detect", json={**PROMPT, "output": "x" * 2_000_000})
        assert huge.status_code == 413


def test_a_missing_model_is_503_and_frees_the_worker(tmp_path: Path, redis: Redis,
                                                     redis_url: str, llama_pair) -> None:
    models = {name: {"path": str(path)} for name, path in
              (("tiny-teacher", llama_pair[0]), ("tiny-student", llama_pair[1]),
               ("gone", tmp_path / "no-such-model"))}
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, models=models)
    with TestClient(create_app(settings)) as client, running_worker(settings, redis_url):
        listed = {m["name"]: m["available"] for m in client.get("/models").json()["models"]}
        assert listed["gone"] is False and listed["tiny-teacher"] is True
        response = client.post("/detect", json={**PROMPT, "teacher": "gone"})
        assert response.status_code == 503, response.text
        assert "cannot be loaded" in response.json()["detail"]
        assert client.post("/detect", json=PROMPT).status_code == 200  # the worker goes on
