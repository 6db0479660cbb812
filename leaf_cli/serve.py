"""`leaf serve`: the whole service on one machine, in one command.

Starts a Redis (embedded, unless LEAF_REDIS_URL names one), one worker process and the
API; prints the URL; Ctrl-C stops the API, then the worker, then Redis.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys

import click

log = logging.getLogger(__name__)
WORKER_STOP_TIMEOUT_S = 20.0
KEEP_ALIVE_S = 75


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="Port to listen on.")
@click.option("--no-worker", is_flag=True, help="Start no worker (run `leaf worker` elsewhere).")
@click.option("--api-workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="API processes sharing the port (uvicorn workers); more serve more cached "
                   "answers at once on a machine with cores to spare.")
def serve(host: str, port: int, no_worker: bool, api_workers: int) -> None:
    """Serve the LeaF API, a worker and (unless LEAF_REDIS_URL is set) a Redis.

    Models come from LEAF_MODELS (default: the bundled demo pair) and data goes to
    LEAF_DATA_DIR. Open the printed URL, or its /docs for the API. Ctrl-C or SIGTERM stops
    the API, then the worker, then Redis."""
    import uvicorn

    from app.main import create_app
    from app.settings import get_settings
    from workers.embedded import EmbeddedRedis

    settings = get_settings()  # fails here, naming the variable, if a setting is invalid
    _check_port(host, port)
    embedded = None
    worker = None
    # uvicorn stops on SIGTERM and then re-raises it under the handler it found, which by
    # default ends the process on the spot: Redis and the worker would be left running.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        url = settings.redis_url
        if url is None:
            embedded = EmbeddedRedis(settings.data_dir / "redis").start()
            url = embedded.url
            os.environ["LEAF_REDIS_URL"] = url
            get_settings.cache_clear()
        if not no_worker:
            env = {**os.environ, "LEAF_REDIS_URL": url}
            # One machine: leave the API a core, or cached answers queue behind torch.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
            worker = subprocess.Popen(
                [sys.executable, "-m", "leaf_cli.main", "worker", "--exit-with-parent"],
                env=env, start_new_session=True,
            )
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
        if worker is not None:
            _stop(worker)
        if embedded is not None:
            embedded.stop()
        click.echo("LeaF stopped.", err=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
