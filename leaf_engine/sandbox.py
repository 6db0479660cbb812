"""Running untrusted Python (model-written code, answer parsing) in an isolated, limited process.

Every program runs under bubblewrap (`bwrap`), an existing unprivileged sandboxing tool:

- Namespaces: user, mount, pid, network, ipc, uts and cgroup namespaces of its own
  (`--unshare-all`). No network at all, loopback included; its own pid namespace, so when
  the program's first process ends (or bwrap is killed: `--die-with-parent`), the kernel
  kills every process it started. `--new-session` keeps it off our terminal, and
  `--disable-userns` forbids nested user namespaces (with one, a program could mount an
  unlimited tmpfs of its own).
- Filesystem: an empty, read-only root with read-only binds of /usr (and the /bin, /lib
  links), /etc/ld.so.cache, and the Python runtime only: the interpreter's prefix, base
  prefix and site-packages (a virtual environment is bound whole, nothing else of the
  project is). No home, data dir, Redis socket, /etc/shadow or host /tmp is visible. The
  only writable places are a private tmpfs at /tmp (the working directory, TMPFS_BYTES)
  and a small /dev/shm (SHM_BYTES) for multiprocessing's semaphores.
- Identity: uid and gid 65534 (nobody) inside. When the caller is root, bwrap itself is
  started as host uid 65534 (`setpriv`), because the kernel does not enforce RLIMIT_NPROC
  for host root; runtime directories that uid cannot reach (a pyenv under /root) are
  bind-mounted where it can, in a private mount namespace that only the launcher sees.
- Limits, set inside before the program starts: address space per process (`memory_mb`),
  CPU seconds, file size (MAX_FILE_BYTES, stdout included), no core dumps, open files
  (MAX_OPEN_FILES), and processes (MAX_PROCESSES, threads included; the kernel counts
  them per sandbox because each sandbox is its own user namespace). A seccomp filter
  refuses the system calls that would allocate memory outside these limits (SysV shared
  memory and message queues, memfd) or read another process (ptrace, process_vm_readv).
- The wall-clock timeout kills bwrap's init (pid 1 of the namespace): the kernel kills
  every other process in it before init is gone, and bwrap exits after it.

Total memory of one program is bounded by MAX_PROCESSES x `memory_mb` of address space
plus TMPFS_BYTES + SHM_BYTES of files (with the defaults 16 x 1 GiB + 72 MiB), plus kernel
buffers (pipes, sockets) bounded by MAX_OPEN_FILES per process. RLIMIT_AS is per process;
only a memory cgroup would bound the sum tighter, and cgroups are not delegated to the
unprivileged users workers run as.

The environment is reduced to a few fixed variables (nothing of the caller's leaks in),
and the interpreter runs isolated (`python -I`: no PYTHON* variables, no user site).

Completion: the trusted bootstrap that runs the program writes a per-run random nonce to a
descriptor the caller reads, only after the program (and `tests`, when given) returned
normally; `RunResult.completed` says whether it arrived. Any exit before that (sys.exit,
SystemExit, os._exit, a signal, an exception) leaves it unwritten. The nonce never appears
in argv, the environment, a file or the program's globals: it comes through a pipe that
is closed before the program starts and lives only in the closure of an audit hook, which
writes it for a "leaf.done" event raised by the bootstrap's own frame at an instruction
past those where it ran the program and the tests (so not when the program raises the
event itself); the three calls share one line, so a trace function cannot jump over the
tests. The process is non-dumpable (no /proc/self/mem, no ptrace from its children) and
another audit hook refuses ctypes, gc object enumeration and sys._current_frames. The
remaining limit: the program shares the bootstrap's interpreter, so code written against
this checker (a signal handler that fires while the hook runs and reads its frame, or an
interpreter memory-safety bug) could still recover the nonce; such code could as well
return objects that compare equal to anything. The sentinel defends against programs that
end early, not against adversarial subversion of the tests.

Where bubblewrap is unavailable (`isolation_problem()` says why), `run_python` refuses with
`SandboxUnavailable` unless the process-wide policy `allow_unsandboxed(True)` allows the
old behaviour: a plain child process with the same limits but the caller's filesystem and
network.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import secrets
import shutil
import signal
import site
import stat
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from leaf_engine.errors import SandboxUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0  # wall-clock seconds per program
DEFAULT_MEMORY_MB = 1024  # address-space limit per process
MAX_FILE_BYTES = 16 * 2**20  # largest file (stdout included) a program may write
TMPFS_BYTES = 64 * 2**20  # the private /tmp, the program's working directory
SHM_BYTES = 8 * 2**20  # /dev/shm, for multiprocessing's semaphores
MAX_PROCESSES = 16  # tasks (threads included) per sandbox, bwrap's init and ours included
MAX_OPEN_FILES = 64  # descriptors per process (also bounds pipe and socket buffers)
TAIL_CHARS = 2000  # how much of stdout/stderr a result keeps
SANDBOX_UID = 65534  # nobody: the uid inside, and bwrap's host uid when the caller is root
NONCE_BYTES = 32
KILL_WAIT_S = 10.0  # after killing a sandbox's init, how long its namespace may take to go

_SANDBOX_DIR = "/sandbox"  # where the program text is bound, read-only
_SANDBOX_HOME = "/tmp"  # the private tmpfs
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
# Binds runtime directories that host uid 65534 cannot reach onto mount points it can, in a
# private mount namespace, then runs the rest of the command line.
_MOUNT_SCRIPT = ('while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; '
                 'shift; exec "$@"')

# Runs inside the child, trusted: limits, the completion hook, then the program as __main__
# (and the tests in its namespace). Arguments: memory cpu fsize nproc nofile nonce_fd
# channel_fd program tests [program args...]; nproc 0 leaves RLIMIT_NPROC alone.
_BOOTSTRAP = r'''
import os, resource, sys, types

BLOCKED = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents",
                     "sys._current_frames"})

def _arm(nonce, channel, home):
    write = os.write
    seen = -1  # the furthest instruction of `home` seen during any earlier audit event

    def guard(event, args):
        if event in BLOCKED or event.startswith("ctypes."):
            raise RuntimeError(f"{event} is not available to sandboxed code")

    def done(event, args):
        # Writes the nonce only for "leaf.done" raised by `home` past every instruction at
        # which it ran the program or the tests (each raised an "exec" event there first).
        # Never raises and calls nothing audited: a traceback or a nested event would hand
        # this frame, and the nonce, to the program's own code.
        nonlocal seen
        at = home.f_lasti
        if event != "leaf.done":
            seen = max(seen, at)
        elif at > seen:
            seen = at
            try:
                write(channel, nonce)
            except BaseException:
                pass

    sys.addaudithook(guard)
    sys.addaudithook(done)

def _main():
    memory, cpu, fsize, nproc, nofile, nonce_fd, channel = map(int, sys.argv[1:8])
    program_path, tests_path, args = sys.argv[8], sys.argv[9], sys.argv[10:]
    nonce = os.read(nonce_fd, 64)
    os.close(nonce_fd)
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/pid/mem, ptrace
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    if nproc:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    with open(program_path, encoding="utf-8") as handle:
        program = compile(handle.read(), program_path, "exec")
    tests = None
    if tests_path:
        with open(tests_path, encoding="utf-8") as handle:
            tests = compile(handle.read(), tests_path, "exec")
    main = types.ModuleType("__main__")
    main.__file__ = program_path
    sys.modules["__main__"] = main
    sys.argv = [program_path, *args]
    audit, ns = sys.audit, main.__dict__
    _arm(nonce, channel, sys._getframe())
    del nonce
    # One line on purpose: a trace function gets no line event between these calls, so it
    # cannot jump over the tests to the audit call.
    exec(program, ns); tests is None or exec(tests, ns); audit("leaf.done")

_main()
'''

# System calls the seccomp filter refuses (EPERM), per machine: SysV shared memory and
# message queues and memfd (memory outside RLIMIT_AS and the tmpfs sizes), reading other
# processes (ptrace, process_vm_*, pidfd_getfd), and rarely needed attack surface
# (io_uring, bpf, perf_event_open, userfaultfd, key management).
_DENIED_SYSCALLS = {
    "x86_64": (0xC000003E, {
        "shmget": 29, "msgget": 68, "ptrace": 101, "add_key": 248, "request_key": 249,
        "keyctl": 250, "perf_event_open": 298, "process_vm_readv": 310,
        "process_vm_writev": 311, "memfd_create": 319, "bpf": 321, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "pidfd_getfd": 438, "memfd_secret": 447,
    }),
    "aarch64": (0xC00000B7, {
        "msgget": 186, "shmget": 194, "add_key": 217, "request_key": 218, "keyctl": 219,
        "ptrace": 117, "perf_event_open": 241, "process_vm_readv": 270,
        "process_vm_writev": 271, "memfd_create": 279, "bpf": 280, "userfaultfd": 282,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "pidfd_getfd": 438, "memfd_secret": 447,
    }),
}

_unsandboxed_lock = threading.Lock()
_unsandboxed_allowed = False
_unsandboxed_warn: Callable[[str], None] | None = None  # None: log a warning
_unsandboxed_warned = False


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # None when the wall-clock timeout killed it
    timed_out: bool
    stdout: str  # the last TAIL_CHARS characters
    stderr: str
    completed: bool = False  # the program (and its tests) returned normally: see the module

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def clean_env(home: str) -> dict[str, str]:
    """The whole environment a child gets: nothing inherited but a safe PATH. One BLAS/OpenMP
    thread, since threads count against MAX_PROCESSES."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home,
            "TMPDIR": home, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def allow_unsandboxed(allowed: bool, *, warn: Callable[[str], None] | None = None) -> None:
    """The process-wide policy where `isolation_problem()` is not None: False (the default)
    makes `run_python` raise SandboxUnavailable; True runs programs as plain limited child
    processes, and the first such run warns once: `warn(problem)`, or a logged warning."""
    global _unsandboxed_allowed, _unsandboxed_warn, _unsandboxed_warned
    with _unsandboxed_lock:
        _unsandboxed_allowed, _unsandboxed_warn = bool(allowed), warn
        _unsandboxed_warned = False


