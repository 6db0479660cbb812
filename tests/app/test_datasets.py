from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from tests.service import ROWS, jsonl, make_settings
from workers.store import MAX_ROW_ERRORS

NDJSON = {"content-type": "application/x-ndjson"}


def test_upload_list_page_and_delete(client: TestClient, settings) -> None:
    multipart = client.post("/datasets", files={"file": ("../../evil/rows.jsonl", jsonl(ROWS))})
    assert multipart.status_code == 201, multipart.text
    meta = multipart.json()
    assert meta["rows"] == 3 and meta["with_output"] == 3 and meta["with_reference"] == 2
    assert meta["name"] == "rows.jsonl"  # a display name, stripped of any path
    raw = client.post("/datasets?name=second", content=jsonl(ROWS[:2]), headers=NDJSON)
    assert raw.status_code == 201 and raw.json()["rows"] == 2
    listed = client.get("/datasets").json()["datasets"]
    assert [d["id"] for d in listed] == [raw.json()["id"], meta["id"]]  # newest first
    page = client.get(f"/datasets/{meta['id']}?offset=1&limit=1").json()
    assert page["items"] == [ROWS[1]] and page["rows"] == 3
    stored = settings.data_dir / "datasets" / meta["id"] / "rows.jsonl"
    assert stored.read_bytes() == jsonl(ROWS)  # kept byte for byte
    assert client.delete(f"/datasets/{meta['id']}").status_code == 204
    assert client.get(f"/datasets/{meta['id']}").status_code == 404
    assert client.delete(f"/datasets/{meta['id']}").status_code == 404
    assert not stored.exists()


def test_evaluation_sets_without_outputs_are_accepted(client: TestClient) -> None:
    rows = [{"instruction": "What is 2 + 3?", "answer": 5}, {"instruction": "And 4 + 4?",
                                                              "answer": "8"}]
    response = client.post("/datasets", content=jsonl(rows), headers=NDJSON)
    assert response.status_code == 201, response.text
    assert response.json()["with_output"] == 0 and response.json()["with_reference"] == 2


@pytest.mark.parametrize(
    ("content", "line", "field", "message"),
    [
        (b'{"instruction": "a", "output": "b"}\nnot json\n', 2, None, "invalid JSON"),
        (b'{"instruction": "a", "output": "b"}\n\n{"output": "b"}\n', 3, "instruction",
         "missing field 'instruction'"),
        (b'{"instruction": "", "output": "b"}\n', 1, "instruction", "is empty"),
        (b'{"instruction": "a", "output": 3}\n', 1, "output", "must be a string"),
        (b'["instruction"]\n', 1, None, "expected a JSON object"),
        (b'{"instruction": "a", "output": "b", "id": [1]}\n', 1, "id", "'id'"),
        (b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff\xfe"}\n', 2, None,
         "UTF-8"),
    ],
)
def test_bad_rows_are_422_naming_the_line(client: TestClient, settings, content: bytes,
                                          line: int, field: str | None, message: str) -> None:
    response = client.post("/datasets", content=content, headers=NDJSON)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["line"] == line and f"line {line}" in body["detail"]
    assert message in body["detail"]
    if field is not None:
        assert body["field"] == field
    assert client.get("/datasets").json()["datasets"] == []  # nothing kept
    assert list((settings.data_dir / "tmp").iterdir()) == []  # nor left behind


def test_every_bad_row_is_listed_up_to_a_limit(client: TestClient) -> None:
    good = b'{"instruction": "a", "output": "b"}\n'
    content = good + b"not json\n" + good + b'{"output": "b"}\n' + b'{"instruction": 3}\n' * 30
    body = client.post("/datasets", content=content, headers=NDJSON).json()
    assert body["line"] == 2 and "and 31 more bad rows" in body["detail"]
    listed = body["errors"]
    assert len(listed) == MAX_ROW_ERRORS
    assert [e["line"] for e in listed[:3]] == [2, 4, 5]
    assert "invalid JSON" in listed[0]["message"] and listed[0]["field"] == "file"
    assert listed[1]["field"] == "instruction" and "missing" in listed[1]["message"]
    assert not listed[1]["message"].startswith("line")  # the line is its own field
    assert client.get("/datasets").json()["datasets"] == []


def test_upload_errors(client: TestClient) -> None:
    empty = client.post("/datasets", content=b"\n\n", headers=NDJSON)
    assert empty.status_code == 422 and "no rows" in empty.json()["detail"]
    wrong_type = client.post("/datasets", json=ROWS)
    assert wrong_type.status_code == 415 and "multipart" in wrong_type.json()["detail"]
    no_file = client.post("/datasets", files={"data": ("x.jsonl", jsonl(ROWS))})
    assert no_file.status_code == 422 and no_file.json()["field"] == "file"
    for path in ("/datasets/nope", "/datasets/0123456789abcdef0123", "/datasets/..%2f..%2fetc"):
        assert client.get(path).status_code == 404, path
    assert client.get("/datasets/0123456789abcdef0123?limit=0").status_code in (404, 422)


def test_size_and_row_limits_are_413(tmp_path: Path, redis: Redis, redis_url: str,
                                     llama_pair) -> None:
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, max_upload_bytes=2048,
                             max_rows=2)
    with TestClient(create_app(settings)) as client:
        rows = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON)
        assert rows.status_code == 413 and "LEAF_MAX_ROWS" in rows.json()["detail"]
        big = jsonl([{**ROWS[0], "output": "x" * 3000}])
        for response in (client.post("/datasets", content=big, headers=NDJSON),
                         client.post("/datasets", files={"file": ("big.jsonl", big)})):
            assert response.status_code == 413, response.text
        assert client.get("/datasets").json()["datasets"] == []
