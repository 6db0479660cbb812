"""One error taxonomy: an error's status comes from one table and its own `user_fault`, its
field from its own `field`, whether it is raised while a request is handled or recorded by
a worker for a failed job. No test here relies on a message's wording to find a field."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError
from redis import Redis

from app.errors import install, job_failed
from leaf_engine.analysis import DetectConfig
from leaf_engine.errors import (
    ConfigError,
    ContextTooLongError,
    IncompatibleModelsError,
    InputError,
    LeafError,
    ModelLoadError,
    SandboxUnavailable,
)
from leaf_service import jobs as jobstate
from leaf_service import prompts
from leaf_service.cache import AnalysisParams
from leaf_service.jobs import JobFailure
from leaf_service.settings import Settings
from leaf_service.store import BadRows, DataStore, TooLarge
from workers.runtime import JobRun, WorkerContext


def _answer(err: Exception) -> tuple[int, dict[str, Any]]:
    """What the API answers when a handler raises `err`."""
    app = FastAPI()
    install(app)

    @app.get("/raise")
    async def raise_it() -> None:
        raise err

    response = TestClient(app).get("/raise")
    return response.status_code, response.json()


@pytest.mark.parametrize(
    ("err", "status", "field"),
    [
        # Messages that do not start with the field: the field comes from the error.
        (ConfigError("the smoothing weight is out of range", field="lam"), 422, "lam"),
        (InputError("no tokens after templating", field="output"), 422, "output"),
        (IncompatibleModelsError("the tokenizers differ", field="student"), 422, "student"),
        (ContextTooLongError(tokens=300, limit=256, model="m", truncatable=True,
                             field="output"), 422, "output"),
        (SandboxUnavailable("no bubblewrap"), 422, None),  # a ConfigError, the user's to fix
        (TooLarge("the upload is over 10 bytes", field="file"), 413, "file"),
        (ModelLoadError("model 'gone' cannot be loaded"), 503, None),
        (LeafError("cannot be done"), 422, None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_a_leaf_error_raised_in_a_request_answers_its_status_and_field(
        err: LeafError, status: int, field: str | None) -> None:
    code, body = _answer(err)
    assert code == status
    assert body.get("field") == field and body["detail"] == str(err)


def test_bad_rows_list_each_row_with_its_field_and_line() -> None:
    problems = [InputError("not JSON", line=2), InputError("empty", line=5, field="output")]
    code, body = _answer(BadRows(problems, total=2))
    assert code == 422 and body["line"] == 2
    assert body["errors"] == [{"field": "file", "message": "not JSON", "line": 2},
                              {"field": "output", "message": "empty", "line": 5}]


def test_an_engine_config_error_in_a_request_names_its_field() -> None:
    code, body = _answer(_config_error(segments=7))
    assert code == 422 and body["field"] == "segments"


def _config_error(**values: Any) -> ConfigError:
    try:
        DetectConfig(**values)
    except ConfigError as err:
        return err
    raise AssertionError(f"DetectConfig took {values}")


class _Pair(BaseModel):
    a: int | None = None
    b: int | None = None

    @model_validator(mode="after")
    def _one(self) -> _Pair:
        if self.a is not None and self.b is not None:
            raise PydanticCustomError("field_rule", "give a or b, not both", {"field": "b"})
        return self


def test_a_rule_across_fields_names_the_field_from_its_context() -> None:
    app = FastAPI()
    install(app)

    @app.post("/pair")
    async def pair(body: _Pair) -> dict[str, int]:
        return {}

    response = TestClient(app).post("/pair", json={"a": 1, "b": 2})
    assert response.status_code == 422
    assert response.json()["field"] == "b"
    assert response.json()["detail"] == "b: give a or b, not both"


@pytest.mark.parametrize(
    ("failure", "status", "detail"),
    [
        (JobFailure("the smoothing weight is out of range", "ConfigError", user_fault=True,
                    field="lam"), 422, "the smoothing weight is out of range"),
        (JobFailure("cannot load 'broken'", "ModelLoadError"), 503,
         "a model cannot be loaded: cannot load 'broken'"),
        (JobFailure("out of memory: 2 MiB", "OutOfMemory"), 503,
         "the worker ran out of memory: 2 MiB"),
        (JobFailure("the upload is over 10 bytes", "TooLarge", user_fault=True,
                    field="file"), 413, "the upload is over 10 bytes"),
        (JobFailure("JobRefused: not ours"), 502, "detection failed: JobRefused: not ours"),
    ],
)
def test_a_failed_job_answers_from_what_its_worker_recorded(failure: JobFailure, status: int,
                                                            detail: str) -> None:
    err = job_failed(failure, "detection")
    assert (err.status, err.detail, err.field) == (status, detail, failure.field)


def _prompt_job(redis: Redis, settings: Settings) -> Any:
    job_id = prompts.submit(
        redis, settings, key="leaf:analysis:errors-test", teacher="tiny-teacher",
        student="tiny-student", instruction="Ann has 7 pens.", output="7.",
        params=AnalysisParams(level="instruction", segments=2, surprisal=False),
        config=DetectConfig())
    job = jobstate.fetch(redis, job_id)
    assert job is not None
    return job


def _fail(settings: Settings, redis: Redis, job: Any, err: Exception,
          models: tuple[str, ...] = ()) -> JobFailure:
    """Run a job's body that raises `err` the way job functions do, and read back what the
    worker recorded."""
    ctx = WorkerContext.create(settings, redis)
    for name in models:  # a job resolves its models before it loads them
        ctx.model_ref(name)
    with pytest.raises(type(err)), JobRun(ctx, job, durable=False).running():
        raise err
    again = jobstate.fetch(redis, job.id)
    assert again is not None
    return jobstate.failure(again)


def test_the_worker_records_fault_and_field_where_the_api_reads_them(
        redis: Redis, settings: Settings) -> None:
    job = _prompt_job(redis, settings)
    err = ConfigError("only gradient saliency keeps surprisal", field="method")
    failure = _fail(settings, redis, job, err)
    assert failure == JobFailure("only gradient saliency keeps surprisal", "ConfigError",
                                 user_fault=True, field="method")
    answer = job_failed(failure, "detection")
    assert (answer.status, answer.field) == (422, "method")
    # Neither shows up among the job's live metrics.
    view = jobstate.public(DataStore(settings.data_dir),
                           jobstate.JobState(job.id, jobstate.fetch(redis, job.id), None))
    assert not {"user_fault", "error_field"} & set(view.metrics)


def test_a_too_long_prompt_names_the_configured_model_not_its_path(
        redis: Redis, settings: Settings) -> None:
    path = settings.models["tiny-student"].path
    err = ContextTooLongError(tokens=300, limit=256, model=path, truncatable=True,
                              field="instruction")
    failure = _fail(settings, redis, _prompt_job(redis, settings), err,
                    models=("tiny-teacher", "tiny-student"))
    assert failure.text == ("instruction: the instruction and output are 300 tokens together, "
                            "more than model 'tiny-student''s context of 256 tokens; shorten "
                            "the instruction or the output")
    assert (failure.user_fault, failure.field) == (True, "instruction")
    assert path not in failure.text and "--" not in failure.text
    # A model the worker was not asked for by name is not named by its path either.
    unnamed = _fail(settings, redis, _prompt_job(redis, settings), err)
    assert "the model's context" in unnamed.text and path not in unnamed.text


def test_a_failure_without_a_word_from_the_worker_is_not_the_users(
        redis: Redis, settings: Settings) -> None:
    job = _prompt_job(redis, settings)
    assert jobstate.failure(job) == JobFailure("failed")
    assert job_failed(jobstate.failure(job), "detection").status == 502
