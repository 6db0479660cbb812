"""Datasets: JSONL uploads, validated row by row before they are kept."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.deps import DatasetDep, RedisDep, SettingsDep, StoreDep, require_token
from app.errors import ApiError
from app.schemas import (
    COMMON_ERRORS,
    FORM_TEXT_BYTES,
    SETTING_KEY,
    DatasetList,
    DatasetPage,
    DatasetPublic,
    ErrorBody,
    error_responses,
    link,
)
from leaf_service import jobs as jobstate
from leaf_service.queues import new_id
from leaf_service.store import TextLimits

log = logging.getLogger(__name__)

router = APIRouter(prefix="/datasets", tags=["datasets"], dependencies=[Depends(require_token)],
                   responses=COMMON_ERRORS)

# A raw JSONL body. The schema declares text/plain, which every HTTP client (and fuzzer) can
# send; the JSONL types are the same body under its own names.
RAW_TYPES = {"text/plain", "application/x-ndjson", "application/jsonl", "application/jsonlines",
             "application/json-lines"}
CHUNK = 1 << 20
MAX_FORM_FIELDS = 16  # other form fields are ignored
MAX_NAME = 200
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": {"file": {
                "description": "the JSONL file (a file part, up to LEAF_MAX_UPLOAD_BYTES, or "
                               "a text field, up to 1 MiB)",
                SETTING_KEY: "upload_form"}}},
            # Any part type is read as JSONL; these are what clients send.
            "encoding": {"file": {"contentType": "text/plain, application/octet-stream"}}},
        "text/plain": {"schema": {"description": "the JSONL file (also taken as "
                                                 "application/x-ndjson or application/jsonl)",
                                  SETTING_KEY: "upload_body"}},
    },
}


_CREATED = {"description": "the dataset, validated and kept", "links": {
    "GetDataset": link("/datasets/{dataset_id}", "get", dataset_id="$response.body#/id"),
    "DeleteDataset": link("/datasets/{dataset_id}", "delete", dataset_id="$response.body#/id"),
    "DetectJob": link("/jobs", "post", body={"kind": "detect",
                                             "dataset_id": "$response.body#/id"}),
}}


@router.post(
    "", status_code=201, response_model=DatasetPublic, openapi_extra={"requestBody": _UPLOAD_BODY},
    responses={201: _CREATED, **error_responses(
        413, 415, 422, e413="over LEAF_MAX_UPLOAD_BYTES or LEAF_MAX_ROWS (or a text field "
                            "over 1 MiB)",
        e422="a row is invalid (not JSON, not UTF-8, a field missing or too long); `line` "
             "and `field` say where")},
)
async def upload(
    request: Request, settings: SettingsDep, store: StoreDep,
    name: Annotated[str | None, Query(max_length=MAX_NAME, description="display name")] = None,
) -> DatasetPublic:
    """Upload a JSONL dataset as a multipart file (field `file`) or as the body itself,
    typed `application/x-ndjson`, `application/jsonl` or `text/plain`. Every row is
    validated; nothing is kept on error.

    The file is UTF-8 text, one JSON object a line (blank lines are skipped), at most
    LEAF_MAX_ROWS rows and LEAF_MAX_UPLOAD_BYTES bytes. Each row has a non-blank string
    `instruction` and, for detect and distill jobs, a non-blank string `output`; `input` (a
    string joined to the instruction), `answer` (a string or number) or `tests` (Python
    asserts, for code) and `id` (a string or integer) are optional, and any other field is
    kept as it is. The instruction (with its input) and the output are at most
    LEAF_MAX_INSTRUCTION_CHARS and LEAF_MAX_OUTPUT_CHARS characters. The schema's pattern
    describes the simplest such file; every rule is the list above. A row:

        {"instruction": "Ann has 7 pens and buys 5. How many?", "output": "12.", "answer": 12}
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = settings.max_upload_bytes
    with store.upload() as tmp:
        if content_type == "multipart/form-data":
            form = await _form(request)
            file = form.get("file")
            if isinstance(file, UploadFile):
                await _copy(file, tmp, limit)
                name = name or _display_name(file.filename)
            elif isinstance(file, str):  # a text field (curl -F 'file=<rows.jsonl')
                data = file.encode("utf-8")
                if len(data) > limit:
                    raise _too_large(limit)
                tmp.write_bytes(data)
            else:
                raise ApiError(422, "file: missing; send the JSONL as the form field 'file'",
                               field="file")
        elif content_type in RAW_TYPES:
            await _stream(request, tmp, limit)
        else:
            raise ApiError(415, "send the JSONL as multipart/form-data (field 'file') or as "
                                "an application/x-ndjson (or text/plain) body",
                           field="content-type")
        limits = TextLimits(settings.max_instruction_chars, settings.max_output_chars)
        meta = await run_in_threadpool(store.add_dataset, tmp, dataset_id=new_id(),
                                       name=name or "upload.jsonl", max_rows=settings.max_rows,
                                       limits=limits)
    log.info("dataset %s: %d rows", meta["id"], meta["rows"])
    return DatasetPublic(**meta)


