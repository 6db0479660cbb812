from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jsonschema_rs  # schemathesis brings it (the dev extra)
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from leaf_engine.report import TAUS, build_report
from leaf_service.jobs import (
    CORPUS_REPORT_FILES,
    CORPUS_REPORT_JSON,
    DETECTIONS_FILE,
    MODEL_ARCHIVE,
    RESUME_ARCHIVE,
)
from leaf_service.settings import Settings
from tests.service import ROWS, drain, jsonl, make_settings, running_worker, wait_for, wait_job
from workers.worker import LeafWorker, make_worker

NDJSON = {"content-type": "application/x-ndjson"}


def _submit(client: TestClient, body: dict[str, Any]) -> str:
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    return response.json()["id"]


def test_detect_job_end_to_end(client: TestClient, worker, dataset: dict[str, Any]) -> None:
    job_id = _submit(client, {"kind": "detect", "dataset_id": dataset["id"], "tau": 0.3})
    job = wait_job(client, job_id)
    assert job["status"] == "finished", job
    assert job["progress"] == 1.0 and job["started_at"] and job["ended_at"]
    assert job["params"]["tau"] == 0.3 and job["params"]["teacher"] == "tiny-teacher"
    result = job["result"]
    assert result["records"] == 3 and result["computed"] == 3 and result["cached"] == 0
    assert [s["tau"] for s in result["sensitivity"]][:2] == [0.0, 0.05]
    names = {f["name"] for f in job["files"]}
    assert names == {"detections.jsonl", "pruned.jsonl", *CORPUS_REPORT_FILES}

    detections = client.get(f"/jobs/{job_id}/files/detections.jsonl")
    assert detections.status_code == 200
    assert "attachment" in detections.headers["content-disposition"]
    records = [json.loads(line) for line in detections.text.splitlines()]
    assert [r["id"] for r in records] == ["a", "b", "3"]
    assert records[0]["answer"] == "12"  # passthrough fields survive
    assert sum(len(r["tokens"]) for r in records) > 0
    pruned = client.get(f"/jobs/{job_id}/files/pruned.jsonl").text.splitlines()
    # One export row per flagged run (a span, or more where a whitespace token splits it),
    # one unchanged row for a record with nothing flagged.
    assert len(pruned) == result["pruned_rows"] >= sum(len(r["spans"]) for r in records)
    page = client.get(f"/jobs/{job_id}/records?offset=1&limit=1").json()
    assert page["total"] == 3 and page["records"] == [records[1]]

    # The job filled the analysis cache: /detect on a row is answered without a worker.
    row = ROWS[0]
    hit = client.post("/detect", json={"instruction": row["instruction"],
                                       "output": row["output"], "tau": 0.3}).json()
    assert hit["cached"] is True and hit["tokens"] == records[0]["tokens"]
    # A second job over the same rows computes nothing.
    again = wait_job(client, _submit(client, {"kind": "detect", "dataset_id": dataset["id"]}))
    assert again["result"]["cached"] == 3 and again["result"]["computed"] == 0

    listed = client.get("/jobs?kind=detect").json()
    assert listed["total"] == 2 and [j["id"] for j in listed["jobs"]][1] == job_id
    assert client.get("/jobs?kind=distill").json()["total"] == 0
    assert client.get("/jobs?status=failed").json()["total"] == 0
    # Pages, with or without a status filter, agree with the full list.
    for query in ("", "&status=finished"):
        page = client.get(f"/jobs?offset=1&limit=1{query}").json()
        assert page["total"] == 2 and [j["id"] for j in page["jobs"]] == [job_id]
        assert page["jobs"][0]["status"] == "finished"


# ---------------------------------------------------------------------------- corpus report

# Of the number words docs/report.md lists, those the rows below could hold.
NUMBER_WORDS = {"one", "two", "three", "seven", "twelve", "hundred", "half", "twice", "dozen"}
BINS = 10  # the report's default position bins


def _contexts(record: dict[str, Any]) -> list[tuple[int, dict[str, str], list[dict[str, Any]],
                                                    list[tuple[str, int, int]]]]:
    """(segment, texts, tokens, spans) of each scored context of a record, read from the
    record as docs/report.md describes it: segment 0 the instruction, then its views."""
    main = {"instruction": record["instruction"]}
    out = [(0, main, [{"field": "instruction", **t} for t in record["tokens"]],
            [("instruction", s, e) for s, e in record["spans"]])]
    for view in record.get("views", []):
        texts = {"instruction": record["instruction"],
                 "output": record["output"][: view["target"][0]]}
        out.append((view["segment"], texts, view["tokens"],
                    [(s["field"], s["start"], s["end"]) for s in view["spans"]]))
    return out


