from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

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
    from app.settings import get_settings
    from leaf_cli.main import main

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