@functools.cache
def isolation_problem() -> str | None:
    """None where bubblewrap isolation works on this machine; else one line saying why not.
    Probed once per process (a real sandboxed run); `isolation_problem.cache_clear()` after
    changing PATH."""
    if not sys.platform.startswith("linux"):
        return "bubblewrap isolation needs Linux"
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        probe = _run(bwrap, "pass\n", tests=None, timeout_s=60.0, memory_mb=DEFAULT_MEMORY_MB,
                     stdin=None, args=(), keep_chars=TAIL_CHARS)
    except (OSError, subprocess.SubprocessError) as err:
        return f"bubblewrap cannot start here: {err}"
    if not probe.completed:
        lines = probe.stderr.strip().splitlines()
        why = lines[-1] if lines else f"exit code {probe.returncode}"
        return f"bubblewrap cannot make a sandbox here: {why}"
    return None


def run_python(
    source: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
    stdin: str | None = None, args: tuple[str, ...] = (), keep_chars: int = TAIL_CHARS,
    tests: str | None = None,
) -> RunResult:
    """Run `source` as a program in the sandbox and report how it ended; `tests` (if given)
    run after it in its namespace, and `completed` says whether both returned normally.
    `keep_chars` is how much of the end of stdout and stderr to keep.

    Raises SandboxUnavailable where isolation is missing and the policy does not allow
    running without it."""
    problem = isolation_problem()
    if problem is None:
        bwrap = shutil.which("bwrap")
        if bwrap is None:  # PATH changed since the probe: never fall back silently
            raise SandboxUnavailable("bubblewrap (bwrap) is no longer on PATH")
        return _run(bwrap, source, tests=tests, timeout_s=timeout_s, memory_mb=memory_mb,
                    stdin=stdin, args=args, keep_chars=keep_chars)
    global _unsandboxed_warned
    with _unsandboxed_lock:
        if not _unsandboxed_allowed:
            raise SandboxUnavailable(problem)
        first, _unsandboxed_warned = not _unsandboxed_warned, True
    if first:
        (_unsandboxed_warn or _log_unsandboxed)(problem)
    return _run(None, source, tests=tests, timeout_s=timeout_s, memory_mb=memory_mb,
                stdin=stdin, args=args, keep_chars=keep_chars)