def _recount(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per segment, what the report must say, counted here from the records alone."""
    out: dict[int, dict[str, Any]] = {}
    for record in records:
        for segment, texts, tokens, spans in _contexts(record):
            seg = out.setdefault(segment, {
                "prompts": 0, "tokens": 0, "flags": 0, "spans": 0, "prompts_flagged": 0,
                "tau_flags": [0] * len(TAUS), "tau_prompts": [0] * len(TAUS),
                "position_tokens": [0] * BINS, "position_flags": [0] * BINS,
                "template": 0, "number": 0, "punctuation": 0,
                "literal": {}, "literal_prompts": {}})
            visible = [t for t in tokens if texts[t["field"]][t["start"]:t["end"]].strip()]
            edges = set()
            for name in texts:
                mine = [i for i, t in enumerate(visible) if t["field"] == name]
                edges |= {mine[0], mine[-1]} if mine else set()
            seg["prompts"] += 1
            seg["tokens"] += len(visible)
            flagged = [i for i, t in enumerate(visible) if t["confounder"]]
            seg["flags"] += len(flagged)
            seg["prompts_flagged"] += bool(flagged)
            seg["spans"] += len(spans)
            for k, tau in enumerate(TAUS):
                under = sum(t["score"] <= tau for t in visible)
                seg["tau_flags"][k] += under
                seg["tau_prompts"][k] += under > 0
            for i, t in enumerate(visible):
                seg["position_tokens"][i * BINS // len(visible)] += 1
                seg["position_flags"][i * BINS // len(visible)] += t["confounder"]
            for i in flagged:
                token = visible[i]
                text, start, end = texts[token["field"]], token["start"], token["end"]
                word = text[start:end]
                start += len(word) - len(word.lstrip())
                end -= len(word) - len(word.rstrip())
                word = word.strip()
                alone = not (text[start - 1:start].isalnum() or text[end:end + 1].isalnum())
                if i in edges:
                    seg["template"] += 1
                elif any(c.isdigit() for c in word) or (alone and word.lower() in NUMBER_WORDS):
                    seg["number"] += 1
                elif not any(c.isalnum() for c in word):
                    seg["punctuation"] += 1
            for key in {" ".join(texts[f][s:e].split()[:6]) for f, s, e in spans}:
                seg["literal_prompts"][key] = seg["literal_prompts"].get(key, 0) + 1
            for f, s, e in spans:
                key = " ".join(texts[f][s:e].split()[:6])
                seg["literal"][key] = seg["literal"].get(key, 0) + 1
    return out


def _check_segment(got: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("prompts", "tokens", "flags", "spans", "prompts_flagged"):
        assert got[key] == want[key], key
    assert [p["flags"] for p in got["tau_curve"]] == want["tau_flags"]
    assert [p["prompts_flagged"] for p in got["tau_curve"]] == want["tau_prompts"]
    assert [p["tau"] for p in got["tau_curve"]] == list(TAUS)
    assert got["positions"]["tokens"] == want["position_tokens"]
    assert got["positions"]["flags"] == want["position_flags"]
    categories = {c["category"]: c for c in got["categories"]}
    assert sum(c["flags"] for c in categories.values()) == want["flags"]
    for name in ("template", "number", "punctuation"):
        assert categories[name]["flags"] == want[name], name
    table = got["literal_patterns"]
    assert not table["truncated"] and table["held"] == len(want["literal"])
    for row in table["rows"]:
        key = row["pattern"].removesuffix(" …")
        assert row["count"] == want["literal"][key] and row["count_error"] == 0, key
        assert row["prompts"] == want["literal_prompts"][key], key
    assert sum(r["count"] for r in got["patterns"]["rows"]) <= want["spans"]


def test_detect_job_report_counts_match_its_records(client: TestClient, settings: Settings,
                                                     redis_url: str, tmp_path) -> None:
    """report.json, counted again here from the job's detections.jsonl (read on its own),
    and equal to what `leaf report` makes of that file; at both levels."""
    rows = ROWS + [{"instruction": f"Cleo is {n} years old. She has {n + 3} red pens and "
                                   "twelve blue ones. How many pens?",
                    "output": f"She has {n + 15} pens. The answer is {n + 15}."}
                   for n in range(2, 7)]
    dataset = _dataset(client, rows)
    jobs = [_submit(client, {"kind": "detect", "dataset_id": dataset, "tau": 0.3}),
            _submit(client, {"kind": "detect", "dataset_id": dataset, "tau": 0.3,
                             "level": "response", "segments": 2})]
    assert client.get(f"/jobs/{jobs[0]}/report").status_code == 409  # queued
    drain(settings, redis_url)
    schema = client.get("/openapi.json").json()["paths"]["/jobs/{job_id}/report"]["get"]
    schema = schema["responses"]["200"]["content"]["application/json"]["schema"]
    for job_id, segments in zip(jobs, (1, 2), strict=True):
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "finished", job["error"]
        answer = client.get(f"/jobs/{job_id}/report")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        report = answer.json()
        jsonschema_rs.validate(schema, report)  # the schema the API states is what it sends
        text = client.get(f"/jobs/{job_id}/files/{DETECTIONS_FILE}").text
        records = [json.loads(line) for line in text.splitlines()]
        assert report["records"] == len(records) == len(rows)
        assert report["source"] == DETECTIONS_FILE and report["params"]["tau"] == 0.3
        want = _recount(records)
        assert [s["segment"] for s in report["segments"]] == sorted(want) == list(
            range(segments))
        for got in report["segments"]:
            _check_segment(got, want[got["segment"]])
        assert want[0]["flags"] > 0 and want[0]["literal"]  # not a vacuous comparison
        # Examples point at the record and characters they quote.
        for row in report["segments"][0]["patterns"]["rows"]:
            for example in row["examples"]:
                record = records[example["line"] - 1]
                assert record["id"] == example["id"]
                quoted = record["instruction"][example["start"]:example["end"]]
                assert " ".join(quoted.split()) == example["flag"]
        # The job fed the report as it wrote; `leaf report` reads the file: the same report.
        (tmp_path / DETECTIONS_FILE).write_text(text)
        again = build_report(tmp_path / DETECTIONS_FILE).report(source=DETECTIONS_FILE)
        assert json.loads(json.dumps(again.to_dict())) == report
        # The job's result repeats a few of its figures, and lists its files.
        summary = job["result"]["report"]
        assert summary["files"] == list(CORPUS_REPORT_FILES)
        assert {f["name"] for f in job["files"]} >= set(CORPUS_REPORT_FILES)
        assert summary["segments"] == segments
        main = report["segments"][0]
        assert summary["prompts_flagged"] == main["prompts_flagged"]
        assert summary["flags_by_category"] == {c["category"]: c["flags"]
                                                for c in main["categories"]}
        assert summary["top_patterns"] == [
            {k: r[k] for k in ("pattern", "count", "prompts")}
            for r in main["patterns"]["rows"][:5]]
        assert client.get(f"/jobs/{job_id}/files/{CORPUS_REPORT_JSON}").json() == report

    html = client.get(f"/jobs/{jobs[0]}/report?format=html")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "<svg" in html.text and "sandbox" in html.headers["content-security-policy"]
    md = client.get(f"/jobs/{jobs[0]}/report", params={"format": "md"})
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith("#")
    bad = client.get(f"/jobs/{jobs[0]}/report?format=pdf")
    assert bad.status_code == 422 and bad.json()["field"] == "format"


def test_report_is_404_without_one_and_409_until_finished(
        client: TestClient, settings: Settings, redis_url: str, dataset: dict[str, Any]) -> None:
    assert client.get("/jobs/0123456789abcdef0123/report").status_code == 404
    assert client.get("/jobs/not-an-id/report").status_code == 404
    queued = _submit(client, {"kind": "detect", "dataset_id": dataset["id"]})
    response = client.get(f"/jobs/{queued}/report")
    assert response.status_code == 409 and "queued" in response.json()["detail"]
    canceled = _submit(client, {"kind": "detect", "dataset_id": dataset["id"]})
    client.delete(f"/jobs/{canceled}")
    assert client.get(f"/jobs/{canceled}/report").status_code == 409
    # Only detect jobs have one, finished or not.
    distill = _submit(client, {"kind": "distill", "dataset_id": dataset["id"]})
    response = client.get(f"/jobs/{distill}/report")
    assert response.status_code == 404 and "only detect jobs" in response.json()["detail"]
    client.delete(f"/jobs/{distill}")
    drain(settings, redis_url)
    assert client.get(f"/jobs/{queued}/report").status_code == 200
    # A finished detect job whose report is gone (a job from before reports) has none.
    for name in CORPUS_REPORT_FILES:
        (settings.data_dir / "jobs" / queued / name).unlink()
    for fmt in ("json", "html", "md"):
        response = client.get(f"/jobs/{queued}/report?format={fmt}")
        assert response.status_code == 404 and "no corpus report" in response.json()["detail"]


def test_downloads_accept_only_listed_names(client: TestClient, worker,
                                            dataset: dict[str, Any]) -> None:
    job_id = _submit(client, {"kind": "detect", "dataset_id": dataset["id"],
                              "export_pruned": False})
    assert wait_job(client, job_id)["status"] == "finished"
    for name in ("job.json", "..%2fjob.json", "pruned.jsonl", ".hidden", "%2e%2e"):
        response = client.get(f"/jobs/{job_id}/files/{name}")
        assert response.status_code == 404, name
    assert client.get(f"/jobs/{job_id}/files/../../datasets").status_code == 404
    assert client.get("/jobs/0123456789abcdef0123").status_code == 404
    assert client.get("/jobs/not-an-id/files/x").status_code == 404


def test_cancel_a_queued_job(client: TestClient, settings, redis_url: str,
                             dataset: dict[str, Any]) -> None:
    job_id = _submit(client, {"kind": "detect", "dataset_id": dataset["id"]})
    canceled = client.delete(f"/jobs/{job_id}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert client.delete(f"/jobs/{job_id}").status_code == 409
    with running_worker(settings, redis_url):
        later = _submit(client, {"kind": "detect", "dataset_id": dataset["id"]})
        assert wait_job(client, later)["status"] == "finished"
    assert client.get(f"/jobs/{job_id}").json()["status"] == "canceled"
    # Durable: job.json says so too.
    record = json.loads((settings.data_dir / "jobs" / job_id / "job.json").read_text())
    assert record["status"] == "canceled"


def test_cancel_a_started_job(client: TestClient, worker) -> None:
    rows = [{"instruction": f"Ann has {i} pens and {i + 1} books. How many pens?",
             "output": f"The answer is {i}."} for i in range(300)]
    dataset = client.post("/datasets", content=jsonl(rows), headers=NDJSON).json()
    job_id = _submit(client, {"kind": "detect", "dataset_id": dataset["id"], "batch_size": 1})
    wait_job(client, job_id, until={"started"})
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    job = wait_job(client, job_id, timeout=60)
    assert job["status"] == "canceled" and job["error"] == "canceled"
    # The dataset is intact and the worker is free for the next job.
    assert client.get(f"/datasets/{dataset['id']}").json()["rows"] == 300
    small = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
    follow = _submit(client, {"kind": "detect", "dataset_id": small["id"]})
    assert wait_job(client, follow)["status"] == "finished"


def test_dataset_in_use_cannot_be_deleted(client: TestClient, dataset: dict[str, Any]) -> None:
    job_id = _submit(client, {"kind": "detect", "dataset_id": dataset["id"]})
    response = client.delete(f"/datasets/{dataset['id']}")
    assert response.status_code == 409 and job_id in response.json()["detail"]
    client.delete(f"/jobs/{job_id}")
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204


def _server_paths(settings) -> list[str]:
    return [str(settings.data_dir.resolve())] + [m.path for m in settings.models.values()]


@pytest.mark.slow  # trains
def test_distill_then_evaluate_on_a_tiny_slice(client: TestClient, worker, settings,
                                               dataset: dict[str, Any]) -> None:
    detect = _submit(client, {"kind": "detect", "dataset_id": dataset["id"], "tau": 0.3})
    assert wait_job(client, detect)["status"] == "finished"
    distill = _submit(client, {"kind": "distill", "detect_job": detect, "epochs": 1,
                               "batch_size": 2, "micro_batch_size": 1, "lr": 1e-3,
                               "max_length": 128, "warmup_steps": 0})
    job = wait_job(client, distill, timeout=240)
    assert job["status"] == "finished", job["error"]
    result = job["result"]
    assert result["steps"] >= 1 and result["history"] and result["checkpoint"]
    text = json.dumps(result) + client.get(f"/jobs/{distill}/files/result.json").text
    assert not [p for p in _server_paths(settings) if p in text]  # no server paths
    assert result["config"]["teacher"] == "tiny-teacher"
    names = {f["name"] for f in job["files"]}
    assert {MODEL_ARCHIVE, RESUME_ARCHIVE, "result.json"} <= names
    assert set(result["downloads"]) == {MODEL_ARCHIVE, RESUME_ARCHIVE}
    archive = client.get(f"/jobs/{distill}/files/{MODEL_ARCHIVE}").content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getnames()
    assert any(n.endswith("config.json") for n in members)
    assert not any(n.endswith(("optimizer.pt", "trainer_state.json")) for n in members)

    answers = client.post("/datasets", content=jsonl([
        {"instruction": "Ann has 7 pens. She buys 5 more pens. How many pens?", "answer": "12"},
        {"instruction": "Bob had 12 apples and gave 4 to Carl.", "answer": "8"}]),
        headers=NDJSON).json()
    evaluate = _submit(client, {"kind": "evaluate", "dataset_id": answers["id"],
                                "checkpoint_job": distill, "teacher": "tiny-teacher",
                                "max_new_tokens": 4})
    job = wait_job(client, evaluate, timeout=240)
    assert job["status"] == "finished", job["error"]
    assert 0.0 <= job["result"]["accuracy"] <= 1.0 and job["result"]["total"] == 2
    assert {f["name"] for f in job["files"]} == {"report.json"}
    text = json.dumps(job["result"]) + client.get(f"/jobs/{evaluate}/files/report.json").text
    assert not [p for p in _server_paths(settings) if p in text]
    assert f"checkpoint of job {distill}" in text and "tiny-teacher" in text


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ({"kind": "train", "dataset_id": "0" * 20}, "kind", 422),
        ({"dataset_id": "0" * 20}, "kind", 422),
        ({"kind": "detect"}, "dataset_id", 422),
        ({"kind": "detect", "dataset_id": "../etc"}, "dataset_id", 422),
        ({"kind": "detect", "dataset_id": "{dataset}", "tau": "low"}, "tau", 422),
        ({"kind": "detect", "dataset_id": "{dataset}", "batch_size": 0}, "batch_size", 422),
        ({"kind": "detect", "dataset_id": "{dataset}", "teacher": "nope"}, "teacher", 422),
        ({"kind": "detect", "dataset_id": "{dataset}", "out": "/tmp/x"}, "out", 422),
        ({"kind": "distill", "dataset_id": "{dataset}", "lam": 2}, "lam", 422),
        ({"kind": "distill", "dataset_id": "{dataset}", "epochs": True}, "epochs", 422),
        ({"kind": "distill", "dataset_id": "{dataset}", "batch_size": 3,
          "micro_batch_size": 2}, "batch_size", 422),
        ({"kind": "distill", "dataset_id": "{dataset}", "resume": "/tmp"}, "resume", 422),
        ({"kind": "evaluate", "dataset_id": "{dataset}", "model": "x", "checkpoint_job":
          "0" * 20}, "checkpoint_job", 422),
        ({"kind": "distill", "dataset_id": "{dataset}", "detect_job": "0" * 20}, "detect_job",
         422),
        # Well-formed, but naming what does not exist (404) or cannot serve the job (409).
        ({"kind": "detect", "dataset_id": "0" * 20}, "dataset_id", 404),
        ({"kind": "distill", "detect_job": "0" * 20}, "detect_job", 404),
        ({"kind": "evaluate", "dataset_id": "{dataset}"}, "dataset_id", 409),  # no answers
    ],
)
def test_bad_job_requests_are_4xx_naming_the_field(client: TestClient, dataset: dict[str, Any],
                                                   body: dict[str, Any], field: str,
                                                   status: int) -> None:
    body = {k: (dataset["id"] if v == "{dataset}" else v) for k, v in body.items()}
    response = client.post("/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field, error
    assert field in error["detail"]
    assert client.get("/jobs").json()["total"] == 0


def test_a_row_over_the_context_fails_the_job_naming_the_configured_model(
        client: TestClient, worker, settings: Settings) -> None:
    """The job's error names the model as the request did, the field and the figures; no
    path of the server and no command-line flag."""
    long_row = {"instruction": "apples " * 400, "output": "The answer is 8."}
    dataset = client.post("/datasets", content=jsonl([long_row]), headers=NDJSON).json()
    job = wait_job(client, _submit(client, {"kind": "detect", "dataset_id": dataset["id"]}))
    assert job["status"] == "failed"
    assert re.fullmatch(r"instruction: the instruction and output are \d+ tokens together, "
                        r"more than model 'tiny-(teacher|student)''s context of 256 tokens; "
                        r"shorten the instruction or the output", job["error"]), job["error"]
    assert not [p for p in _server_paths(settings) if p in job["error"]]


def test_jobs_survive_losing_redis(client: TestClient, worker, redis, dataset) -> None:
    job_id = _submit(client, {"kind": "detect", "dataset_id": dataset["id"]})
    finished = wait_job(client, job_id)
    redis.flushall()  # Redis may be lost without losing work
    again = wait_for(lambda: client.get(f"/jobs/{job_id}").json())
    assert again["status"] == "finished" and again["result"] == finished["result"]
    assert client.get(f"/jobs/{job_id}/files/detections.jsonl").status_code == 200
    assert client.get("/jobs").json()["total"] == 1


@pytest.fixture
def no_isolation(tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This process as on a machine without bubblewrap: a PATH on which there is no bwrap."""
    from leaf_engine.sandbox import isolation_problem

    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("bin-without-bwrap")))
    isolation_problem.cache_clear()
    problem = isolation_problem()
    assert problem is not None and "bwrap" in problem
    try:
        yield problem
    finally:
        monkeypatch.undo()
        isolation_problem.cache_clear()


