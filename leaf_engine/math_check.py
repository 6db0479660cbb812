"""Child-process math answer checker: reads [[prediction, gold], ...] as JSON on stdin and
prints a JSON list of booleans (math-verify equivalence).

`leaf_engine.answers` runs this file inside `leaf_engine.sandbox`; the engine never imports
it. math-verify hands parts of model output to sympy's `parse_expr`, which evaluates
Python, and times parsing out with `signal.alarm`, which works only in a main thread: a
child process solves both. Standalone on purpose (no leaf_engine imports).
"""

from __future__ import annotations

import json
import sys

PARSE_TIMEOUT_S = 5  # per expression, enforced by math-verify itself


def check(prediction: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        target = parse(gold, parsing_timeout=PARSE_TIMEOUT_S) or parse(
            f"${gold}$", parsing_timeout=PARSE_TIMEOUT_S)
        answer = parse(prediction, parsing_timeout=PARSE_TIMEOUT_S)
        return bool(target) and bool(answer) and bool(
            verify(target, answer, timeout_seconds=PARSE_TIMEOUT_S))
    except Exception:  # any failure to parse or compare is a wrong answer, not a crash
        return False


def main() -> None:
    pairs = json.load(sys.stdin)
    sys.stdout.write(json.dumps([check(str(p), str(g)) for p, g in pairs]) + "\n")


if __name__ == "__main__":
    main()
