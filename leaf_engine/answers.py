"""Answer checking: final-number match, math-verify equivalence, and code run against tests.

Everything that parses or runs model output beyond a regular expression happens in a child
process (`leaf_engine.sandbox`): math-verify's parser evaluates Python through sympy, and
generated code is, well, code.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from leaf_engine.demo.tasks import final_number
from leaf_engine.errors import ConfigError
from leaf_engine.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, run_python

log = logging.getLogger(__name__)

AnswerCheck = Literal["auto", "number", "math"]
Method = Literal["number", "math", "code"]
MATH_BATCH = 128  # (prediction, gold) pairs per checker process
MATH_MEMORY_MB = 2048  # sympy needs more address space than a small program
_INTEGER = re.compile(r"-?\d+")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Reference:
    """What a response is checked against: an answer, or Python tests for code."""

    answer: str | None = None
    tests: str | None = None  # statements that raise on failure, run after the generated code

    def __post_init__(self) -> None:
        if (self.answer is None) == (self.tests is None):
            raise ValueError("a reference has either an answer or tests")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    method: Method
    detail: str | None = None  # why code failed (timeout, the error's last line)


def method_for(reference: Reference, prediction: str, how: AnswerCheck) -> Method:
    """`auto`: exact final-number match for integer answers (the demo task, GSM8K), unless
    the response boxes its answer; math-verify for everything else."""
    if reference.tests is not None:
        return "code"
    if how != "auto":
        return how
    if _INTEGER.fullmatch((reference.answer or "").strip()) and "\\boxed" not in prediction:
        return "number"
    return "math"


def number_match(prediction: str, answer: str) -> bool:
    return final_number(prediction) == answer.strip()


def extract_code(text: str) -> str:
    """The last fenced code block (```python ... ```) of a response, or all of it."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("", "python", "py", "python3")]
    if python:
        return python[-1]
    return text


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of two texts' sets of lower-cased words (paper Fig. 10)."""
    x, y = set(_WORD.findall(a.lower())), set(_WORD.findall(b.lower()))
    if not x and not y:
        return 1.0
    return len(x & y) / len(x | y)


def check_answers(
    predictions: Sequence[str], references: Sequence[Reference], *,
    how: AnswerCheck = "auto", code_timeout_s: float = DEFAULT_TIMEOUT_S,
    code_memory_mb: int = DEFAULT_MEMORY_MB, workers: int = 4,
) -> list[Verdict]:
    """One verdict per (prediction, reference), in order."""
    methods = [method_for(r, p, how) for p, r in zip(predictions, references, strict=True)]
    verdicts: list[Verdict | None] = [None] * len(predictions)
    math_items = []
    code_items = []
    for i, (method, p, r) in enumerate(zip(methods, predictions, references, strict=True)):
        if method == "number":
            verdicts[i] = Verdict(number_match(p, r.answer or ""), "number")
        elif method == "math":
            math_items.append(i)
        else:
            code_items.append(i)
    if math_items and importlib.util.find_spec("math_verify") is None:
        raise ConfigError("checking math answers needs math-verify: pip install "
                          "'leaf-focus[eval]' (or pass answer_check 'number')")
    for start in range(0, len(math_items), MATH_BATCH):
        chunk = math_items[start : start + MATH_BATCH]
        pairs = [(predictions[i], references[i].answer or "") for i in chunk]
        for i, ok in zip(chunk, math_equivalent(pairs), strict=True):
            verdicts[i] = Verdict(ok, "math")
    if code_items:
        def run(i: int) -> Verdict:
            return run_code_tests(predictions[i], references[i].tests or "",
                                  timeout_s=code_timeout_s, memory_mb=code_memory_mb)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, verdict in zip(code_items, pool.map(run, code_items), strict=True):
                verdicts[i] = verdict
    return [v for v in verdicts if v is not None]


def math_equivalent(pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """math-verify verdicts for (prediction, gold) pairs, computed in one child process.

    If the child dies (memory, time), each pair is retried alone so one pathological
    response cannot fail the others.
    """
    if not pairs:
        return []
    result = _math_child(pairs, timeout_s=30.0 + 10.0 * len(pairs))
    if result is not None:
        return result
    if len(pairs) == 1:
        return [False]
    return [bool((_math_child([p], timeout_s=30.0) or [False])[0]) for p in pairs]


def _math_child(pairs: Sequence[tuple[str, str]], *, timeout_s: float) -> list[bool] | None:
    script = (Path(__file__).resolve().parent / "math_check.py").read_text(encoding="utf-8")
    done = run_python(script, stdin=json.dumps(list(pairs)), timeout_s=timeout_s,
                      memory_mb=MATH_MEMORY_MB, keep_chars=16 * len(pairs) + 64)
    if not done.ok:
        log.warning("math answer checker failed (%s): %s",
                    "timeout" if done.timed_out else f"exit {done.returncode}",
                    done.stderr.strip().splitlines()[-1:] or "")
        return None
    try:
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return None
    return [bool(x) for x in out] if len(out) == len(pairs) else None


def run_code_tests(
    response: str, tests: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> Verdict:
    """pass@1 for one response: its code, then the tests (statements that raise on failure)
    in its namespace, in the sandbox. It passes only if the tests ran to their end: an exit
    of any kind before that (sys.exit(0) at the top, os._exit, a signal) fails, however the
    process ended (see `leaf_engine.sandbox` on the completion sentinel)."""
    done = run_python(extract_code(response), tests=tests, timeout_s=timeout_s,
                      memory_mb=memory_mb)
    if done.ok and done.completed:
        return Verdict(True, "code")
    if done.timed_out:
        return Verdict(False, "code", f"timed out after {timeout_s:g} s")
    lines = done.stderr.strip().splitlines()
    if lines and done.returncode != 0:
        return Verdict(False, "code", lines[-1])
    if done.returncode == 0:
        return Verdict(False, "code", "exited before its tests finished")
    return Verdict(False, "code", f"exit code {done.returncode}")
