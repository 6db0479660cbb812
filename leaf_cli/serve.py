"""`leaf serve`: the whole service on one machine, in one command.

Starts a Redis (embedded, unless LEAF_REDIS_URL names one), one worker process and the
API; prints the URL; restarts the worker or Redis if either dies (with backoff); Ctrl-C
stops the API, then the worker, then Redis.

Without LEAF_API_TOKEN anyone who reaches the port can read every dataset and run jobs, so
it serves without one on loopback only, unless LEAF_ALLOW_NO_TOKEN=true says otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from leaf_cli.supervise import Supervised, Supervisor

if TYPE_CHECKING:
    from leaf_service.embedded import EmbeddedRedis

log = logging.getLogger(__name__)
WORKER_STOP_TIMEOUT_S = 20.0
KEEP_ALIVE_S = 75


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on. Other than loopback, LEAF_API_TOKEN is needed "
                   "(or LEAF_ALLOW_NO_TOKEN=true).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="Port to listen on.")
@click.option("--no-worker", is_flag=True, help="Start no worker (run `leaf worker` elsewhere).")
@click.option("--api-workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="API processes sharing the port (uvicorn workers); more serve more cached "
                   "answers at once on a machine with cores to spare.")
def serve(host: str, port: int, no_worker: bool, api_workers: int) -> None:
    """Serve the LeaF API, a worker and (unless LEAF_REDIS_URL is set) a Redis.

    Models come from LEAF_MODELS (default: the bundled demo pair) and data goes to
    LEAF_DATA_DIR. Open the printed URL, or its /docs for the API. A worker or Redis that
    dies is restarted. Ctrl-C or SIGTERM stops the API, then the worker, then Redis."""
    import uvicorn

    from app.main import create_app
    from leaf_service.embedded import EmbeddedRedis
    from leaf_service.settings import get_settings

    settings = get_settings()  # fails here, naming the variable, if a setting is invalid
    _check_open(host, has_token=settings.token is not None,
                allow_no_token=settings.allow_no_token)
    _check_port(host, port)
    embedded = None
    worker: Supervised | None = None
    supervisor = Supervisor()
    # uvicorn stops on SIGTERM and then re-raises it under the handler it found, which by
    # default ends the process on the spot: Redis and the worker would be left running.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        url = settings.redis_url
        if url is None:
            embedded = EmbeddedRedis(settings.data_dir / "redis").start()
            url = embedded.url
            # The URL carries the password: children read it from the environment, which
            # other users cannot read (a command line they could).
            os.environ["LEAF_REDIS_URL"] = url
            get_settings.cache_clear()
            if embedded.process is not None:  # None: reusing one a killed run left
                supervisor.watch(Supervised("redis-server", _redis_launcher(embedded),
                                            embedded.process))
        if not no_worker:
            env = {**os.environ, "LEAF_REDIS_URL": url}
            # One machine: leave the API a core, or cached answers queue behind torch.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
            launch = _worker_launcher(env)
            worker = supervisor.watch(Supervised("the worker", launch, launch()))
        supervisor.start()
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"LeaF is serving at http://{shown}:{port}/  (API docs: /docs; "
                   f"data: {settings.data_dir}; Ctrl-C to stop)", err=True)
        # A long keep-alive: clients that pause between requests reuse their connection
        # instead of racing the server closing it.
        # The app never looks at the client's address, so X-Forwarded-* are not parsed.
        options = {"host": host, "port": port, "log_level": "warning", "access_log": False,
                   "timeout_keep_alive": KEEP_ALIVE_S, "proxy_headers": False}
        # uvicorn re-raises the Ctrl-C it handled once it has stopped: that is our normal end.
        with contextlib.suppress(KeyboardInterrupt):
            if api_workers == 1:
                uvicorn.Server(uvicorn.Config(create_app(get_settings()), **options)).run()
            else:
                # Each process builds the app from the environment, which names our Redis.
                uvicorn.run("app.main:create_app", factory=True, workers=api_workers,
                            **options)
    finally:
        supervisor.stop()  # first, or it would restart what is being stopped
        if worker is not None and worker.process is not None:
            _stop(worker.process)
        if embedded is not None:
            embedded.stop()
        click.echo("LeaF stopped.", err=True)


def _worker_launcher(env: dict[str, str]) -> Callable[[], subprocess.Popen[bytes]]:
    def launch() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "leaf_cli.main", "worker", "--exit-with-parent"],
            env=env, start_new_session=True,
        )
    return launch


def _redis_launcher(embedded: EmbeddedRedis) -> Callable[[], subprocess.Popen[bytes] | None]:
    def launch() -> subprocess.Popen[bytes] | None:
        return embedded.start().process
    return launch


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _is_loopback(host: str) -> bool:
    """Every address `host` resolves to is a loopback one (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    addresses = {info[4][0].split("%")[0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def _check_open(host: str, *, has_token: bool, allow_no_token: bool) -> None:
    """Refuse to serve without a token where others can reach it, unless told to."""
    if has_token or _is_loopback(host):
        return
    if not allow_no_token:
        raise click.UsageError(
            f"refusing to serve on {host} without LEAF_API_TOKEN: anyone who reaches it could "
            "read every dataset and run jobs; set LEAF_API_TOKEN, or LEAF_ALLOW_NO_TOKEN=true "
            "to serve it open anyway")
    log.warning("serving on %s without a token (LEAF_ALLOW_NO_TOKEN=true): anyone who "
                "reaches it can read every dataset and run jobs", host)


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise click.UsageError(f"cannot listen on {host}:{port} ({err.strerror}); "
                                   "pass another --port") from None


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the worker stops its job at the next step and exits; SIGKILL if it hangs."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log.warning("the worker did not stop in %.0f s; killing it", WORKER_STOP_TIMEOUT_S)
        process.kill()
        process.wait()
