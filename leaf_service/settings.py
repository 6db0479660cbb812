"""Service settings: one class, read from `LEAF_*` environment variables.

The API and the workers read the same variables, so a compose file or `leaf serve` sets them
once. Invalid values fail at start-up with a message naming the variable.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from leaf_engine.errors import ConfigError

ENV_PREFIX = "LEAF_"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "leaf"


class ModelSpec(BaseModel):
    """One allow-listed model. `LEAF_MODELS` values are a path/hub id or this object."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="local directory, .gguf file or hub id")
    role: Literal["teacher", "student", "any"] = "any"  # a hint for the UI's pickers
    prompt_template: str | None = None  # plain template with '{instruction}', if no chat one
    # Build prompts with prompt_template (the default plain one if unset) even though the
    # model has a chat template.
    force_template: bool = False

    @model_validator(mode="after")
    def _check_template(self) -> ModelSpec:
        if self.prompt_template is not None and self.prompt_template.count("{instruction}") != 1:
            raise ValueError("prompt_template must contain '{instruction}' exactly once")
        return self


def _demo_models() -> dict[str, ModelSpec]:
    from leaf_engine.demo import DEMO_STUDENT, DEMO_TEACHER

    return {
        "demo-teacher": ModelSpec(path=str(DEMO_TEACHER), role="teacher"),
        "demo-student": ModelSpec(path=str(DEMO_STUDENT), role="student"),
    }


class Settings(BaseSettings):
    """Everything configurable about the service. Each field is `LEAF_<NAME>`."""

    # Empty variables count as unset, so compose can pass `${LEAF_X:-}` through.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True,
                                      env_ignore_empty=True)

    # Where Redis lives; unset means an embedded redis-server started by `leaf serve`.
    redis_url: str | None = None
    # Durable state: uploaded datasets, job outputs, the embedded Redis' dump.
    data_dir: Path = Field(default_factory=_default_data_dir)
    # The allow-list: name -> local path or hub id (or a ModelSpec object). Requests name
    # models from here and never give paths.
    models: dict[str, ModelSpec] = Field(default_factory=_demo_models)
    default_teacher: str = "demo-teacher"
    default_student: str = "demo-student"
    # When set, every endpoint but /health and the static page needs `Bearer <token>`.
    # Unset means no auth (loopback only, for `leaf serve`); set but empty is an error, not
    # a quiet "no auth".
    api_token: SecretStr | None = None
    # With a token, also serve /docs, /redoc and /openapi.json without it: they describe the
    # API and hold no data, and a browser cannot send a bearer header to open /docs.
    public_docs: bool = False
    # Serve without a token on an address other than loopback: anyone who reaches the port
    # can read every dataset and run jobs. `leaf serve` refuses that unless this is set.
    allow_no_token: bool = False
    # Run evaluated code (model output, dataset tests, answer parsing) without bubblewrap
    # where this machine has none: that code can then read the data dir, reach Redis and
    # queue work as the worker's user. Off: such jobs are refused with a 4xx.
    allow_unsandboxed_code: bool = False

    max_instruction_chars: int = Field(default=20_000, ge=1)
    max_output_chars: int = Field(default=20_000, ge=1)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_rows: int = Field(default=100_000, ge=1)

    device: str = "auto"  # where workers put models: auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto = fp32 on CPU, bf16 on a GPU that supports it
    batch_size: int = Field(default=16, ge=1)  # examples per saliency pass in workers
    worker_models: int = Field(default=4, ge=1)  # models a worker keeps loaded between jobs
    preload: bool = True  # workers load the default pair at start, so /detect is fast at once
    # A worker's data-segment cap (RLIMIT_DATA, MiB; 0 = none): a job that needs more fails
    # with an out-of-memory error and the worker goes on, instead of the host swapping.
    worker_memory_mb: int = Field(default=0, ge=0)

    cache_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)  # analysis cache entry lifetime
    detect_wait_s: float = Field(default=30.0, ge=0.0, le=600.0)  # /detect waits, then 202
    detect_timeout_s: int = Field(default=600, ge=10)  # one /detect job, model load included
    job_timeout_s: int = Field(default=7 * 24 * 3600, ge=60)  # one dataset job
    job_retries: int = Field(default=0, ge=0, le=5)  # re-runs of a job whose worker died
    result_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)  # job state kept in Redis
    heartbeat_s: float = Field(default=5.0, gt=0.0, le=60.0)  # a started job's heartbeat

    @field_validator("models", mode="before")
    @classmethod
    def _paths_to_specs(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: {"path": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.models:
            raise ValueError("LEAF_MODELS: the allow-list is empty")
        for name in self.models:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
                raise ValueError(f"LEAF_MODELS: model name {name!r} must be 1-64 letters, "
                                 "digits, '.', '_' or '-'")
        for role in ("teacher", "student"):
            name = getattr(self, f"default_{role}")
            if name not in self.models:
                raise ValueError(f"LEAF_DEFAULT_{role.upper()}: {name!r} is not in LEAF_MODELS "
                                 f"({', '.join(sorted(self.models))})")
        if not _DEVICE.match(self.device):
            raise ValueError(f"LEAF_DEVICE: {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.dtype not in {"auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"}:
            raise ValueError(f"LEAF_DTYPE: {self.dtype!r} is not auto, float32, bfloat16 or "
                             "float16")
        # Empty variables are dropped as unset before validation, so look at it directly.
        blank = os.environ.get(f"{ENV_PREFIX}API_TOKEN", "x").strip() == ""
        if (self.api_token is None and blank) or (
                self.api_token is not None and not self.api_token.get_secret_value().strip()):
            raise ValueError(f"{ENV_PREFIX}API_TOKEN: set but empty, which would leave the "
                             "API open to anyone; set a token, or unset the variable to serve "
                             "without one (loopback only)")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("LEAF_REDIS_URL must start with redis://, rediss:// or unix://")
        return self

    @property
    def token(self) -> str | None:
        return None if self.api_token is None else self.api_token.get_secret_value() or None


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise `ConfigError` naming the variable on a bad value."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as err:
        # pydantic-settings names the field when a complex value is not JSON
        found = re.search(r'field "(\w+)"', str(err))
        name = ENV_PREFIX + found.group(1).upper() if found else "a LEAF_ variable"
        raise ConfigError(f"invalid setting {name}: not valid JSON") from None
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) if first["loc"] else ""
        message = first["msg"].removeprefix("Value error, ")
        if message.startswith(ENV_PREFIX):
            raise ConfigError(f"invalid setting {message}") from None
        name = ENV_PREFIX + field.split(".")[0].upper() if field else "settings"
        where = f" ({field})" if "." in field else ""
        raise ConfigError(f"invalid setting {name}{where}: {message}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process' settings, read once."""
    return load_settings()
