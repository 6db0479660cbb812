"""Fixtures for the browser tests: a real `leaf serve` (embedded Redis, one worker, the bundled
demo pair) started once per session as a subprocess, and Debian's Chromium driven by
Playwright. Nothing is mocked: the page talks to the real API and queue."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest

from tests.service import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "frontend"
START_TIMEOUT_S = 120.0  # the worker loads the demo pair before it registers
STOP_TIMEOUT_S = 60.0
API_TOKEN = "frontend-test-token"



def skip_without_browser() -> None:
    """Skip the calling test module unless Chromium and Playwright are both present."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y "
                    "chromium`; .ci/run does) to run the browser tests",
                    allow_module_level=True)
    pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A running `leaf serve` and what the tests need to reach it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path  # its output: a file, since a pipe nobody reads would fill up and stall it
    children: list[psutil.Process] = field(default_factory=list)


def _start(data_dir: Path, *, workers: int, env_extra: dict[str, str]) -> Server:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAF_")}
    env.update(LEAF_DATA_DIR=str(data_dir), LEAF_DEVICE="cpu", **env_extra)
    command = [sys.executable, "-m", "leaf_cli.main", "serve", "--port", str(port)]
    if workers == 0:
        command.append("--no-worker")
    log = data_dir.with_name(f"{data_dir.name}-serve.log")
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"leaf serve exited early:\n{log.read_text(errors='replace')}")
        try:
            return httpx.get(f"{url}/health", timeout=2).json()["workers"] >= workers
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    try:
        wait_for(ready, timeout=START_TIMEOUT_S, every=0.25)
    except BaseException:
        _stop(Server(url, process, log), check=False)  # keep the first error
        raise
    children = psutil.Process(process.pid).children(recursive=True)
    return Server(url, process, log, children)


def _stop(server: Server, *, check: bool = True) -> None:
    """Ctrl-C, as a person would: serve stops the API, then the worker, then Redis."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
    try:
        server.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    output = server.log.read_text(errors="replace")
    _, alive = psutil.wait_procs(server.children, timeout=10)
    for proc in alive:  # only our own children, by pid
        proc.kill()
    if not check:
        return
    assert not alive, f"leaf serve left processes running: {alive}"
    # The worker logs the jobs that fail on purpose with their tracebacks; what matters here
    # is that the service itself stopped cleanly.
    assert server.process.returncode == 0 and "LeaF stopped." in output, output


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`leaf serve` with the bundled demo pair and one worker. /detect answers 202 at once
    for anything not in its cache, so the page's follow-the-job path runs for real; repeats
    come from the cache with 200."""
    running = _start(tmp_path_factory.mktemp("leaf-data"), workers=1,
                     env_extra={"LEAF_DETECT_WAIT_S": "0"})
    try:
        yield running
    finally:
        _stop(running)


@pytest.fixture(scope="package")
def api(server: Server) -> Iterator[httpx.Client]:
    """A keep-alive client for checking the page against the API's own answers."""
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


# Models of the BPE server: a byte-level BPE pair (leading-space and whitespace-only tokens,
# words split into pieces), a student without a chat template (a plain-template fallback
# warning) and one with a word-level tokenizer (compared on words).
BPE_TEACHER, BPE_STUDENT = "bpe-teacher", "bpe-student"
PLAIN_STUDENT, WORD_STUDENT = "plain-student", "word-student"


@pytest.fixture(scope="package")
def bpe_server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path,
               llama_pair: tuple[Path, Path]) -> Iterator[Server]:
    """`leaf serve` over tiny random models with real subword tokenizers, one worker."""
    from tests import tiny

    plain = tiny.save_pair(model_dir / "plain", "llama", tiny.bpe_tokenizer(chat=False), seed=3)
    word = tiny.save_pair(model_dir / "word", "llama", tiny.word_tokenizer(), seed=4)
    models = {BPE_TEACHER: str(llama_pair[0]), BPE_STUDENT: str(llama_pair[1]),
              PLAIN_STUDENT: str(plain), WORD_STUDENT: str(word)}
    running = _start(tmp_path_factory.mktemp("leaf-bpe-data"), workers=1, env_extra={
        "LEAF_MODELS": json.dumps(models), "LEAF_DEFAULT_TEACHER": BPE_TEACHER,
        "LEAF_DEFAULT_STUDENT": BPE_STUDENT})
    try:
        yield running
    finally:
        _stop(running)


@pytest.fixture(scope="package")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The API alone, with LEAF_API_TOKEN set: for the token dialog."""
    running = _start(tmp_path_factory.mktemp("leaf-token-data"), workers=0,
                     env_extra={"LEAF_API_TOKEN": API_TOKEN, "LEAF_PRELOAD": "false"})
    try:
        yield running
    finally:
        _stop(running)


# Package scope, not session: Playwright's sync API keeps an event loop running in the main
# thread while it is open, which breaks later tests that start their own (asyncio.run, anyio).
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="package")
def artifacts() -> Path:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Lets the page fixture see whether its test failed, to keep a screenshot of it.
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Page]:
    """A fresh 1280x800 tab. An uncaught script error fails the test; a failed test leaves a
    full-page screenshot in test-artifacts/frontend/."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda err: errors.append(str(err)))
    try:
        yield tab
        if request.node.stash.get(FAILED, False):
            tab.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"),
                           full_page=True)
        assert errors == [], f"script errors on the page: {errors}"
    finally:
        context.close()
