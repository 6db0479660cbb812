"""The sandbox runs untrusted Python in a limited child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from leaf_engine.sandbox import TAIL_CHARS, no_network_prefix, run_python


def test_a_program_runs_and_reports_its_exit() -> None:
    ok = run_python("print(sum(range(10)))\n")
    assert ok.ok and ok.returncode == 0 and ok.stdout.strip() == "45"
    bad = run_python("assert 1 + 1 == 3, 'arithmetic'\n")
    assert not bad.ok and bad.returncode == 1
    assert "AssertionError: arithmetic" in bad.stderr


def test_time_limit_kills_the_program() -> None:
    done = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert done.timed_out and done.returncode is None and not done.ok


def test_memory_limit_stops_a_large_allocation() -> None:
    done = run_python("x = bytearray(1024 * 2**20)\nprint('allocated')\n", memory_mb=256)
    assert not done.ok and "MemoryError" in done.stderr and "allocated" not in done.stdout
    assert run_python("x = bytearray(16 * 2**20)\n", memory_mb=256).ok  # small is fine


def test_no_environment_secrets_reach_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAF_TEST_SECRET", "hunter2")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    done = run_python("import os, sys\nprint(sorted(os.environ))\nprint(os.getcwd())\n"
                      "print(sys.flags.isolated)\n")
    assert done.ok
    names, cwd, isolated = done.stdout.strip().splitlines()
    assert "LEAF_TEST_SECRET" not in names and "PYTHONPATH" not in names
    assert eval(names) == ["HOME", "LANG", "PATH", "TMPDIR"]  # our own child's output
    assert cwd != os.getcwd() and "leaf-sandbox-" in cwd
    assert isolated == "1"


def test_endless_output_is_capped_and_tailed() -> None:
    done = run_python("while True:\n    print('x' * 1000)\n", timeout_s=20.0)
    assert not done.ok and not done.timed_out  # stopped by the file-size limit, not the clock
    assert len(done.stdout) <= TAIL_CHARS


def test_stdin_reaches_the_program() -> None:
    done = run_python("import sys\nprint(sys.stdin.read().upper())\n", stdin="hello")
    assert done.stdout.strip() == "HELLO"


@pytest.mark.skipif(not no_network_prefix(), reason="no unprivileged network namespaces here")
def test_a_program_has_no_network_not_even_loopback() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        probe = ("import socket\n"
                 f"print(socket.socket().connect_ex(('127.0.0.1', {port})))\n")
        # The same program reaches the port from an ordinary child process...
        plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                               timeout=30, check=True)
        assert plain.stdout.strip() == "0"
        # ...and not from the sandbox.
        done = run_python(probe)
    assert done.ok and done.stdout.strip() not in ("", "0"), done
