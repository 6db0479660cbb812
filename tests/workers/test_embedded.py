from __future__ import annotations

from pathlib import Path

from redis import Redis

from workers.embedded import EmbeddedRedis


def test_embedded_redis_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    process = server.process
    Redis.from_url(server.url).set("leaf:test", "kept")
    server.stop()
    assert process is not None and process.poll() is not None  # really stopped
    again = EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert Redis.from_url(again.url).get("leaf:test") == b"kept"
    finally:
        again.stop()
