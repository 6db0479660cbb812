from __future__ import annotations

import json
import re
from pathlib import Path

import hypothesis
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from app.main import create_app
from app.schemas import FORM_TEXT_BYTES
from leaf_engine.data import iter_jsonl
from leaf_service.store import INDEX_FILE, MAX_ROW_ERRORS
from tests.service import ROWS, drain, jsonl, make_settings

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
        # What json refuses other than by a syntax error (found by the fuzzer: a 500 before).
        (b'{"instruction": "a", "output": "b", "n": ' + b"9" * 5000 + b"}\n", 1, None,
         "4300 digits"),
        (b'{"instruction": "a", "output": "b", "n": ' + b"[" * 100_000 + b"]" * 100_000
         + b"}\n", 1, None, "nested too deeply"),
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


def _reference_page(path: Path, offset: int, limit: int) -> list[dict]:
    """A page as a plain reading of the whole file gives it."""
    with path.open(encoding="utf-8") as handle:
        rows = [row for _, row in iter_jsonl(handle)]
    return rows[offset : offset + limit]


def test_pages_seek_through_the_row_index(client: TestClient, settings) -> None:
    # Line endings of every kind text mode knows, blank lines, and text of 1 to 4 UTF-8
    # bytes a character, so that a byte offset that is off by one shows.
    endings = ["\n", "\r\n", "\r", "\n\n", "\r\n  \r\n"]
    text = "".join(json.dumps({"id": n, "instruction": f"row {n} é中😀" * (n % 3 + 1),
                               "output": "ok"}, ensure_ascii=n % 2 == 0) + endings[n % 5]
                   for n in range(1000))
    meta = client.post("/datasets", content=("\n" + text).encode(), headers=NDJSON).json()
    assert meta["rows"] == 1000
    folder = settings.data_dir / "datasets" / meta["id"]
    index = folder / INDEX_FILE
    assert index.stat().st_size == 8 * 1000
    for offset, limit in [(0, 1), (0, 500), (1, 7), (499, 50), (990, 10), (995, 50),
                          (999, 1), (1000, 5), (5000, 1)]:
        page = client.get(f"/datasets/{meta['id']}?offset={offset}&limit={limit}")
        assert page.status_code == 200, page.text
        assert page.json()["items"] == _reference_page(folder / "rows.jsonl", offset, limit)
    assert [r["id"] for r in client.get(f"/datasets/{meta['id']}?offset=998").json()[
        "items"]] == [998, 999]


def test_a_dataset_stored_without_an_index_gets_one(client: TestClient, settings) -> None:
    rows = [{**ROWS[0], "id": str(n)} for n in range(120)]
    meta = client.post("/datasets", content=jsonl(rows), headers=NDJSON).json()
    index = settings.data_dir / "datasets" / meta["id"] / INDEX_FILE
    built = index.read_bytes()
    index.unlink()  # as a dataset uploaded by an earlier version is stored
    page = client.get(f"/datasets/{meta['id']}?offset=100&limit=50").json()["items"]
    assert page == rows[100:]
    assert index.read_bytes() == built
    assert client.get(f"/datasets/{meta['id']}?offset=120").json()["items"] == []


