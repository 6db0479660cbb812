"""Restarting the children of `leaf serve` (its worker and its embedded Redis) when they die."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often the supervisor looks at its children
RESTART_FIRST_S = 1.0  # backoff before a restart: this, doubling per quick death...
RESTART_MAX_S = 30.0  # ...up to this
STABLE_S = 60.0  # a child that stayed up this long starts its backoff afresh


@dataclass
class Supervised:
    """One child process and its restart state."""

    name: str
    launch: Callable[[], subprocess.Popen[bytes] | None]
    process: subprocess.Popen[bytes] | None
    started: float = 0.0
    backoff: float = 0.0  # seconds waited before the last restart
    due: float | None = None  # when the next restart is tried, while it is down


class Supervisor:
    """A thread that restarts a child of `leaf serve` when it exits: after 1 s, doubling
    per death up to 30 s, back to 1 s once the child has stayed up a minute. Each death
    and restart is logged at warning."""

    def __init__(self) -> None:
        self.children: list[Supervised] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def watch(self, child: Supervised) -> Supervised:
        child.started = time.monotonic()
        self.children.append(child)
        return child

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; a restart under way completes first."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(CHECK_S):
            for child in self.children:
                if self._stopping.is_set():
                    return
                self._check(child)

    def _check(self, child: Supervised) -> None:
        now = time.monotonic()
        if child.due is None:
            code = None if child.process is None else child.process.poll()
            if code is None:
                return
            quick = now - child.started < STABLE_S and child.backoff > 0
            child.backoff = min(child.backoff * 2, RESTART_MAX_S) if quick else RESTART_FIRST_S
            child.due = now + child.backoff
            log.warning("%s %s after %.0f s; restarting it in %.0f s", child.name,
                        _exit_text(code), now - child.started, child.backoff)
            return
        if now < child.due:
            return
        try:
            child.process = child.launch()
        except Exception as err:  # e.g. Redis cannot start yet: keep trying, slower
            child.backoff = min(child.backoff * 2, RESTART_MAX_S)
            child.due = now + child.backoff
            log.warning("could not restart %s (%s); next try in %.0f s", child.name, err,
                        child.backoff)
            return
        child.started, child.due = time.monotonic(), None
        log.warning("%s restarted (pid %s)", child.name,
                    None if child.process is None else child.process.pid)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