async def _form(request: Request) -> FormData:
    try:
        return await request.form(max_files=1, max_fields=MAX_FORM_FIELDS,
                                  max_part_size=FORM_TEXT_BYTES)
    except StarletteHTTPException as err:
        if err.status_code == 400 and "maximum size" in str(err.detail):
            raise ApiError(413, f"file: a form field larger than {FORM_TEXT_BYTES} bytes; "
                                "send the JSONL as a file (a part with a filename)",
                           field="file") from None
        raise


async def _copy(file: UploadFile, dest: Path, limit: int) -> None:
    size = 0
    with dest.open("wb") as out:
        while chunk := await file.read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            out.write(chunk)


async def _stream(request: Request, dest: Path, limit: int) -> None:
    size = 0
    with dest.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            out.write(chunk)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"file: larger than {limit} bytes (LEAF_MAX_UPLOAD_BYTES)",
                    field="file")


def _display_name(filename: str | None) -> str | None:
    if not filename:
        return None
    # Display only, never a path: keep the last component, printable characters.
    base = PurePosixPath(filename.replace("\\", "/")).name
    clean = "".join(ch for ch in base if ch.isprintable())[:MAX_NAME]
    return clean or None


@router.get("", response_model=DatasetList)
def list_datasets(store: StoreDep) -> DatasetList:
    """Every dataset, newest first."""
    metas = sorted(store.list_datasets(), key=lambda m: m["id"], reverse=True)
    return DatasetList(datasets=[DatasetPublic(**m) for m in metas])


@router.get("/{dataset_id}", response_model=DatasetPage,
            responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}})
def get_dataset(
    meta: DatasetDep, store: StoreDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DatasetPage:
    """A dataset's metadata and rows offset..offset+limit."""
    items = store.dataset_rows(meta["id"], offset=offset, limit=limit)
    return DatasetPage(**meta, offset=offset, limit=limit, items=items)


@router.delete("/{dataset_id}", status_code=204, response_class=Response,
               responses={404: {"model": ErrorBody},
                          409: {"model": ErrorBody, "description": "queued or started jobs "
                                                                   "use it; `detail` names them"}})
def delete_dataset(meta: DatasetDep, store: StoreDep, redis: RedisDep) -> Response:
    """Delete a dataset. Refused while a queued or started job uses it (a job reads its rows
    when it starts); finished, failed and canceled jobs do not hold it, and keep their
    outputs."""
    users = []
    for job_id in store.job_ids():
        record = store.job_record(job_id)
        if not record or record.get("dataset_id") != meta["id"]:
            continue
        if record.get("status") in jobstate.FINAL:
            continue
        live = jobstate.view(redis, store, job_id)
        if live is not None and live.status not in jobstate.FINAL:
            users.append(f"{job_id} ({live.status})")
    if users:
        many = len(users) > 1
        raise ApiError(409, f"dataset_id: job{'s' if many else ''} {', '.join(users)} "
                            f"{'use' if many else 'uses'} this dataset; cancel "
                            f"{'them' if many else 'it'} (DELETE /jobs/{{id}}) or wait for "
                            f"{'them' if many else 'it'} to end", field="dataset_id")
    store.delete_dataset(meta["id"])
    return Response(status_code=204)