def _log_unsandboxed(problem: str) -> None:
    log.warning("running model-written code WITHOUT isolation (%s): it can read and write "
                "whatever this user can and reach the network; install bubblewrap", problem)


def _run(
    bwrap: str | None, source: str, *, tests: str | None, timeout_s: float, memory_mb: int,
    stdin: str | None, args: tuple[str, ...], keep_chars: int,
) -> RunResult:
    nonce = secrets.token_bytes(NONCE_BYTES)
    with tempfile.TemporaryDirectory(prefix="leaf-sandbox-") as tmp, contextlib.ExitStack() as fds:
        work = Path(tmp)
        program = work / "program.py"
        program.write_text(source, encoding="utf-8")
        tests_file = None
        if tests is not None:
            tests_file = work / "tests.py"
            tests_file.write_text(tests, encoding="utf-8")
        out_path, err_path, channel_path = work / "stdout", work / "stderr", work / "channel"
        nonce_fd = _pipe_with(fds, nonce)
        channel = _open(fds, channel_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        limits = [str(memory_mb * 2**20), str(max(1, int(timeout_s) + 1)), str(MAX_FILE_BYTES),
                  str(MAX_PROCESSES if bwrap else 0), str(MAX_OPEN_FILES), str(nonce_fd),
                  str(channel)]
        passed = [nonce_fd, channel]
        if bwrap is None:
            # RLIMIT_NPROC outside a user namespace would count all of this user's processes.
            command = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, *limits, str(program),
                       str(tests_file or ""), *args]
            cwd, env = tmp, clean_env(tmp)
        else:
            inner = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP, *limits,
                     f"{_SANDBOX_DIR}/program.py",
                     f"{_SANDBOX_DIR}/tests.py" if tests_file else "", *args]
            command, more = _sandbox_command(bwrap, work, fds, program, tests_file, inner)
            passed += more
            cwd, env = tmp, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        # Output goes to files, not pipes: a program printing without end fills a capped
        # file instead of the caller's memory.
        with out_path.open("wb") as out, err_path.open("wb") as err:
            child = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out, stderr=err, pass_fds=passed,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as a whole
            )
            fds.close()  # the child has its copies; ours would keep the nonce pipe open
            timed_out = False
            try:
                child.communicate(stdin.encode() if stdin is not None else None,
                                  timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if child.poll() is None:
                    _kill(child, work / "info")
        with channel_path.open("rb") as handle:
            completed = handle.read(NONCE_BYTES + 1) == nonce
        return RunResult(
            returncode=None if timed_out else child.returncode,
            timed_out=timed_out,
            stdout=_tail(out_path, keep_chars),
            stderr=_tail(err_path, keep_chars),
            completed=completed and not timed_out,
        )


def _sandbox_command(
    bwrap: str, work: Path, fds: contextlib.ExitStack, program: Path, tests: Path | None,
    inner: list[str],
) -> tuple[list[str], list[int]]:
    """The launcher and bwrap command line that runs `inner`, and the descriptors it needs."""
    info = _open(fds, work / "info", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    passed = [info]
    command = [bwrap, "--info-fd", str(info), "--unshare-all", "--unshare-user",
               "--disable-userns", "--die-with-parent", "--new-session", "--uid",
               str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox",
               "--ro-bind", "/usr", "/usr"]
    for link in _SYSTEM_LINKS:
        if os.path.islink(link):
            command += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            command += ["--ro-bind", link, link]
    for path in _SYSTEM_FILES:
        command += ["--ro-bind-try", path, path]
    # The private /tmp first: a runtime under the host's /tmp (a virtual environment in a
    # checkout there) is then bound on top of it rather than hidden by it.
    command += ["--size", str(TMPFS_BYTES), "--tmpfs", _SANDBOX_HOME]
    root = os.geteuid() == 0
    mounts: list[str] = []
    for i, path in enumerate(_runtime_dirs()):
        source = path
        if root and not _reachable_by_others(path):
            source = str(work / f"runtime{i}")
            os.mkdir(source)
            mounts += [path, source]
        command += ["--ro-bind", source, path]
    for path, dest in ((program, "program.py"), (tests, "tests.py")):
        if path is not None:
            fd = _open(fds, path, os.O_RDONLY)
            passed.append(fd)
            command += ["--ro-bind-data", str(fd), f"{_SANDBOX_DIR}/{dest}"]
    command += ["--proc", "/proc", "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs",
                "/dev/shm", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir",
                _SANDBOX_HOME, "--clearenv"]
    for name, value in clean_env(_SANDBOX_HOME).items():
        command += ["--setenv", name, value]
    bpf = _seccomp_filter()
    if bpf is not None:
        fd = _pipe_with(fds, bpf)
        passed.append(fd)
        command += ["--seccomp", str(fd)]
    command += inner
    if root:
        # Host root is exempt from RLIMIT_NPROC; host uid 65534 is not.
        os.chmod(work, 0o711)  # mount points inside must be reachable by that uid
        command = ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                   "--clear-groups", "--", *command]
        if mounts:
            command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                       _MOUNT_SCRIPT, "sh", *mounts, "--", *command]
    return command, passed