def test_a_dataset_that_queued_or_started_jobs_use_cannot_be_deleted(
        tmp_path: Path, redis: Redis, redis_url: str, llama_pair) -> None:
    models = {"tiny-teacher": {"path": str(llama_pair[0])},
              "tiny-student": {"path": str(llama_pair[1])},
              "gone": {"path": str(tmp_path / "no-such-model")}}
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, models=models)
    with TestClient(create_app(settings)) as client:
        dataset = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()
        other = client.post("/datasets", content=jsonl(ROWS), headers=NDJSON).json()

        def submit(body: dict) -> str:
            response = client.post("/jobs", json={"dataset_id": dataset["id"], **body})
            assert response.status_code == 202, response.text
            return response.json()["id"]

        # Queued, with no worker to take them: each holds the dataset.
        canceled, failing, finishing = (submit({"kind": "detect"}),
                                        submit({"kind": "distill", "teacher": "gone"}),
                                        submit({"kind": "detect", "tau": 0.3}))
        refused = client.delete(f"/datasets/{dataset['id']}")
        assert refused.status_code == 409, refused.text
        assert refused.json()["field"] == "dataset_id"
        assert all(f"{j} (queued)" in refused.json()["detail"]
                   for j in (canceled, failing, finishing))
        assert client.delete(f"/datasets/{other['id']}").status_code == 204  # unused
        assert client.delete(f"/jobs/{canceled}").json()["status"] == "canceled"
        detail = client.delete(f"/datasets/{dataset['id']}").json()["detail"]
        assert canceled not in detail and failing in detail and finishing in detail
        drain(settings, redis_url)
        assert client.get(f"/jobs/{failing}").json()["status"] == "failed"
        assert client.get(f"/jobs/{finishing}").json()["status"] == "finished"
        # Canceled, failed and finished jobs do not hold it, and keep their outputs.
        assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
        assert client.get(f"/datasets/{dataset['id']}").status_code == 404
        assert client.get(f"/jobs/{finishing}/files/detections.jsonl").status_code == 200


def test_any_upload_the_schema_allows_is_accepted(tmp_path: Path, redis: Redis, redis_url: str,
                                                  llama_pair) -> None:
    """The schema's pattern and maxLength are a promise: whatever text they allow is a valid
    dataset, under these settings' limits (rows, bytes, characters)."""
    settings = make_settings(redis_url, tmp_path / "data", llama_pair, max_rows=6,
                             max_upload_bytes=1024, max_instruction_chars=40,
                             max_output_chars=30)
    with TestClient(create_app(settings)) as client:
        body = client.get("/openapi.json").json()["paths"]["/datasets"]["post"]["requestBody"]
        schema = body["content"]["text/plain"]["schema"]
        form = body["content"]["multipart/form-data"]["schema"]["properties"]["file"]
        assert form["pattern"] == schema["pattern"] and schema["maxLength"] <= 1024 // 4
        shortest = '{"instruction": "a"}\n'
        assert (schema["maxLength"] // len(shortest)) == 6  # no more rows than LEAF_MAX_ROWS
        pattern = re.compile(schema["pattern"])
        assert not pattern.search('{"instruction": " "}\n')  # blank: refused by the API too

        @hypothesis.given(hypothesis.strategies.from_regex(pattern).filter(
            lambda text: len(text) <= schema["maxLength"]))
        @hypothesis.settings(max_examples=25, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def accepted(text: str) -> None:
            for response in (
                    client.post("/datasets", content=text.encode(),
                                headers={"content-type": "text/plain"}),
                    client.post("/datasets", files={"file": (None, text, "text/plain")})):
                assert response.status_code == 201, (text, response.text)

        accepted()
        # The arithmetic behind maxLength: at the limit, as many rows as allowed, and bytes.
        rows = shortest * 6
        assert client.post("/datasets", content=rows.encode(), headers=NDJSON).status_code == 201
        wide = '{"instruction": "' + "😀" * 39 + '"}\n'
        assert len(wide.encode()) * 2 <= 1024  # two of these fit LEAF_MAX_UPLOAD_BYTES
        assert client.post("/datasets", content=(wide * 2).encode(),
                           headers=NDJSON).status_code == 201


def test_a_text_field_upload(client: TestClient) -> None:
    text = jsonl(ROWS)
    as_field = client.post("/datasets", files={"file": (None, text.decode(), "text/plain")})
    assert as_field.status_code == 201, as_field.text
    assert as_field.json()["rows"] == 3 and as_field.json()["name"] == "upload.jsonl"
    too_big = client.post("/datasets", files={"file": (None, "x" * (FORM_TEXT_BYTES + 1))})
    assert too_big.status_code == 413 and too_big.json()["field"] == "file"
    assert "filename" in too_big.json()["detail"]
