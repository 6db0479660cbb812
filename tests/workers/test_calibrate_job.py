"""The calibrate job: POST /jobs {"kind": "calibrate"} on the bundled demo pair, drained by a
real worker over a real Redis; its result, its files, and the requests refused up front."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from leaf_engine.calibrate import MAX_VALUES, SCHEMA
from leaf_engine.demo import demo_pair
from leaf_engine.demo.tasks import generate
from leaf_service.jobs import CALIBRATION_JSON, CALIBRATION_PNG
from leaf_service.settings import Settings
from tests.service import drain, jsonl, make_settings

NDJSON = {"content-type": "application/x-ndjson"}


@pytest.fixture
def demo_settings(redis_url: str, redis, tmp_path: Path) -> Settings:
    teacher, student = demo_pair()
    return make_settings(redis_url, tmp_path / "data", (Path(teacher), Path(student)))


@pytest.fixture
def demo_client(demo_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(demo_settings)) as client:
        yield client


def _dataset(client: TestClient, rows: list[dict[str, Any]]) -> str:
    answer = client.post("/datasets", content=jsonl(rows), headers=NDJSON)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


@pytest.fixture
def validation(demo_client: TestClient) -> str:
    return _dataset(demo_client, [p.to_row() for p in
                                  generate("validation", 10, seed=7, distractors=2)])


def test_a_calibrate_job_writes_the_curve(demo_client: TestClient, demo_settings: Settings,
                                          redis_url: str, validation: str) -> None:
    answer = demo_client.post("/jobs", json={
        "kind": "calibrate", "dataset_id": validation, "tau_values": [0.5, 0, 0.1],
        "min_gaps": [0, 0.5], "max_new_tokens": 24})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    drain(demo_settings, redis_url)
    job = demo_client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "finished", job["error"]
    assert job["kind"] == "calibrate"
    assert job["params"] == {"teacher": "tiny-teacher", "student": "tiny-student",
                             "tau_values": [0.5, 0, 0.1], "min_gaps": [0, 0.5],
                             "max_new_tokens": 24}
    result = job["result"]
    assert result["schema"] == SCHEMA and result["rows"] == 10
    assert [(p["tau"], p["min_gap"]) for p in result["points"]] == [
        (0.0, 0.0), (0.0, 0.5), (0.1, 0.0), (0.1, 0.5), (0.5, 0.0), (0.5, 0.5)]
    assert result["teacher_right_student_wrong"] >= 1
    assert result["recommended"] in result["points"]
    assert result["files"] == [CALIBRATION_JSON, CALIBRATION_PNG]
    assert {f["name"] for f in job["files"]} == {CALIBRATION_JSON, CALIBRATION_PNG}
    curve = demo_client.get(f"/jobs/{job_id}/files/{CALIBRATION_JSON}")
    assert curve.status_code == 200
    assert curve.json() == {k: v for k, v in result.items() if k != "files"}
    assert curve.json()["params"]["data"] == f"dataset {validation}"
    png = demo_client.get(f"/jobs/{job_id}/files/{CALIBRATION_PNG}").content
    assert png[:4] == b"\x89PNG"
    pair = [str(p) for p in demo_pair()]
    assert not [p for p in [*pair, str(demo_settings.data_dir)] if p in curve.text]
    listed = demo_client.get("/jobs", params={"kind": "calibrate"}).json()
    assert [j["id"] for j in listed["jobs"]] == [job_id]


def test_calibrate_requests_refused_up_front(demo_client: TestClient,
                                             validation: str) -> None:
    def post(**body: Any) -> tuple[int, dict[str, Any]]:
        answer = demo_client.post("/jobs", json={"kind": "calibrate",
                                                 "dataset_id": validation, **body})
        return answer.status_code, answer.json()

    status, body = post(tau_values=[0.1, 2])
    assert status == 422 and body["field"].endswith("tau_values.1")
    status, body = post(tau_values=[0.1], percentiles=[5])
    assert (status, body["field"]) == (422, "percentiles")
    status, body = post(tau_values=[0.1, 0.1])
    assert (status, body["field"]) == (422, "tau_values")
    status, body = post(tau_values=[i / (2 * MAX_VALUES) for i in range(MAX_VALUES + 1)])
    assert status == 422 and body["field"].endswith("tau_values")
    schema = demo_client.get("/openapi.json").json()["components"]["schemas"]
    taus = schema["CalibrateJobCreate"]["properties"]["tau_values"]["anyOf"][0]
    assert taus["uniqueItems"] and taus["maxItems"] == MAX_VALUES
    assert taus["items"] == {"type": "number", "minimum": 0, "maximum": 1}
    status, body = post(teacher="nope")
    assert (status, body["field"]) == (422, "teacher")
    unanswered = _dataset(demo_client, [{"instruction": "Ann has 7 pens.", "output": "7"}])
    status, body = post(dataset_id=unanswered)
    assert (status, body["field"]) == (409, "dataset_id") and "answer" in body["detail"]
    no_output = _dataset(demo_client, [{"instruction": "Ann has 7 pens.", "answer": "7"}])
    status, body = post(dataset_id=no_output)
    assert (status, body["field"]) == (409, "dataset_id") and "output" in body["detail"]
    assert demo_client.get("/jobs", params={"kind": "calibrate"}).json()["total"] == 0
