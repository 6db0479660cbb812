"""Real processes for the reliability tests: `leaf worker` and `leaf serve` subprocesses,
started with the test's settings and always stopped (children included)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from leaf_service.settings import Settings
from tests.service import wait_for


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_env(settings: Settings | None = None, **extra: Any) -> dict[str, str]:
    """The environment a `leaf` subprocess reads these settings from (no other LEAF_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAF_")}
    if settings is not None:
        env.update(
            LEAF_DATA_DIR=str(settings.data_dir), LEAF_DEVICE=settings.device,
            LEAF_MODELS=json.dumps({k: v.model_dump() for k, v in settings.models.items()}),
            LEAF_DEFAULT_TEACHER=settings.default_teacher,
            LEAF_DEFAULT_STUDENT=settings.default_student,
            LEAF_HEARTBEAT_S=str(settings.heartbeat_s), LEAF_PRELOAD=str(settings.preload),
            LEAF_BATCH_SIZE=str(settings.batch_size), LEAF_JOB_RETRIES=str(settings.job_retries),
        )
        if settings.redis_url is not None:
            env["LEAF_REDIS_URL"] = settings.redis_url
    env.update({k: str(v) for k, v in extra.items()})
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start_worker(env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "leaf_cli.main", "worker"], env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a process we started, and anything it left behind."""
    if process.poll() is not None:
        return
    children = []
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(process.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def vm_data_bytes(pid: int) -> int:
    """The process' data segment (what RLIMIT_DATA caps), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc status")


@contextlib.contextmanager
def leaf_serve(env: dict[str, str], *args: str, workers: int = 1, log: Path | None = None,
               timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`leaf serve` on a free port; yields its URL once /health counts `workers` workers.
    Stopped with Ctrl-C (SIGINT) on the way out; nothing it started may outlive it."""
    port = free_port()
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "-m", "leaf_cli.main", "serve", "--port",
                                str(port), *args], env=env, stdout=out,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    headers = ({"Authorization": f"Bearer {env['LEAF_API_TOKEN']}"}
               if env.get("LEAF_API_TOKEN") else {})
    children: list[psutil.Process] = []
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"leaf serve exited with {process.returncode}")
            try:
                return httpx.get(f"{url}/health", headers=headers,
                                 timeout=2).json()["workers"] >= workers
            except (httpx.HTTPError, ValueError, KeyError):
                return False

        wait_for(ready, timeout=timeout, every=0.3)
        children = psutil.Process(process.pid).children(recursive=True)
        yield url, process
    finally:
        stop(process, signal.SIGINT, timeout=60)
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        assert not alive, f"leaf serve left running: {alive}"
