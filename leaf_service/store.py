"""The durable side of the service: datasets and job outputs under the data directory.

    DATA_DIR/datasets/{id}/rows.jsonl   the upload, byte for byte (line numbers stay true)
    DATA_DIR/datasets/{id}/rows.idx     where each row starts: uint64 byte offsets, little-endian
    DATA_DIR/datasets/{id}/meta.json    id, name, rows, bytes, fields, created_at
    DATA_DIR/jobs/{id}/job.json         kind, parameters, status, result, error, timings
    DATA_DIR/jobs/{id}/<outputs>        detections.jsonl, pruned.jsonl, model.tar, resume.tar, ...

Redis may be lost without losing any of this. Every path is built from a server-generated id
checked against `ID_PATTERN` and, for downloads, a plain file name listed in the job's
directory; nothing a request sends becomes a path. Torch-free.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from array import array
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from leaf_engine.data import atomic_writer, example_from_row, iter_jsonl, parse_jsonl_line
from leaf_engine.errors import InputError
from leaf_service.queues import is_id

log = logging.getLogger(__name__)

ROWS_FILE = "rows.jsonl"
INDEX_FILE = "rows.idx"
OFFSET_BYTES = 8  # one uint64 per row in INDEX_FILE
META_FILE = "meta.json"
JOB_FILE = "job.json"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_FIELDS_LISTED = 50
MAX_ROW_ERRORS = 20  # listed in an upload's error; the rest are counted


class TooLarge(InputError):
    """An upload exceeds a configured limit; the message names the limit."""


class BadRows(InputError):
    """Rows of an upload are malformed: the first is the headline, `problems` lists up to
    `MAX_ROW_ERRORS` of them so a user can fix a file in one round trip."""

    def __init__(self, problems: list[InputError], total: int):
        first = problems[0]
        more = f" (and {total - 1} more bad row{'s' if total > 2 else ''})" if total > 1 else ""
        super().__init__(first.reason + more, line=first.line, field=first.field)
        self.problems = problems
        self.total = total


def utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Scan:
    rows: int
    fields: list[str]
    with_output: int  # rows detect and distill can use
    with_reference: int  # rows with an answer (or tests) that evaluate can check
    with_tests: int  # rows whose check runs code (evaluate runs their tests)
    offsets: array  # byte offset of each row in the file ('Q', native order)


def _rows(handle: io.TextIOBase) -> Iterator[tuple[int, int, str]]:
    """(line number, byte offset, text) of every non-blank line of a file opened with
    `newline=""`: lines split where text mode splits them (LF, CRLF, CR), their endings
    kept so that the offsets add up to the file's bytes."""
    offset = 0
    for number, text in enumerate(handle, start=1):
        if text.strip():
            yield number, offset, text
        offset += len(text) if text.isascii() else len(text.encode("utf-8"))


@dataclass(frozen=True)
class TextLimits:
    """The longest instruction (with its input) and output a row may have, in characters,
    and the settings they come from."""

    instruction: int
    output: int
    names: tuple[str, str] = ("LEAF_MAX_INSTRUCTION_CHARS", "LEAF_MAX_OUTPUT_CHARS")


def scan_jsonl(path: Path, *, max_rows: int, limits: TextLimits | None = None) -> Scan:
    """Validate every row of a JSONL file as the engine will read it; `BadRows` names the line
    and field of each bad row (up to `MAX_ROW_ERRORS`).

    Evaluation sets have no `output`, so a row may lack one; every other field is checked as
    `leaf detect` checks it, and jobs refuse datasets without the fields they need. Rows
    longer than `limits` are refused as /detect refuses such a prompt.
    """
    rows = with_output = with_reference = with_tests = bad = 0
    fields: dict[str, None] = {}
    problems: list[InputError] = []
    offsets = array("Q")
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            for number, offset, text in _rows(handle):
                rows += 1
                if rows > max_rows:
                    raise TooLarge(f"more than {max_rows} rows (LEAF_MAX_ROWS)", field="rows")
                offsets.append(offset)
                try:
                    row = _check_row(text, number, limits)
                except InputError as err:
                    bad += 1
                    if len(problems) < MAX_ROW_ERRORS:
                        problems.append(err)
                    continue
                with_output += "output" in row
                with_reference += row.get("answer") is not None or "tests" in row
                with_tests += "tests" in row
                if len(fields) < MAX_FIELDS_LISTED:
                    fields.update(dict.fromkeys(row))
    except UnicodeDecodeError as err:
        line = _line_of_offset(path, err.start)
        raise InputError("not UTF-8 text", line=line) from None
    if problems:
        raise BadRows(problems, bad)
    if rows == 0:
        raise InputError("the file has no rows", field="file")
    return Scan(rows, list(fields), with_output, with_reference, with_tests, offsets)