@functools.cache
def _runtime_dirs() -> tuple[str, ...]:
    """The directories the interpreter needs, outside /usr: its prefixes (a virtual
    environment whole) and site-packages, as given and as resolved."""
    wanted: set[str] = set()
    for path in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                 os.path.dirname(os.path.realpath(sys.executable)), *site.getsitepackages()):
        if os.path.isdir(path):
            wanted.update({os.path.abspath(path), os.path.realpath(path)})
    kept: list[str] = []
    for path in sorted(wanted, key=len):
        if path == "/" or _under(path, "/usr") or any(_under(path, k) for k in kept):
            continue
        kept.append(path)
    return tuple(kept)


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _reachable_by_others(path: str) -> bool:
    """Whether a uid outside the owner and group can list `path` (mode bits; no ACLs)."""
    real = Path(path).resolve()
    if not real.stat().st_mode & stat.S_IROTH:
        return False
    return all(part.stat().st_mode & stat.S_IXOTH for part in (real, *real.parents))


@functools.cache
def _seccomp_filter() -> bytes | None:
    """A classic BPF program (what `bwrap --seccomp` reads) refusing _DENIED_SYSCALLS, or
    None on a machine without a table (the sandbox then runs without it)."""
    entry = _DENIED_SYSCALLS.get(platform.machine())
    if entry is None:
        log.warning("no seccomp table for %s: sandboxed programs may use SysV shared memory "
                    "and memfd beyond their memory limit", platform.machine())
        return None
    arch, numbers = entry
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    nrs = sorted(numbers.values())
    # Layout: 0 load arch; 1 foreign arch -> deny; 2 load nr; 3 x32 ABI -> deny;
    # 4.. one test per number -> deny; then allow; then deny.
    deny_at = 4 + len(nrs) + 1

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    program = [op(ld_abs, 4), op(jeq, arch, 0, deny_at - 2), op(ld_abs, 0),
               op(jge, 0x40000000, deny_at - 4, 0)]
    program += [op(jeq, nr, deny_at - (5 + i), 0) for i, nr in enumerate(nrs)]
    program += [op(ret, allow), op(ret, deny)]
    return b"".join(program)


