"""Answer checking: final numbers, math-verify in a child process, code against tests."""

from __future__ import annotations

import pytest

from leaf_engine.answers import (
    Reference,
    check_answers,
    extract_code,
    final_answer,
    gold_number,
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
    for gold in ("1,000", "$18", "12.0", "5%", "-3", "5 km", "Weng earns 12/60 = $0.2.\n#### 10"):
        assert method_for(Reference(answer=gold), "The answer is 12.", "auto") == "number", gold
    for gold in ("3/4", "x = 5", "2, 3", "\\sqrt{2}", "3 hours 20 minutes"):
        assert method_for(Reference(answer=gold), "The answer is 12.", "auto") == "math", gold
    assert method_for(Reference(answer="12"), "so \\boxed{12}", "auto") == "math"
    assert method_for(Reference(answer="\\frac{1}{2}"), "1/2", "auto") == "math"
    assert method_for(Reference(answer="12"), "12", "math") == "math"
    assert method_for(Reference(tests="assert True"), "x", "number") == "code"
    with pytest.raises(ValueError):
        Reference()


# GSM8K-style (response, gold, right?) under `auto`. Golds are as datasets hold them: a bare
# number, or a whole GSM8K solution ending in "#### N".
NATALIA = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
           "clips altogether in April and May.\n#### 72")
GSM8K_CASES = [
    ("In May she sold 48 / 2 = 24 clips. In total she sold 48 + 24 = 72 clips.", NATALIA, True),
    ("She sold 48 + 24 = 72 clips.\n#### 72", "72", True),
    ("Weng earns 12/60 = $0.2 per minute. For 50 minutes she earned 0.2 x 50 = $10.", "10", True),
    ("Janet sells 16 - 3 - 4 = 9 eggs a day at $2 each, so she makes 9 * 2 = $18. The answer "
     "is $18.", "18", True),
    # "the answer is" beats a later number in the explanation
    ("The answer is 18. That is 9 eggs sold at $2 each.", "18", True),
    ("The answer is 1,000.", "1000", True),
    ("The total is 250 * 4 = 1000.\n#### 1,000", "1000", True),
    ("So the answer is 12.0", "12", True),
    ("Each costs $4.00, so 3 cost $12.00.", "12", True),
    ("She needs $1,200.50 in total.", "$1,200.50", True),
    ("The laptop costs $1,200.", "1,200", True),
    ("The price dropped by 5%.", "5", True),
    ("Mark picked 72 clips.", "72 clips", True),
    ("The run is 5 km long.", "5", True),
    ("At night it is 3 - 7 = -4 degrees.", "-4", True),
    ("The answer is 4.", "-4", False),  # the sign matters
    ("10-3=7", "7", True),  # subtraction, not a negative 3
    ("She has 72 clips and gives 2 away, so the answer is 70.", "72", False),  # 72 is not final
    ("He buys 3 packs of 4, so 12 pens. Then he loses 2, leaving 10.", "12", False),
    ("The answer is 1,000.", "100", False),
    ("12,5 is the answer", "125", False),  # not a thousands separator
    ("I cannot tell from the question.", "42", False),
    ("She drinks 3/4 of the bottle.", "0.75", True),  # a fraction is its value
    ("The answer is 0.75.", "3/4", True),  # a fraction gold goes to math-verify
    ("So the answer is \\boxed{1,000}.", "1000", True),  # boxed: math-verify
]


@pytest.mark.parametrize(("response", "gold", "right"), GSM8K_CASES)
def test_gsm8k_style_answers_are_checked_as_numbers(response: str, gold: str, right: bool) -> None:
    [verdict] = check_answers([response], [Reference(answer=gold)])
    assert verdict.correct is right, (response, gold)
    to_math_verify = "\\boxed" in response or gold == "3/4"
    assert verdict.method == ("math" if to_math_verify else "number")


def test_final_answer_follows_the_gsm8k_extracts() -> None:
    assert final_answer("5 + 3 = 8\n#### 8\nCheck: 2 * 4 = 8. Also 9.") == "8"
    assert final_answer("The answer is 7. Note: 7 = 3 + 4") == "7"
    assert final_answer("**Answer:** $1,234") == "1,234"
    assert final_answer("about -2.5 degrees, i.e. \u22122.5") == "\u22122.5"
    assert final_answer("no digits") is None
    assert gold_number("#### 1,000") == 1000
    assert gold_number("3 hours 20 minutes") is None
    assert gold_number("3/4") is None


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