def _check_row(text: str, number: int, limits: TextLimits | None) -> dict[str, Any]:
    try:
        row = parse_jsonl_line(text, number)
    except ValueError as err:  # json's other refusals: an integer of over 4300 digits
        raise InputError(f"invalid JSON ({str(err).split(';')[0]})", line=number) from None
    except RecursionError:
        raise InputError("invalid JSON (nested too deeply)", line=number) from None
    has_output = isinstance(row, dict) and "output" in row
    # A stand-in output lets one function check everything else.
    example = example_from_row(row if has_output or not isinstance(row, dict)
                               else {**row, "output": "-"}, line=number)
    if limits is not None:
        _check_lengths(example, limits, number)
    return row


def _check_lengths(example: Any, limits: TextLimits, line: int) -> None:
    for field, limit, name in (("instruction", limits.instruction, limits.names[0]),
                               ("output", limits.output, limits.names[1])):
        if len(getattr(example, field)) > limit:
            raise InputError(f"field '{field}' is longer than {limit} characters ({name})",
                             line=line, field=field)


def row_offsets(path: Path) -> array:
    """The byte offset of each row of a stored (valid) JSONL file."""
    with path.open(encoding="utf-8", newline="") as handle:
        return array("Q", (offset for _, offset, _ in _rows(handle)))


