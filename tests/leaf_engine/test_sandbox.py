"""The sandbox runs untrusted Python in an isolated, limited child process (attacks on the
isolation itself: tests/reliability/test_sandbox_escape.py)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leaf_engine import sandbox
from leaf_engine.errors import ConfigError, SandboxUnavailable
from leaf_engine.sandbox import TAIL_CHARS, allow_unsandboxed, isolation_problem, run_python

needs_isolation = pytest.mark.skipif(isolation_problem() is not None,
                                     reason=f"no bubblewrap isolation: {isolation_problem()}")


@pytest.fixture
def no_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A PATH without bwrap, as on a machine without bubblewrap; the policy is restored."""
    monkeypatch.setenv("PATH", str(tmp_path))
    isolation_problem.cache_clear()
    try:
        yield
    finally:
        monkeypatch.undo()
        isolation_problem.cache_clear()
        allow_unsandboxed(False)


def test_a_program_runs_and_reports_its_exit() -> None:
    ok = run_python("print(sum(range(10)))\n")
    assert ok.ok and ok.completed and ok.returncode == 0 and ok.stdout.strip() == "45"
    bad = run_python("assert 1 + 1 == 3, 'arithmetic'\n")
    assert not bad.ok and not bad.completed and bad.returncode == 1
    assert "AssertionError: arithmetic" in bad.stderr


def test_time_limit_kills_the_program() -> None:
    done = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert done.timed_out and done.returncode is None and not done.ok and not done.completed


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
    # bwrap adds PWD for the working directory it sets; nothing else comes in.
    assert set(eval(names)) - {"PWD"} == set(sandbox.clean_env("/").keys())  # our own output
    assert cwd != os.getcwd()
    assert isolated == "1"


def test_endless_output_is_capped_and_tailed() -> None:
    done = run_python("while True:\n    print('x' * 1000)\n", timeout_s=20.0)
    assert not done.ok and not done.timed_out  # stopped by the file-size limit, not the clock
    assert len(done.stdout) <= TAIL_CHARS


def test_stdin_reaches_the_program() -> None:
    done = run_python("import sys\nprint(sys.stdin.read().upper())\n", stdin="hello")
    assert done.stdout.strip() == "HELLO"


def test_completed_needs_the_tests_to_return() -> None:
    program = "def add(a, b):\n    return a + b\n"
    assert run_python(program, tests="assert add(2, 3) == 5").completed
    failing = run_python(program, tests="assert add(2, 3) == 6")
    assert not failing.completed and "AssertionError" in failing.stderr
    early = run_python("import sys\nsys.exit(0)\n" + program, tests="assert add(2, 3) == 5")
    assert early.ok and not early.completed  # exit status 0, but the tests never ran


@needs_isolation
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


def test_without_bwrap_code_is_refused_by_default(no_bwrap: None) -> None:
    assert isolation_problem() == "bubblewrap (bwrap) is not installed"
    with pytest.raises(SandboxUnavailable) as refused:
        run_python("print('never runs')\n")
    assert isinstance(refused.value, ConfigError)
    message = str(refused.value)
    assert "install bubblewrap" in message and "LEAF_ALLOW_UNSANDBOXED_CODE" in message
    assert "\n" not in message


def test_without_bwrap_an_opt_in_runs_plain_and_warns_once(
    no_bwrap: None, caplog: pytest.LogCaptureFixture,
) -> None:
    allow_unsandboxed(True)
    with caplog.at_level(logging.WARNING, logger="leaf_engine.sandbox"):
        first = run_python("import os\nprint(os.getcwd())\n")
        second = run_python("def f():\n    return 1\n", tests="assert f() == 1")
        early = run_python("raise SystemExit(0)\n", tests="assert True")
    assert first.ok and "leaf-sandbox-" in first.stdout  # the old temporary directory
    assert second.completed and early.ok and not early.completed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "WITHOUT isolation" in warnings[0].getMessage()

    told: list[str] = []
    allow_unsandboxed(True, warn=told.append)  # a CLI says it its own way
    run_python("pass\n")
    run_python("pass\n")
    assert told == ["bubblewrap (bwrap) is not installed"]
