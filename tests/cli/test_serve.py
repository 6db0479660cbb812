from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from leaf_cli import serve as serve_module
from tests.cli.runner import run
from tests.service import wait_for


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_leaf_serve_runs_redis_worker_and_api_and_stops_on_ctrl_c(tmp_path: Path,
                                                                   llama_pair) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAF_")}
    env.update(LEAF_DATA_DIR=str(tmp_path / "data"), LEAF_DEVICE="cpu",
               LEAF_MODELS=json.dumps({"t": str(llama_pair[0]), "s": str(llama_pair[1])}),
               LEAF_DEFAULT_TEACHER="t", LEAF_DEFAULT_STUDENT="s")
    serve = subprocess.Popen([sys.executable, "-m", "leaf_cli.main", "serve", "--port",
                              str(port)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    children: list[psutil.Process] = []
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=2).json()["workers"] == 1
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        wait_for(ready, timeout=120, every=0.5)
        children = psutil.Process(serve.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "redis-server" in names and "worker" in names
        body = {"instruction": "Ann has 7 pens. She buys 5 more pens.", "output": "12."}
        first = httpx.post(f"{base}/detect", json=body, timeout=60).json()
        second = httpx.post(f"{base}/detect", json=body, timeout=60).json()
        assert first["cached"] is False and second["cached"] is True
        assert httpx.get(f"{base}/", timeout=5).status_code == 200
    finally:
        serve.send_signal(signal.SIGINT)
        output, _ = serve.communicate(timeout=60)
    assert serve.returncode == 0, output
    assert f"LeaF is serving at {base}/" in output and "LeaF stopped." in output
    assert "Traceback" not in output
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left running: {alive}"
    assert (tmp_path / "data" / "redis" / "dump.rdb").is_file()  # Redis saved on the way out


def test_leaf_worker_needs_a_redis_url(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from leaf_cli.main import main
    from leaf_service.settings import get_settings

    monkeypatch.delenv("LEAF_REDIS_URL", raising=False)
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as exit_info:
        main(["worker"])
    get_settings.cache_clear()
    assert exit_info.value.code == 2
    assert "LEAF_REDIS_URL is not set" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("api_workers", [1, 2])
def test_leaf_serve_stops_cleanly_on_sigterm(tmp_path: Path, api_workers: int) -> None:
    """SIGTERM (docker stop, systemd, kill) stops the API processes and Redis like Ctrl-C:
    uvicorn re-raises the signal once it has stopped, which must not end `leaf serve` before
    it stops what it started."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAF_")}
    env.update(LEAF_DATA_DIR=str(tmp_path / "data"))
    serve = subprocess.Popen([sys.executable, "-m", "leaf_cli.main", "serve", "--port",
                              str(port), "--no-worker", "--api-workers", str(api_workers)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    base = f"http://127.0.0.1:{port}"
    children: list[psutil.Process] = []
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=2).json()["redis"] == "ok"
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        wait_for(ready, timeout=120, every=0.3)
        children = psutil.Process(serve.pid).children(recursive=True)
        # Every API process answers from the same Redis.
        assert all(httpx.get(f"{base}/models", timeout=5).status_code == 200 for _ in range(8))
    finally:
        serve.send_signal(signal.SIGTERM)
        output, _ = serve.communicate(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:  # do not leave them to the next test, whatever happened
            child.kill()
    assert serve.returncode == 0, output
    assert "LeaF stopped." in output and "Traceback" not in output
    assert alive == [], f"left running: {alive}"
    assert (tmp_path / "data" / "redis" / "dump.rdb").is_file()


# ---------------------------------------------------------------------------- open by accident


@pytest.fixture
def no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from leaf_service.settings import get_settings

    for name in ("LEAF_API_TOKEN", "LEAF_ALLOW_NO_TOKEN", "LEAF_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEAF_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@contextlib.contextmanager
def _taken_port(host: str) -> Iterator[int]:
    """A port already in use on `host`: `leaf serve` gets past its token check and stops at
    the port check, so nothing really starts."""
    with socket.socket() as taken:
        taken.bind((host, 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_serve_refuses_a_public_address_without_a_token(host: str, no_token: None,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    code, err = run(["serve", "--host", host, "--port", "8000"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "LEAF_API_TOKEN" in err and "LEAF_ALLOW_NO_TOKEN" in err and host in err
    assert not (Path(os.environ["LEAF_DATA_DIR"]) / "redis").exists()  # nothing started


def test_serve_without_a_token_may_listen_on_loopback(no_token: None,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    with _taken_port("127.0.0.1") as port:
        code, err = run(["serve", "--port", str(port)], capsys)
    assert code == 2 and "cannot listen on 127.0.0.1" in err  # past the token check
    for host in ("localhost", "127.0.0.2", "::1"):
        assert serve_module._is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "no-such-host.invalid"):
        assert not serve_module._is_loopback(host), host


def test_serve_opens_a_public_address_when_told_or_with_a_token(
        no_token: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    from leaf_service.settings import get_settings

    monkeypatch.setenv("LEAF_ALLOW_NO_TOKEN", "true")
    with _taken_port("0.0.0.0") as port, caplog.at_level(logging.WARNING):
        code, err = run(["serve", "--host", "0.0.0.0", "--port", str(port)], capsys)
    assert code == 2 and "cannot listen on 0.0.0.0" in err
    assert any("without a token" in r.getMessage() for r in caplog.records)
    monkeypatch.delenv("LEAF_ALLOW_NO_TOKEN")
    monkeypatch.setenv("LEAF_API_TOKEN", "s3cret")
    get_settings.cache_clear()
    with _taken_port("0.0.0.0") as port:
        code, err = run(["serve", "--host", "0.0.0.0", "--port", str(port)], capsys)
    assert code == 2 and "cannot listen on 0.0.0.0" in err


def test_an_empty_token_is_an_error_not_an_open_server(no_token: None,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    from leaf_engine.errors import ConfigError
    from leaf_service.settings import Settings, load_settings

    for value in ("", "   "):
        monkeypatch.setenv("LEAF_API_TOKEN", value)
        for argv in (["serve"], ["serve", "--host", "0.0.0.0"], ["worker"]):
            code, err = run(argv, capsys)
            assert code == 2 and "LEAF_API_TOKEN: set but empty" in err, (argv, err)
            assert len(err.strip().splitlines()) == 1
    monkeypatch.delenv("LEAF_API_TOKEN")
    with pytest.raises(ConfigError, match="LEAF_API_TOKEN: set but empty"):
        load_settings(api_token="")
    assert Settings().token is None  # unset: no token, which `leaf serve` keeps on loopback