def _write_index(path: Path, offsets: array) -> None:
    data = array("Q", offsets)
    if sys.byteorder == "big":
        data.byteswap()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            data.tofile(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _offset(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _line_of_offset(path: Path, offset: int) -> int:
    with path.open("rb") as handle:
        return handle.read(offset).count(b"\n") + 1


class DataStore:
    """Datasets and job directories under one root."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.datasets = self.root / "datasets"
        self.jobs = self.root / "jobs"
        self.tmp = self.root / "tmp"

    def ensure(self) -> None:
        for path in (self.datasets, self.jobs, self.tmp):
            path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ datasets

    @contextmanager
    def upload(self) -> Iterator[Path]:
        """A temporary file for an incoming upload, removed unless it became a dataset."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".jsonl", dir=self.tmp)
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def add_dataset(self, upload: Path, *, dataset_id: str, name: str, max_rows: int,
                    limits: TextLimits | None = None) -> dict[str, Any]:
        """Validate an uploaded file and move it into place; return its metadata."""
        scan = scan_jsonl(upload, max_rows=max_rows, limits=limits)
        meta = {"id": dataset_id, "name": name, "rows": scan.rows,
                "with_output": scan.with_output, "with_reference": scan.with_reference,
                "with_tests": scan.with_tests, "bytes": upload.stat().st_size,
                "fields": scan.fields, "created_at": utcnow()}
        staging = Path(tempfile.mkdtemp(prefix=".dataset-", dir=self.datasets))
        try:
            shutil.move(str(upload), staging / ROWS_FILE)
            _write_index(staging / INDEX_FILE, scan.offsets)
            _write_json(staging / META_FILE, meta)
            # A rename makes the dataset appear whole or not at all.
            os.replace(staging, self.datasets / dataset_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return meta

    def dataset_meta(self, dataset_id: str) -> dict[str, Any] | None:
        folder = _own_dir(self.datasets, dataset_id)
        return None if folder is None else _read_json(folder / META_FILE)

    def dataset_rows_path(self, dataset_id: str) -> Path | None:
        folder = _own_dir(self.datasets, dataset_id)
        return None if folder is None else _own_file(folder, ROWS_FILE)

    def list_datasets(self) -> list[dict[str, Any]]:
        out = []
        for entry in self._ids(self.datasets):
            meta = self.dataset_meta(entry)
            if meta is not None:
                out.append(meta)
        return out

    def dataset_rows(self, dataset_id: str, *, offset: int, limit: int) -> list[dict[str, Any]]:
        """Rows offset..offset+limit, as uploaded. Two offsets read from the row index say
        which bytes hold them, so a page deep in a large dataset costs what the first does."""
        path = self.dataset_rows_path(dataset_id)
        if path is None or limit <= 0:
            return []
        span = self._row_span(path, offset, limit)
        if span is None:
            return []
        start, end = span
        with path.open("rb") as handle:
            handle.seek(start)
            chunk = handle.read(end - start)
        # Decoded as text mode decodes the whole file, so the rows are the ones the upload
        # was checked as (a lone CR ends a line here too).
        lines = io.StringIO(chunk.decode("utf-8"), newline=None)
        return [row for _, row in iter_jsonl(lines)][:limit]

    def _row_span(self, rows_path: Path, offset: int, limit: int) -> tuple[int, int] | None:
        """The bytes of rows offset..offset+limit (None past the end), from INDEX_FILE; a
        dataset stored before there was an index gets one now."""
        index = rows_path.with_name(INDEX_FILE)
        size = rows_path.stat().st_size
        try:
            with index.open("rb") as handle:
                count = os.fstat(handle.fileno()).st_size // OFFSET_BYTES
                if offset >= count:
                    return None
                handle.seek(offset * OFFSET_BYTES)
                start = _offset(handle.read(OFFSET_BYTES))
                end = size
                if offset + limit < count:
                    handle.seek((offset + limit) * OFFSET_BYTES)
                    end = _offset(handle.read(OFFSET_BYTES))
                return start, end
        except FileNotFoundError:
            pass
        offsets = row_offsets(rows_path)
        try:
            _write_index(index, offsets)
            log.info("indexed the %d rows of %s", len(offsets), rows_path.parent.name)
        except OSError as err:  # deleted meanwhile, or a read-only data dir: answer anyway
            log.warning("cannot write %s: %s", index, err)
        if offset >= len(offsets):
            return None
        end = offsets[offset + limit] if offset + limit < len(offsets) else size
        return offsets[offset], end

    def delete_dataset(self, dataset_id: str) -> bool:
        if _own_dir(self.datasets, dataset_id) is None:
            return False
        # Rename first so that a half-deleted dataset is never listed.
        doomed = self.datasets / f".deleting-{dataset_id}"
        os.replace(self.datasets / dataset_id, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    # ------------------------------------------------------------------ jobs

    def job_dir(self, job_id: str) -> Path:
        if not is_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs / job_id

    def create_job(self, record: dict[str, Any]) -> None:
        path = self.job_dir(record["id"])
        path.mkdir(parents=True, exist_ok=False)
        _write_json(path / JOB_FILE, record)

    def job_record(self, job_id: str) -> dict[str, Any] | None:
        folder = _own_dir(self.jobs, job_id)
        return None if folder is None else _read_json(folder / JOB_FILE)

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Merge fields into job.json; a missing job directory is left alone."""
        record = self.job_record(job_id)
        if record is None:
            return
        record.update(fields)
        _write_json(self.jobs / job_id / JOB_FILE, record)

    def job_ids(self) -> list[str]:
        """Every job with a directory, newest first."""
        return sorted(self._ids(self.jobs), reverse=True)

    def recorded_job_ids(self) -> list[str]:
        """Every job with a job.json, newest first, found without reading one."""
        return [i for i in self.job_ids() if (self.jobs / i / JOB_FILE).is_file()]

    def job_files(self, job_id: str) -> list[dict[str, Any]]:
        """The downloadable outputs of a job: plain files other than job.json."""
        folder = _own_dir(self.jobs, job_id)
        if folder is None:
            return []
        out = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if (entry.name != JOB_FILE and _FILE_NAME.match(entry.name)
                    and entry.is_file(follow_symlinks=False)):
                out.append({"name": entry.name, "bytes": entry.stat().st_size})
        return out

    def job_file(self, job_id: str, name: str) -> Path | None:
        """The path of one listed output, or None; never a path outside the job directory."""
        if not any(f["name"] == name for f in self.job_files(job_id)):
            return None
        folder = _own_dir(self.jobs, job_id)
        return None if folder is None else _own_file(folder, name)

    @staticmethod
    def _ids(parent: Path) -> list[str]:
        if not parent.is_dir():
            return []
        return [e.name for e in os.scandir(parent)
                if is_id(e.name) and e.is_dir(follow_symlinks=False)]


def _own_dir(parent: Path, ident: str) -> Path | None:
    """parent/ident if `ident` is an id and that is a real directory there. A symbolic link
    in its place (LeaF makes none) could lead anywhere, so it counts as missing."""
    if not is_id(ident):
        return None
    # An id is hex digits only, so parent/ident is a direct child of parent: not being a link
    # is enough (resolving both paths cost more than reading the job.json behind them).
    folder = parent / ident
    try:
        return None if folder.is_symlink() or not folder.is_dir() else folder
    except OSError:
        return None


def _own_file(folder: Path, name: str) -> Path | None:
    """folder/name if that is a regular file in the folder itself, not a link."""
    path = folder / name
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return path if path.resolve().parent == folder.resolve() else None
    except OSError:
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_writer(path) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1)


def _read_json(path: Path) -> dict[str, Any] | None:
    with suppress(FileNotFoundError, NotADirectoryError):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("ignoring unreadable %s", path)
    return None