def _dataset(client: TestClient, rows: list[dict[str, Any]]) -> str:
    response = client.post("/datasets", content=jsonl(rows), headers=NDJSON)
    assert response.status_code == 201, response.text
    return response.json()["id"]


ANSWERS = [{"instruction": "What is 7 + 5?", "answer": "12"}]
CODE = [{"instruction": "Write add(a, b).", "tests": ["assert add(1, 2) == 3"]}]


@contextmanager
def _live_worker(settings: Settings, redis: Redis) -> Iterator[LeafWorker]:
    """A worker registered as alive (and reporting what it can run), not taking jobs."""
    worker = make_worker(settings, redis)
    worker.register_birth()
    try:
        yield worker
    finally:
        worker.register_death()


def test_code_evaluation_is_refused_without_isolation(client: TestClient, redis,
                                                      no_isolation: str) -> None:
    answers, code = _dataset(client, ANSWERS), _dataset(client, CODE)
    with _live_worker(client.app.state.settings, redis):
        _refused_everywhere(client, redis, answers, code, no_isolation)
    # No worker has said what it can run: the job is accepted, and waits for one to decide.
    assert client.post("/jobs", json={"kind": "evaluate", "dataset_id": code}).status_code == 202


def _refused_everywhere(client: TestClient, redis: Redis, answers: str, code: str,
                        no_isolation: str) -> None:
    for body in ({"kind": "evaluate", "dataset_id": code},
                 {"kind": "evaluate", "dataset_id": code, "answer_check": "number"},
                 {"kind": "evaluate", "dataset_id": answers},  # auto: math-verify may run
                 {"kind": "evaluate", "dataset_id": answers, "answer_check": "math"}):
        response = client.post("/jobs", json=body)
        assert response.status_code == 403, (body, response.text)
        error = response.json()
        assert error["field"] == "kind" and no_isolation in error["detail"]
        assert "LEAF_ALLOW_UNSANDBOXED_CODE" in error["detail"]
        assert "read every dataset" in error["detail"]  # what the opt-in risks
    # Nothing was queued or recorded.
    assert client.get("/jobs").json()["total"] == 0
    assert redis.keys("rq:job:*") == []
    # Final-number checks run no code, and detect jobs none either.
    assert client.post("/jobs", json={"kind": "evaluate", "dataset_id": answers,
                                      "answer_check": "number"}).status_code == 202


def test_an_operator_may_allow_unsandboxed_code(tmp_path, redis, redis_url, llama_pair,
                                                no_isolation: str) -> None:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair,
                             allow_unsandboxed_code=True)
    with TestClient(create_app(settings)) as client, _live_worker(settings, client.app.state.redis):
        code = _dataset(client, CODE)
        response = client.post("/jobs", json={"kind": "evaluate", "dataset_id": code})
        assert response.status_code == 202, response.text


def test_code_evaluation_is_accepted_where_isolation_works(client: TestClient) -> None:
    from leaf_engine.sandbox import isolation_problem

    if isolation_problem() is not None:
        pytest.skip(f"no isolation on this machine: {isolation_problem()}")
    code = _dataset(client, CODE)
    with _live_worker(client.app.state.settings, client.app.state.redis):
        response = client.post("/jobs", json={"kind": "evaluate", "dataset_id": code})
    assert response.status_code == 202
