"""Attacks on the code sandbox, performed for real: what an evaluated program can see, write,
reach, spawn and allocate, and whether it can fake a pass. Each attack is also shown to work
from an ordinary child process where that makes the test meaningful."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import leaf_engine
from leaf_engine.answers import run_code_tests
from leaf_engine.sandbox import (
    MAX_PROCESSES,
    SANDBOX_UID,
    SHM_BYTES,
    TMPFS_BYTES,
    isolation_problem,
    run_python,
)

pytestmark = pytest.mark.skipif(isolation_problem() is not None,
                                reason=f"no bubblewrap isolation here: {isolation_problem()}")

PROJECT = Path(leaf_engine.__file__).resolve().parents[1]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A "data dir" in the host's /tmp that any uid may read and write, so that only the
    sandbox's mount namespace can keep a program out of it."""
    path = Path(tempfile.mkdtemp(prefix="leaf-escape-", dir="/tmp"))
    path.chmod(0o777)
    secret = path / "datasets.jsonl"
    secret.write_text('{"instruction": "private"}\n')
    secret.chmod(0o666)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


def plain(source: str) -> str:
    """stdout of `source` run by an ordinary child process (the control)."""
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def sandboxed_json(source: str, **kwargs: object) -> dict:
    done = run_python(source, **kwargs)  # type: ignore[arg-type]
    assert done.ok, done
    return json.loads(done.stdout.strip().splitlines()[-1])


def marked(marker: str) -> list[psutil.Process]:
    """Host processes with `marker` in their command line."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        with_marker = marker in " ".join(process.info["cmdline"] or [])
        if with_marker and process.pid != os.getpid():
            found.append(process)
    return found


TRY_READ = """
import json, os, sys
def attempt(path):
    try:
        if os.path.isdir(path):
            return sorted(os.listdir(path))
        with open(path) as handle:
            return handle.read()
    except OSError as err:
        return type(err).__name__
print(json.dumps({p: attempt(p) for p in sys.argv[1:]}))
"""


def test_host_files_are_invisible(open_dir: Path) -> None:
    secret, project = open_dir / "datasets.jsonl", PROJECT / "pyproject.toml"
    paths = [str(secret), str(open_dir), str(project), str(PROJECT), "/etc/shadow", "/etc",
             "/tmp", str(Path.home())]
    control = json.loads(plain(TRY_READ.replace("sys.argv[1:]", repr(paths))))
    assert control[str(secret)].startswith('{"instruction"')  # a plain child reads it all
    assert "[project]" in control[str(project)]

    seen = sandboxed_json(TRY_READ, args=tuple(paths))
    for path in (secret, open_dir, project, "/etc/shadow"):
        assert seen[str(path)] == "FileNotFoundError", (path, seen[str(path)])
    # The project is not there; at most the virtual environment inside it is.
    assert seen[str(PROJECT)] in ("FileNotFoundError", [".venv"])
    # A private tmpfs, not the host's /tmp: empty, but for the path to the Python runtime
    # when that lies under the host's /tmp (a checkout's virtual environment, as in CI).
    runtime_dirs = {Path(p) for p in (sys.prefix, sys.base_prefix)}
    in_tmp = {r.relative_to("/tmp").parts[0] for r in runtime_dirs if r.is_relative_to("/tmp")}
    assert set(seen["/tmp"]) == in_tmp, seen["/tmp"]
    assert set(seen["/etc"]) <= {"ld.so.cache", "localtime"}
    # Of the home directory, only what leads to the Python runtime (a pyenv) may show.
    home = seen[str(Path.home())]
    runtime = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix)}
    allowed = {r.relative_to(Path.home()).parts[0] for r in runtime
               if r.is_relative_to(Path.home())}
    assert home == "FileNotFoundError" or set(home) <= allowed, home


def test_writes_outside_the_private_tmpfs_fail(open_dir: Path) -> None:
    targets = [str(open_dir / "dropped"), "/usr/leaf-dropped", "/leaf-dropped",
               "/sandbox/program.py", "/etc/leaf-dropped", "/dev/leaf-dropped",
               "/proc/leaf-dropped", "/tmp/fine"]
    source = ("import json, sys\nout = {}\nfor path in sys.argv[1:]:\n    try:\n"
              "        with open(path, 'w') as handle:\n            handle.write('x')\n"
              "        out[path] = 'written'\n    except OSError as err:\n"
              "        out[path] = type(err).__name__\nprint(json.dumps(out))\n")
    result = sandboxed_json(source, args=tuple(targets))
    assert result.pop("/tmp/fine") == "written"
    assert "written" not in result.values(), result
    assert sorted(p.name for p in open_dir.iterdir()) == ["datasets.jsonl"]
    assert not Path("/usr/leaf-dropped").exists() and not Path("/leaf-dropped").exists()


CONNECT = """
import json, socket, sys
unix_path, abstract, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def attempt(family, address):
    with socket.socket(family) as probe:
        probe.settimeout(5)
        try:
            probe.connect(address)
            return "connected"
        except OSError as err:
            return type(err).__name__
