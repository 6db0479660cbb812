from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.retry import Retry

from leaf_service.embedded import EmbeddedRedis


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_embedded_redis_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    process = server.process
    Redis.from_url(server.url).set("leaf:test", "kept")
    server.stop()
    assert process is not None and process.poll() is not None  # really stopped
    again = EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert Redis.from_url(again.url).get("leaf:test") == b"kept"
        assert again.url == server.url  # same password: clients of the old one still work
    finally:
        again.stop()


def test_saves_rules_and_append_only_file_are_in_effect(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = Redis.from_url(server.url)
        assert client.config_get("save") == {"save": "60 1"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}


def test_a_client_without_the_password_is_refused(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        with socket.socket(socket.AF_UNIX) as raw:  # what any process on the socket could do
            raw.connect(str(server.socket))
            raw.sendall(b"SET leaf:x 1\r\n")
            assert raw.recv(100).startswith(b"-NOAUTH")
        once = Retry(NoBackoff(), 0)  # redis-py would otherwise retry for seconds
        with pytest.raises(AuthenticationError):
            Redis(unix_socket_path=str(server.socket), retry=once).ping()
        with pytest.raises(AuthenticationError):
            Redis(unix_socket_path=str(server.socket), password="guess", retry=once).ping()
        assert Redis.from_url(server.url).get("leaf:x") is None
        assert server.password not in " ".join(_cmdline(server))  # not visible in `ps`


def _cmdline(server: EmbeddedRedis) -> list[str]:
    assert server.process is not None
    return Path(f"/proc/{server.process.pid}/cmdline").read_bytes().decode().split("\0")


def test_redis_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    with EmbeddedRedis(directory) as server:
        client = Redis.from_url(server.url)
        client.set("leaf:x", "1")
        client.save()
    files = {p.name: mode(p) for p in directory.iterdir() if p.is_file()}
    assert {"password", "dump.rdb", "appendonly.aof", "redis.log"} <= set(files)
    assert all(m == 0o600 for m in files.values()), files
    assert mode(directory) == 0o700
    for name in ("dump.rdb", "redis.log"):  # as an older version left them
        (directory / name).chmod(0o644)
    with EmbeddedRedis(directory):
        pass
    assert all(mode(p) == 0o600 for p in directory.iterdir() if p.is_file())


def test_a_sigkill_loses_nothing_written(tmp_path: Path) -> None:
    """SIGKILL at once after writes (no snapshot, less than the fsync second): the
    append-only file has them all."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    client = Redis.from_url(server.url)
    with client.pipeline() as pipe:
        for i in range(1000):
            pipe.set(f"leaf:k{i}", i)
        pipe.execute()
    client.set("leaf:last", "yes")
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    assert not (tmp_path / "redis" / "dump.rdb").exists()  # no snapshot to fall back on
    with EmbeddedRedis(tmp_path / "redis") as again:
        client = Redis.from_url(again.url)
        assert client.dbsize() == 1001 and client.get("leaf:last") == b"yes"


def test_a_snapshot_only_data_dir_is_adopted(tmp_path: Path) -> None:
    """A data dir from before the append-only file: its snapshot is loaded, not shadowed
    by a new empty append-only file."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        Redis.from_url(server.url).set("leaf:old", "kept")
    (tmp_path / "redis" / "appendonly.aof").unlink()
    with EmbeddedRedis(tmp_path / "redis") as server:
        client = Redis.from_url(server.url)
        assert client.get("leaf:old") == b"kept"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0
    with EmbeddedRedis(tmp_path / "redis") as server:  # now from the append-only file
        assert Redis.from_url(server.url).get("leaf:old") == b"kept"
