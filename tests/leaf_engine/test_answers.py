"""Answer checking: final numbers, math-verify in a child process, code against tests."""

from __future__ import annotations

import pytest

from leaf_engine.answers import (
    Reference,
    check_answers,
    extract_code,
    jaccard,
    math_equivalent,
    method_for,
    number_match,
    run_code_tests,
)


def test_final_number_match() -> None:
    assert number_match("7 + 5 = 12. The answer is 12.", "12")
    assert not number_match("7 + 5 = 12. The answer is 13.", "12")
    assert not number_match("no number here", "12")
    assert number_match("The answer is -3.", " -3 ")


def test_auto_method() -> None:
    assert method_for(Reference(answer="12"), "The answer is 12.", "auto") == "number"
    assert method_for(Reference(answer="12"), "so \\boxed{12}", "auto") == "math"
    assert method_for(Reference(answer="\\frac{1}{2}"), "1/2", "auto") == "math"
    assert method_for(Reference(answer="12"), "12", "math") == "math"
    assert method_for(Reference(tests="assert True"), "x", "number") == "code"
    with pytest.raises(ValueError):
        Reference()


def test_math_verify_runs_in_a_child_and_understands_latex() -> None:
    pairs = [("The answer is \\boxed{12}.", "12"), ("so x = \\boxed{0.5}", "\\frac{1}{2}"),
             ("The answer is $\\frac{24}{2}$", "12"), ("\\boxed{13}", "12"),
             ("no answer at all", "12"), ("__import__('os').system('echo pwned')", "0")]
    assert math_equivalent(pairs) == [True, True, True, False, False, False]


def test_jaccard_of_word_sets() -> None:
    assert jaccard("The answer is 12.", "the ANSWER is 12") == 1.0
    assert jaccard("a b c d", "a b") == 0.5
    assert jaccard("", "") == 1.0
    assert jaccard("x", "") == 0.0


def test_extract_code_prefers_the_last_python_block() -> None:
    text = "First:\n```python\nx = 1\n```\nthen\n```py\ndef f():\n    return 2\n```\nbye"
    assert extract_code(text) == "def f():\n    return 2\n"
    assert extract_code("```js\nlet a;\n```") == "```js\nlet a;\n```"
    assert extract_code("def g(): pass") == "def g(): pass"
    assert extract_code("```python\nunterminated = 3\n") == "unterminated = 3\n"


def test_code_rows_pass_only_when_their_tests_do() -> None:
    code = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    verdicts = check_answers(
        [code, code, "```python\ndef add(a, b):\n    while True: pass\n```",
         "Sorry, I cannot help."],
        [Reference(tests="assert add(2, 3) == 5"), Reference(tests="assert add(2, 3) == 6"),
         Reference(tests="assert add(1, 1) == 2"), Reference(tests="assert True")],
        code_timeout_s=2.0,
    )
    assert [v.correct for v in verdicts] == [True, False, False, False]
    assert [v.method for v in verdicts] == ["code"] * 4
    assert verdicts[1].detail == "AssertionError"
    assert "timed out" in (verdicts[2].detail or "")
    assert "SyntaxError" in (verdicts[3].detail or "")


ADD = "def add(a, b):\n    return a + b\n"
EARLY_EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "raise SystemExit": "raise SystemExit\n",
    "exit()": "exit()\n",
    "quit(0)": "quit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "SIGKILL to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "SIGTERM to itself": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
    "os._exit from a thread": ("import os, threading, time\n"
                               "threading.Thread(target=os._exit, args=(0,)).start()\n"
                               "time.sleep(5)\n"),
    "interrupt_main from a thread": ("import _thread, threading, time\n"
                                     "threading.Thread(target=_thread.interrupt_main).start()\n"
                                     "time.sleep(5)\n"),
    "exit inside the function": "def add(a, b):\n    import sys\n    sys.exit(0)\n",
    "os._exit inside the function": "def add(a, b):\n    import os\n    os._exit(0)\n",
    "SystemExit through a finally": "try:\n    raise SystemExit(0)\nfinally:\n    pass\n",
}


@pytest.mark.parametrize("how", list(EARLY_EXITS))
def test_an_exit_before_the_tests_end_fails(how: str) -> None:
    code = ADD + EARLY_EXITS[how] if "inside" not in how else EARLY_EXITS[how]
    verdict = run_code_tests(f"```python\n{code}```", "assert add(2, 3) == 5\n",
                             timeout_s=10.0)
    assert not verdict.correct and verdict.method == "code", how
    assert verdict.detail, how


def test_a_correct_program_passes_and_an_early_exit_says_why() -> None:
    assert run_code_tests(ADD, "assert add(2, 3) == 5").correct
    early = run_code_tests("import sys\nsys.exit(0)\n" + ADD, "assert add(2, 3) == 5")
    assert not early.correct and early.detail == "exited before its tests finished"
    killed = run_code_tests("import os\nos._exit(3)\n", "assert True")
    assert not killed.correct and killed.detail == "exit code 3"
    # SystemExit in a thread ends only that thread: the tests still run, and pass.
    thread = "import sys, threading\nthreading.Thread(target=sys.exit).start()\n"
    assert run_code_tests(thread + ADD, "assert add(2, 3) == 5").correct
