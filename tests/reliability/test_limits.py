"""Input limits and validation: strict bodies, malformed JSON, content types and size limits
all answered with a 4xx that names the field or the setting, never a 500, nothing stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from leaf_service.settings import Settings
from tests.service import ROWS, jsonl, make_settings

PROMPT = {"instruction": "Bob had 12 apples and gave 4 to Carl.", "output": "8."}
NDJSON = {"content-type": "application/x-ndjson"}
JSON = {"content-type": "application/json"}
LIMITS = {"max_instruction_chars": 60, "max_output_chars": 30, "max_upload_bytes": 2048,
          "max_rows": 3}


@pytest.fixture
def strict(redis_url: str, redis: Redis, tmp_path: Path, llama_pair
           ) -> Iterator[tuple[TestClient, Settings]]:
    """No worker and no waiting (a valid new prompt is answered 202), small limits, and
    server errors returned as responses so that a 500 fails the assertion, not the client."""
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, detect_wait_s=0.0,
                             **LIMITS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, settings
        # Whatever was refused left nothing behind.
        assert client.get("/datasets").json()["datasets"] == []
        assert list((settings.data_dir / "tmp").iterdir()) == []


@pytest.fixture
def dataset_id(strict) -> Iterator[str]:
    client, _ = strict
    response = client.post("/datasets", content=jsonl(ROWS[:2]), headers=NDJSON)
    assert response.status_code == 201, response.text
    yield response.json()["id"]
    client.delete(f"/datasets/{response.json()['id']}")


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert set(body) <= {"detail", "field", "line", "errors"}
    return body


# ---------------------------------------------------------------------------- strict bodies


WRONG_TYPES = [
    ("tau", False), ("tau", "0.1"), ("tau", [0.1]), ("tau", {"value": 0.1}), ("tau", "NaN"),
    ("percentile", True), ("segments", "2"), ("segments", True), ("segments", 2.5),
    ("seed", "1"), ("seed", 1.5), ("seed", 2**40), ("level", None), ("level", 1),
    ("method", ["gradient"]), ("unit", True), ("instruction", 7), ("instruction", ["a"]),
    ("instruction", None), ("output", {"text": "8."}), ("teacher", 1), ("teacher", ""),
    ("student", "../models/x"), ("colour", "blue"),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES)
def test_detect_takes_no_coerced_or_unknown_values(strict, field: str, value: Any) -> None:
    client, _ = strict
    body = _error(client.post("/detect", json={**PROMPT, field: value}), 422)
    assert body["field"] == field and field in body["detail"]


JOB_WRONG_TYPES = [
    ("detect", "truncate", "yes"), ("detect", "truncate", 1), ("detect", "export_pruned", None),
    ("detect", "batch_size", "4"), ("detect", "tau", True), ("detect", "out", "/tmp/x"),
    ("distill", "epochs", "1"), ("distill", "lr", False), ("distill", "lam", "0.5"),
    ("distill", "mode", "both"), ("distill", "resume", "/tmp"), ("distill", "student", 3),
    ("evaluate", "max_new_tokens", 1.5), ("evaluate", "answer_check", True),
    ("evaluate", "group_by", ""), ("evaluate", "model", "/etc"),
]


@pytest.mark.parametrize(("kind", "field", "value"), JOB_WRONG_TYPES)
def test_jobs_take_no_coerced_or_unknown_values(strict, dataset_id: str, kind: str, field: str,
                                                value: Any) -> None:
    client, _ = strict
    body = _error(client.post("/jobs", json={"kind": kind, "dataset_id": dataset_id,
                                             field: value}), 422)
    assert body["field"] == field and field in body["detail"]
    assert client.get("/jobs").json()["total"] == 0


def test_an_integral_float_is_an_integer(strict) -> None:
    """JSON has one number type, and JSON Schema counts 2.0 as an integer: accepted."""
    client, _ = strict
    response = client.post("/detect", json={**PROMPT, "segments": 2.0, "seed": 7.0})
    assert response.status_code == 202, response.text  # queued: no worker here


def test_missing_or_unknown_job_kind(strict) -> None:
    client, _ = strict
    missing = _error(client.post("/jobs", json={"dataset_id": "0" * 20}), 422)
    assert missing["field"] == "kind" and "detect, distill, evaluate" in missing["detail"]
    unknown = _error(client.post("/jobs", json={"kind": "train", "dataset_id": "0" * 20}), 422)
    assert unknown["field"] == "kind" and "'train'" in unknown["detail"]


# ---------------------------------------------------------------------------- malformed


MALFORMED = [
    b'{"instruction": ', b'{instruction: "a"}', b"{'instruction': 'a'}", b"null", b"[]",
    b'"text"', b"1", b"true", b'{"a": 1}{"b": 2}', b"\xff\xfe\x00{", b"\x00",
    b"[" * 100_000 + b"]" * 100_000, b'{"instruction": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"instruction": "a", "output": "b", "seed": ' + b"1" * 5000 + b"}",
    b'{"instruction": "a", "output": "b", "tau": NaN}',
    b'{"instruction": "a", "output": "b", "tau": Infinity}',
    b'{"instruction": "a", "output": "b", "tau": 1e999}',
    b'{"instruction": "\\ud800", "output": "b"}',  # a lone surrogate is no character
    b'{"instruction": "a" "output": "b"}', b"\xef\xbb\xbf\xef\xbb\xbf{}",
]


@pytest.mark.parametrize("body", MALFORMED, ids=lambda b: repr(b[:24]))
@pytest.mark.parametrize("path", ["/detect", "/jobs"])
def test_malformed_json_is_a_4xx_naming_the_body(strict, path: str, body: bytes) -> None:
    client, _ = strict
    response = client.post(path, content=body, headers=JSON)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()
    assert error["detail"] and error.get("field"), error


def test_empty_bodies(strict) -> None:
    client, _ = strict
    for path in ("/detect", "/jobs"):
        body = _error(client.post(path, headers=JSON), 422)
        assert body["field"] in {"body", "instruction", "kind"}


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "application/xml",
    "multipart/form-data; boundary=x", "application/x-ndjson"])
def test_json_routes_want_json(strict, content_type: str) -> None:
    """`curl -d` sends form encoding unless told otherwise: say what to send instead."""
    client, _ = strict
    for path in ("/detect", "/jobs"):
        body = _error(client.post(path, content=json.dumps(PROMPT),
                                  headers={"content-type": content_type}), 415)
        assert "application/json" in body["detail"] and body["field"] == "content-type"
    for content_type in ("application/json; charset=utf-8", "application/vnd.leaf+json"):
        response = client.post("/detect", content=json.dumps(PROMPT),
                               headers={"content-type": content_type})
        assert response.status_code == 202, response.text


# ---------------------------------------------------------------------------- sizes


def test_text_limits_name_the_setting(strict) -> None:
    client, settings = strict
    for field, name in (("instruction", "LEAF_MAX_INSTRUCTION_CHARS"),
                        ("output", "LEAF_MAX_OUTPUT_CHARS")):
        limit = getattr(settings, f"max_{field}_chars")
        at_limit = client.post("/detect", json={**PROMPT, field: "a" * limit})
        assert at_limit.status_code == 202, at_limit.text
        body = _error(client.post("/detect", json={**PROMPT, field: "a" * (limit + 1)}), 422)
        assert body["field"] == field and name in body["detail"]
        # Characters, not bytes: a limit of N allows N non-ASCII characters.
        wide = client.post("/detect", json={**PROMPT, field: "é" * limit})
        assert wide.status_code == 202, wide.text


def test_bodies_over_the_limit_are_413_naming_the_setting(strict) -> None:
    client, settings = strict
    huge = json.dumps({**PROMPT, "instruction": "x" * 200_000}).encode()
    declared = _error(client.post("/detect", content=huge, headers=JSON), 413)
    assert "LEAF_MAX_INSTRUCTION_CHARS" in declared["detail"]

    def chunks(data: bytes) -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(data), 8192):
            yield data[start:start + 8192]

    streamed = _error(client.post("/detect", content=chunks(huge), headers=JSON), 413)
    assert "bytes" in streamed["detail"]
    big_file = jsonl([{**ROWS[0], "output": "x" * 20}] * 40)
    assert len(big_file) > settings.max_upload_bytes
    for response in (client.post("/datasets", content=big_file, headers=NDJSON),
                     client.post("/datasets", content=chunks(big_file), headers=NDJSON),
                     client.post("/datasets", files={"file": ("big.jsonl", big_file)})):
        body = _error(response, 413)
        assert "LEAF_MAX_UPLOAD_BYTES" in body["detail"]


def test_rows_over_the_limits(strict) -> None:
    client, _ = strict
    short = [{"instruction": f"Ann has {i} pens.", "output": "8."} for i in range(4)]
    rows = _error(client.post("/datasets", content=jsonl(short), headers=NDJSON), 413)
    assert "LEAF_MAX_ROWS" in rows["detail"] and rows["field"] == "rows"
    for field, name in (("instruction", "LEAF_MAX_INSTRUCTION_CHARS"),
                        ("output", "LEAF_MAX_OUTPUT_CHARS")):
        long_row = {**short[0], field: "y" * 61}
        body = _error(client.post("/datasets", content=jsonl([short[0], long_row]),
                                  headers=NDJSON), 422)
        assert body["line"] == 2 and body["field"] == field and name in body["detail"]


@pytest.mark.parametrize(("path", "param"), [
    ("/jobs?limit=0", "limit"), ("/jobs?limit=201", "limit"), ("/jobs?limit=ten", "limit"),
    ("/jobs?offset=-1", "offset"), ("/jobs?kind=train", "kind"), ("/jobs?status=done", "status"),
    ("/examples?limit=0", "limit"), ("/examples?limit=1.5", "limit"),
    ("/datasets?name=" + "n" * 201, "name"),
])
def test_bad_query_parameters_name_the_parameter(strict, path: str, param: str) -> None:
    client, _ = strict
    method = "POST" if path.startswith("/datasets") else "GET"
    response = client.request(method, path, content=jsonl(ROWS[:1]), headers=NDJSON)
    body = _error(response, 422)
    assert body["field"] == param and param in body["detail"]


# ---------------------------------------------------------------------------- the schema


def _keywords(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _keywords(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _keywords(value, f"{path}/{index}")


def test_the_schema_states_the_bounds_the_models_enforce(strict, dataset_id: str) -> None:
    """A bound JSON Schema does not know is no bound: pydantic wrote `ge`/`le` for optional
    integers, so `batch_size: 0` was schema-valid and refused."""
    client, _ = strict
    spec = client.get("/openapi.json").json()
    assert [(p, k) for p, k, _ in _keywords(spec) if k in {"ge", "le", "gt", "lt"}] == []
    schemas = spec["components"]["schemas"]
    for model, field, low, high in (("EvaluateJobCreate", "batch_size", 1, 4096),
                                    ("DetectJobCreate", "batch_size", 1, 1024),
                                    ("DistillJobCreate", "max_length", 2, 1_048_576)):
        integer = schemas[model]["properties"][field]["anyOf"][0]
        assert (integer["type"], integer["minimum"], integer["maximum"]) == (
            "integer", low, high), (model, field)
    kinds = {"EvaluateJobCreate": "evaluate", "DetectJobCreate": "detect"}
    for model, kind in kinds.items():
        high = schemas[model]["properties"]["batch_size"]["anyOf"][0]["maximum"]
        for value, status in ((0, 422), (1, 202), (high, 202), (high + 1, 422)):
            body = {"kind": kind, "dataset_id": dataset_id, "batch_size": value}
            if kind == "evaluate":
                body["answer_check"] = "number"  # runs no code: accepted without isolation
            response = client.post("/jobs", json=body)
            assert response.status_code == status, response.text
            if status == 422:
                assert response.json()["field"] == "batch_size"
    for job in client.get("/jobs").json()["jobs"]:
        client.delete(f"/jobs/{job['id']}")