print(json.dumps({"unix": attempt(socket.AF_UNIX, unix_path),
                  "abstract": attempt(socket.AF_UNIX, "\\0" + abstract),
                  "tcp": attempt(socket.AF_INET, ("127.0.0.1", port))}))
"""


def test_no_socket_of_the_host_is_reachable(open_dir: Path) -> None:
    """A unix socket any uid may connect to (as the embedded Redis's is, to its owner), an
    abstract unix socket and a loopback TCP port: reachable from a plain child, not from a
    sandboxed one."""
    path = open_dir / "service.sock"
    abstract = f"leaf-escape-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX) as unix, socket.socket(socket.AF_UNIX) as hidden, \
            socket.create_server(("127.0.0.1", 0)) as tcp:
        unix.bind(str(path))
        path.chmod(0o777)
        unix.listen()
        hidden.bind("\0" + abstract)
        hidden.listen()
        args = (str(path), abstract, str(tcp.getsockname()[1]))
        control = json.loads(plain(CONNECT.replace("sys.argv[1]", repr(args[0]))
                                   .replace("sys.argv[2]", repr(args[1]))
                                   .replace("int(sys.argv[3])", args[2])))
        assert control == {"unix": "connected", "abstract": "connected", "tcp": "connected"}
        seen = sandboxed_json(CONNECT, args=args)
    assert seen["unix"] == "FileNotFoundError"
    assert "connected" not in seen.values(), seen
    path.unlink()


@pytest.mark.slow
def test_the_embedded_redis_socket_is_not_reachable(tmp_path: Path) -> None:
    from leaf_service.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        assert server.client().ping()
        probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
                 "    s.connect(sys.argv[1])\n    print('connected')\n"
                 "except OSError as err:\n    print(type(err).__name__)\n")
        done = run_python(probe, args=(str(server.socket),))
    finally:
        server.stop()
    assert done.ok and done.stdout.strip() == "FileNotFoundError", done


FORK_BOMB = """
import os, sys, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as err:
    print(children, err.errno)
"""


def test_a_fork_bomb_is_capped_and_nothing_outlives_it() -> None:
    marker = f"leaf-bomb-{uuid.uuid4().hex}"
    done = run_python(FORK_BOMB, args=(marker,), timeout_s=30.0)
    assert done.ok, done
    children, errno = map(int, done.stdout.split())
    assert errno == 11  # EAGAIN: RLIMIT_NPROC
    assert 0 < children < MAX_PROCESSES
    assert marked(marker) == []  # 60-second sleepers, all gone with the pid namespace


def test_a_child_left_running_is_gone_after_the_run() -> None:
    marker = f"leaf-orphan-{uuid.uuid4().hex}"
    source = ("import os, subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
              "sys.argv[1]])\n"
              "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
              "        time.sleep(60)\n    os._exit(0)\n"
              "time.sleep(0.5)\nprint('left them running')\n")
    done = run_python(source, args=(marker,))
    assert done.ok and done.completed and "left them running" in done.stdout
    assert marked(marker) == []


def test_the_wall_clock_timeout_kills_a_program_and_its_children() -> None:
    marker = f"leaf-timeout-{uuid.uuid4().hex}"
    source = ("import subprocess, sys\n"
              "for _ in range(3):\n"
              "    subprocess.Popen([sys.executable, '-c', 'while True: pass', sys.argv[1]])\n"
              "print('spinning', flush=True)\nwhile True:\n    pass\n")
    started = time.monotonic()
    done = run_python(source, args=(marker,), timeout_s=2.0)
    assert done.timed_out and not done.completed and "spinning" in done.stdout
    assert time.monotonic() - started < 10
    assert marked(marker) == []


def test_the_uid_is_not_root_inside_nor_on_the_host() -> None:
    marker = f"leaf-uid-{uuid.uuid4().hex}"
    seen: list[tuple[int, int]] = []
    result: list = []
    runner = threading.Thread(target=lambda: result.append(run_python(
        "import os, time\nprint(os.getuid(), os.geteuid(), os.getgid())\ntime.sleep(3)\n",
        args=(marker,))))
    runner.start()
    deadline = time.monotonic() + 20
    while not seen and time.monotonic() < deadline:
        for process in marked(marker):
            if "python" in process.name():
                seen.append((process.uids().real, process.uids().effective))
        time.sleep(0.05)
    runner.join()
    assert result[0].ok and result[0].stdout.split() == [str(SANDBOX_UID)] * 3
    expected = SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
    assert seen and all(uids == (expected, expected) for uids in seen), seen


MEMORY = """
import json, os, subprocess, sys
cap = int(sys.argv[1])
def grab(mb):
    try:
        return len(bytearray(mb * 2**20)) // 2**20
    except MemoryError:
        return 0
out = {}
read, write = os.pipe()
if os.fork() == 0:
    held = bytearray(int(cap * 0.8) * 2**20)
    os.write(write, json.dumps([len(held) // 2**20, grab(cap // 2)]).encode())
    os._exit(0)
os.wait()
out["child"] = json.loads(os.read(read, 100))
held = bytearray(int(cap * 0.8) * 2**20)
out["parent"] = [len(held) // 2**20, grab(cap // 2)]
def fill(directory, each):
    total, i = 0, 0
    try:
        while True:
            with open(f"{directory}/f{i}", "wb") as handle:
                handle.write(b"x" * each)
            total, i = total + each, i + 1
    except OSError as err:
        return [total, err.errno]
out["tmp"] = fill("/tmp", 8 * 2**20)
out["shm"] = fill("/dev/shm", 2**20)
try:
    os.memfd_create("more")
    out["memfd"] = "created"
except OSError as err:
    out["memfd"] = err.errno
shm = subprocess.run([sys.executable, "-c", "import ctypes; print(ctypes.CDLL(None, "
                      "use_errno=True).shmget(0, 2**20, 0o1600), ctypes.get_errno())"],
                     capture_output=True, text=True)
out["shmget"] = shm.stdout.split()
print(json.dumps(out))
"""


def test_memory_is_bounded_as_documented() -> None:
    """Per process: RLIMIT_AS (two processes each hold 80% of the cap and neither can add
    half of it more, so together they hold at most 2 x cap); files: the tmpfs sizes; the
    back doors around both (memfd, SysV shared memory) are refused."""
    cap = 256
    out = sandboxed_json(MEMORY, args=(str(cap),), memory_mb=cap, timeout_s=30.0)
    assert out["child"] == [int(cap * 0.8), 0] and out["parent"] == [int(cap * 0.8), 0]
    written, errno = out["tmp"]
    assert errno == 28 and TMPFS_BYTES - 8 * 2**20 <= written <= TMPFS_BYTES  # ENOSPC
    written, errno = out["shm"]
    assert errno == 28 and written <= SHM_BYTES
    assert out["memfd"] == 1  # EPERM from the seccomp filter
    assert out["shmget"] == ["-1", "1"]


def test_nested_namespaces_and_reading_other_processes_are_refused() -> None:
    source = """
import json, os, subprocess
out = {}
out["unshare"] = subprocess.run(["unshare", "--user", "--map-root-user", "true"],
                                capture_output=True).returncode
try:
    open("/proc/self/mem", "rb")
    out["self_mem"] = "opened"
except OSError as err:
    out["self_mem"] = type(err).__name__
reader = "import os\\ntry:\\n    open(f'/proc/{os.getppid()}/mem', 'rb')\\n    print('opened')\\n"
reader += "except OSError as err:\\n    print(type(err).__name__)\\n"
import sys
out["parent_mem"] = subprocess.run([sys.executable, "-c", reader], capture_output=True,
                                   text=True).stdout.strip()
print(json.dumps(out))
"""
    out = sandboxed_json(source)
    assert out["unshare"] != 0
    assert out["self_mem"] == "PermissionError" and out["parent_mem"] == "PermissionError"


FORGERIES = {
    "prints what looks like a sentinel": (
        "import os, sys\nfor text in ('LEAF_DONE', 'ok', 'passed', '0' * 64):\n"
        "    print(text)\nsys.stdout.flush()\nos._exit(0)\n"),
    "writes random bytes to every descriptor": (
        "import os\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, os.urandom(32))\n    except OSError:\n        pass\n"
        "os._exit(0)\n"),
    "raises the completion event itself": (
        "import os, sys\nsys.audit('leaf.done')\nos._exit(0)\n"),
    "raises it from a function the tests call": (
        "import os, sys\ndef add(a, b):\n    sys.audit('leaf.done')\n    os._exit(0)\n"),
    "spies on the hook through a nested audit event": (
        "import os, sys\nfound = []\ndef spy(event, args):\n    if event == 'sys._getframe':\n"
        "        return\n    frame = sys._getframe(1)\n    while frame is not None:\n"
        "        found.extend(v for v in frame.f_locals.values() if isinstance(v, bytes))\n"
        "        frame = frame.f_back\nsys.addaudithook(spy)\nsys.audit('leaf.done')\n"
        "open('/tmp/x', 'w').close()\nfor fd in range(3, 64):\n    for value in found:\n"
        "        try:\n            os.write(fd, value)\n        except OSError:\n"
        "            pass\nos._exit(0)\n"),
    "searches the bootstrap's frames and functions": (
        "import os, sys\nfound = []\nframe = sys._getframe()\nwhile frame is not None:\n"
        "    for value in [*frame.f_locals.values(), *frame.f_globals.values()]:\n"
        "        cells = getattr(value, '__closure__', None) or ()\n"
        "        found += [c.cell_contents for c in cells]\n        found.append(value)\n"
        "    frame = frame.f_back\nfor fd in range(3, 64):\n"
        "    for value in found:\n        if isinstance(value, bytes):\n"
        "            try:\n                os.write(fd, value)\n"
        "            except OSError:\n                pass\nos._exit(0)\n"),
    "scans objects with gc": (
        "import gc, os\ntry:\n    gc.get_objects()\nexcept RuntimeError as err:\n"
        "    print(err)\nos._exit(0)\n"),
    "reads memory with ctypes": (
        "import ctypes, os\ntry:\n    ctypes.string_at(id(os), 64)\n"
        "except RuntimeError as err:\n    print(err)\nos._exit(0)\n"),
}


@pytest.mark.parametrize("how", list(FORGERIES))
def test_a_pass_cannot_be_forged(how: str) -> None:
    done = run_python(FORGERIES[how], tests="assert add(2, 3) == 5\n")
    assert not done.completed, (how, done)
    verdict = run_code_tests(FORGERIES[how], "assert add(2, 3) == 5\n")
    assert not verdict.correct, (how, verdict)