def _pipe_with(fds: contextlib.ExitStack, data: bytes) -> int:
    """A pipe's read end with `data` already in it (small: it must fit the pipe buffer)."""
    read, write = os.pipe()
    fds.callback(os.close, read)
    try:
        os.write(write, data)
    finally:
        os.close(write)
    return read


def _open(fds: contextlib.ExitStack, path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    fds.callback(os.close, fd)
    return fd


def _kill(child: subprocess.Popen, info: Path) -> None:
    """Kill a run and wait until nothing of it is left.

    Sandboxed, the first process inside (bwrap's init, pid 1 of the namespace) is killed:
    the kernel then kills everything else in the pid namespace before init is gone, and
    bwrap exits after it. Killing bwrap alone would leave that to --die-with-parent, which
    finishes after we return. Unsandboxed, or if the sandbox never started, the process
    group goes."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, IndexError):
        init = int(json.loads(info.read_text(encoding="utf-8"))["child-pid"])
        # bwrap's own child, or nobody: never signal a pid we only read from a file.
        stat_fields = Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()
        if int(stat_fields[1]) == child.pid:
            os.kill(init, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=KILL_WAIT_S)
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _tail(path: Path, chars: int) -> str:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 4 * chars))  # UTF-8: at most 4 bytes a character
        return handle.read().decode("utf-8", "replace")[-chars:]
