"""Running untrusted Python (model-written code, answer parsing) in a separate, limited process.

The child is a fresh `python -I` (isolated: no PYTHON* variables, no user site, no script
directory on the path) in an empty temporary directory, with an environment reduced to
PATH/LANG/HOME so no secret of the calling process leaks in, and with resource limits set
before the untrusted code starts: address space (memory), CPU seconds, file size, no core
dumps. A wall-clock timeout kills the child's whole process group. Where the kernel lets an
unprivileged process make namespaces (`unshare --net --map-root-user` works), the child also
gets a network namespace of its own with no interface up: no network at all, loopback
included. The untrusted code never runs in the calling process.

Not a security boundary against a determined attacker (the filesystem is the caller's, and
without namespaces so is the network): run workers that evaluate hostile code in a container.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0  # wall-clock seconds per program
DEFAULT_MEMORY_MB = 1024  # address-space limit per program
MAX_FILE_BYTES = 16 * 2**20  # largest file (stdout included) a program may write
TAIL_CHARS = 2000  # how much of stdout/stderr a result keeps

# Runs inside the child: limits first, then the program as __main__.
_BOOTSTRAP = """
import resource, sys
memory, cpu, fsize, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
sys.argv = [path, *sys.argv[5:]]
with open(path, encoding="utf-8") as handle:
    source = handle.read()
exec(compile(source, path, "exec"), {"__name__": "__main__", "__file__": path})
"""


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # None when the wall-clock timeout killed it
    timed_out: bool
    stdout: str  # the last TAIL_CHARS characters
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def clean_env(home: str) -> dict[str, str]:
    """The whole environment a child gets: nothing inherited but a safe PATH."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home,
            "TMPDIR": home}


@functools.cache
def no_network_prefix() -> tuple[str, ...]:
    """The command prefix that runs a program without network, or () where this machine does
    not allow it (probed once per process)."""
    unshare = shutil.which("unshare")
    prefix = (unshare, "--net", "--map-root-user") if unshare else ()
    if prefix:
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10,
                                   check=False)
        except (OSError, subprocess.TimeoutExpired):
            prefix = ()
        else:
            prefix = prefix if probe.returncode == 0 else ()
    if not prefix:
        log.warning("sandboxed programs keep the network: this machine does not allow "
                    "unprivileged network namespaces (unshare --net --map-root-user)")
    return prefix


def run_python(
    source: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
    stdin: str | None = None, args: tuple[str, ...] = (), keep_chars: int = TAIL_CHARS,
) -> RunResult:
    """Run `source` as a program in a limited child process and report how it ended;
    `keep_chars` is how much of the end of stdout and stderr to keep."""
    with tempfile.TemporaryDirectory(prefix="leaf-sandbox-") as tmp:
        program = Path(tmp) / "program.py"
        program.write_text(source, encoding="utf-8")
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        command = [*no_network_prefix(), sys.executable, "-I", "-c", _BOOTSTRAP,
                   str(memory_mb * 2**20), str(max(1, int(timeout_s) + 1)),
                   str(MAX_FILE_BYTES), str(program), *args]
        # Output goes to files, not pipes: a program printing without end fills a capped
        # file instead of the caller's memory.
        with out_path.open("wb") as out, err_path.open("wb") as err:
            child = subprocess.Popen(
                command, cwd=tmp, env=clean_env(tmp), stdout=out, stderr=err,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as a whole
            )
            timed_out = False
            try:
                child.communicate(stdin.encode() if stdin is not None else None,
                                  timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(child)
                child.wait()
            finally:
                if child.poll() is None:
                    _kill_group(child)
                    child.wait()
        return RunResult(
            returncode=None if timed_out else child.returncode,
            timed_out=timed_out,
            stdout=_tail(out_path, keep_chars),
            stderr=_tail(err_path, keep_chars),
        )


def _kill_group(child: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


def _tail(path: Path, chars: int) -> str:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 4 * chars))  # UTF-8: at most 4 bytes a character
        return handle.read().decode("utf-8", "replace")[-chars:]
