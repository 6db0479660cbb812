"""Answer checking: final-number match, math-verify equivalence, and code run against tests.

A numeric answer ("72", "1,000", "$18", "12.0", "5%", "5 km", or a whole GSM8K solution ending
in "#### 72") is checked the way GSM8K graders do: the response's final answer is the number
after its last "####", else after its last "the answer is", else its last number
(lm-evaluation-harness' strict and flexible extracts); thousands separators, "$", "%" and a
trailing unit or period are dropped, and the two are compared as numbers, so "1,000." is
1000 and "12.00" is 12. Anything else goes to math-verify.

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
from fractions import Fraction
from pathlib import Path
from typing import Literal

from leaf_engine.errors import ConfigError
from leaf_engine.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, run_python

log = logging.getLogger(__name__)

AnswerCheck = Literal["auto", "number", "math"]
Method = Literal["number", "math", "code"]
MATH_BATCH = 128  # (prediction, gold) pairs per checker process
MATH_MEMORY_MB = 2048  # sympy needs more address space than a small program
# A number as answers write it: a sign, thousands separators ("1,000" but not "12,5"),
# decimals, or a fraction ("3/4"). Not inside a word or after a decimal point, and a minus
# after a digit is subtraction ("10-3" ends in 3), not a sign.
_DECIMAL = r"(?<![\w.])[-\u2212]?(?:\d{1,3}(?:,\d{3}(?!\d))+|\d+)(?:\.\d+)?"
_NUMBER = _DECIMAL + r"(?:/\d+(?:\.\d+)?)?"
_ANY_NUMBER = re.compile(_NUMBER)
_MARKED = re.compile(r"####[\s*$]*(" + _NUMBER + ")")  # the GSM8K reference format
_ANSWER_IS = re.compile(r"\banswer(?:\s+is)?[\s:=*$]*(" + _NUMBER + ")", re.I)
# A gold answer that is one number: "$1,200.50", "5%", "-3", "12 apples", "72." (at most
# three unit words after it). A fraction is not: "3/4" may be answered "\\frac{3}{4}", which
# math-verify reads and a final-number match does not.
_GOLD = re.compile(r"\$?\s*(" + _DECIMAL + r")\s*%?(?:\s+[^\W\d_]+\.?){0,3}\s*\.?")
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
    """`auto`: final-number match for answers that are one number (the demo task, GSM8K),
    unless the response boxes its answer; math-verify for everything else."""
    if reference.tests is not None:
        return "code"
    if how != "auto":
        return how
    if gold_number(reference.answer or "") is not None and "\\boxed" not in prediction:
        return "number"
    return "math"


def number_match(prediction: str, answer: str) -> bool:
    """Whether the response's final number equals the gold answer's, as numbers."""
    gold = gold_number(answer)
    found = final_answer(prediction)
    return gold is not None and found is not None and to_fraction(found) == gold


def final_answer(text: str) -> str | None:
    """The response's final answer as written: the first number after its last "####",
    else the number right after its last "answer is" / "answer:", else its last number."""
    for pattern in (_MARKED, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            return str(found[-1])
    numbers = _ANY_NUMBER.findall(text)
    return numbers[-1] if numbers else None


def gold_number(answer: str) -> Fraction | None:
    """The value of a gold answer that is one number (after a GSM8K solution's "####"),
    or None when it is something else (an expression, a list, text)."""
    tail = gold_text(answer)
    match = _GOLD.fullmatch(tail)
    return to_fraction(match.group(1)) if match else None


def gold_text(answer: str) -> str:
    """The answer itself: what follows the last "####" of a GSM8K solution, else all of it."""
    return answer.rsplit("####", 1)[-1].strip()


def to_fraction(number: str) -> Fraction | None:
    """The exact value of a number as `_NUMBER` matches it ("1,200.50", "-3/4")."""
    text = number.replace(",", "").replace("\u2212", "-")
    top, _, bottom = text.partition("/")
    value = Fraction(top)
    if bottom:
        if Fraction(bottom) == 0:
            return None
        value /= Fraction(bottom)
    return value


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
        pairs = [(predictions[i], gold_text(references[i].answer or "")) for i in chunk]
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
