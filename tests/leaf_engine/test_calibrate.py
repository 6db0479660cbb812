"""`leaf_engine.calibrate`: the sweep on hand-made analyses with a known answer rule, the
recommendation rule, the files, and a real sweep on the bundled demo pair."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from leaf_engine.analysis import Analysis, DetectConfig, ViewAnalysis
from leaf_engine.answers import Reference
from leaf_engine.calibrate import (
    CURVE_JSON,
    CURVE_PNG,
    DEFAULT_PERCENTILES,
    DEFAULT_TAUS,
    MAX_GAPS,
    MAX_VALUES,
    SCHEMA,
    Calibration,
    Point,
    PromptKey,
    Sweep,
    calibrate,
    configs_from,
    recommend,
    result_of,
    sweep_points,
    write_calibration,
)
from leaf_engine.errors import ConfigError
from leaf_engine.records import ContextToken

TARGET = "Ann has 7 pens. Her brother has 9 cars. She buys 5 more pens. How many pens?"
CLEAN = "Bob has 4 cards. He finds 2 more cards. How many cards?"


def analysis(instruction: str, saliency: dict[str, tuple[float, float]],
             default: tuple[float, float]) -> Analysis:
    """An instruction-level analysis whose tokens are its words and punctuation marks, with
    (teacher, student) raw saliency per word (`default` for the rest)."""
    tokens = [m.span() for m in re.finditer(r"\w+|[^\w\s]", instruction)]
    values = [saliency.get(instruction[a:b], default) for a, b in tokens]
    return Analysis(instruction, "The answer is 12.", (ViewAnalysis(
        target=(0, 17), tokens=tuple(ContextToken("instruction", a, b) for a, b in tokens),
        teacher=np.array([t for t, _ in values]), student=np.array([s for _, s in values]),
        surprisal=None),))


# Normalised (see `analysis`'s minmax): "9" scores 0 (only the student looks at it),
# "brother" 0.4, "5" 0.5, every other word 1; the largest student-over-teacher gap is 1.
TARGET_SALIENCY = {"9": (0.0, 1.0), "brother": (0.3, 0.6), "5": (0.6, 0.68)}
# Both models look at the same words; "finds" a little more to the student: it scores 0,
# but the gap (0.1) is small.
CLEAN_SALIENCY = {"finds": (0.5, 0.6), "4": (1.0, 1.0), "2": (1.0, 1.0)}


def right(instruction: str) -> bool:
    """The demo task's truth: the answer is right when the distractor's number is gone and
    both operands are still there."""
    words = set(re.findall(r"\w+", instruction))
    return "9" not in words and {"7", "5"} <= words


class Student:
    """Answers pruned prompts by `right`, and records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[list[PromptKey]] = []

    def __call__(self, keys: Sequence[PromptKey]) -> list[bool]:
        self.calls.append(list(keys))
        return [right(instruction) for instruction, _, _ in keys]


@pytest.fixture
def rows() -> tuple[list[Analysis], list[Reference], list[bool], list[bool]]:
    analyses = [analysis(TARGET, TARGET_SALIENCY, (1.0, 0.2)),
                analysis(CLEAN, CLEAN_SALIENCY, (0.5, 0.5)),
                analysis(TARGET.replace("Ann", "Eve"), {"Eve": (1.0, 0.2)}, (1.0, 0.2))]
    references = [Reference(answer="12")] * 3
    teacher_ok = [True, True, False]  # row 2: the teacher is wrong, so it is only counted
    student_ok = [False, True, False]
    return analyses, references, teacher_ok, student_ok


def test_the_sweep_measures_fixes_and_untouched_clean_prompts(rows) -> None:
    student = Student()
    sweep = Sweep(values=(0.5, 0.0, 0.25), min_gaps=(0.0, 0.5))
    swept = sweep_points(*rows, sweep, DetectConfig(unit="token"), answer=student)
    assert (swept.rows, swept.targets, swept.clean) == (3, 1, 1)
    by = {(p.tau, p.min_gap): p for p in swept.points}
    assert [(p.tau, p.min_gap) for p in swept.points] == [
        (0.0, 0.0), (0.0, 0.5), (0.25, 0.0), (0.25, 0.5), (0.5, 0.0), (0.5, 0.5)]
    for gap in (0.0, 0.5):
        # Pruning "9" fixes the answer; at 0.5 "5" goes too, and the question with it.
        assert [by[tau, gap].fixed for tau in (0.0, 0.25, 0.5)] == [1, 1, 0]
        assert by[0.0, gap].fix_rate == 1.0 and by[0.5, gap].fix_rate == 0.0
    # The clean prompt's lowest word scores 0, so every tau flags it unless its gap is small.
    assert all(by[tau, 0.0].untouched == 0 for tau in (0.0, 0.25, 0.5))
    assert all(by[tau, 0.5].untouched_rate == 1.0 for tau in (0.0, 0.25, 0.5))
    flags = [by[tau, 0.0].flags_per_prompt for tau in (0.0, 0.25, 0.5)]
    assert flags == sorted(flags) and flags[0] < flags[-1]
    # Every distinct pruned prompt is answered once, in one call, whatever the number of
    # thresholds and gaps that produce it.
    assert len(student.calls) == 1
    asked = [instruction for instruction, _, _ in student.calls[0]]
    assert len(asked) == len(set(asked)) == swept.generated == 2
    assert all(instruction != TARGET for instruction in asked)


def test_a_target_left_unflagged_is_not_answered_again(rows) -> None:
    analyses, references, _, _ = rows
    student = Student()
    # The clean row as a target: at min gap 0.5 nothing is flagged, so its pruned prompt is
    # its original, which the student is known to get wrong.
    swept = sweep_points(analyses, references, [True, True, False], [False, False, False],
                         Sweep(values=(0.0,), min_gaps=(0.5,)), DetectConfig(unit="token"),
                         answer=student)
    assert swept.targets == 2 and swept.points[0].fixed == 1
    assert [k[0] for k in student.calls[0]] == [TARGET.replace(" 9", "")]


def _view(texts: dict[str, str], target: tuple[int, int],
          saliency: dict[str, dict[str, tuple[float, float]]], default: tuple[float, float]
          ) -> ViewAnalysis:
    """A view over the instruction and the response so far, with saliency per field."""
    tokens = [ContextToken(field, m.start(), m.end())  # type: ignore[arg-type]
              for field, text in texts.items() for m in re.finditer(r"\w+|[^\w\s]", text)]
    values = [saliency[t.field].get(texts[t.field][t.start:t.end], default) for t in tokens]
    return ViewAnalysis(target, tuple(tokens), np.array([t for t, _ in values]),
                        np.array([s for _, s in values]), None)


def test_at_response_level_every_pruned_context_must_be_answered(rows) -> None:
    """A row is fixed when the student continues each view's pruned context correctly: here
    pruning the instruction's "9" is not enough while the response so far repeats it."""
    output = "Not 9 but 7 + 5. The answer is 12."
    prefix = output[:17]
    view0 = rows[0][0].views[0]
    # In the response prefix (normalised on its own) "Not" scores 0 and "9" 0.4.
    view1 = _view({"instruction": TARGET, "output": prefix}, (17, len(output)),
                  {"instruction": TARGET_SALIENCY,
                   "output": {"Not": (0.0, 1.0), "9": (0.5, 0.76)}}, (1.0, 0.2))
    two_views = Analysis(TARGET, output, (view0, view1))
    student = Student()

    def answer(keys: Sequence[PromptKey]) -> list[bool]:
        student.calls.append(list(keys))
        return [right(instruction + " " + so_far) for instruction, so_far, _ in keys]

    swept = sweep_points([two_views], [Reference(answer="12")], [True], [False],
                         Sweep(values=(0.0, 0.45)), DetectConfig(unit="token",
                                                                 level="response"),
                         answer=answer)
    assert [p.fixed for p in swept.points] == [0, 1]
    asked = {(i, so_far) for i, so_far, _ in student.calls[0]}
    assert (TARGET.replace(" 9", ""), "9 but 7 + 5. ") in asked  # tau 0: only "Not" goes
    # tau 0.45: "9" goes from the response too, and "brother" (0.4) from the instruction
    assert (TARGET.replace(" brother", "").replace(" 9", ""), "but 7 + 5. ") in asked
    # Every view counts: "9" in view 0; "9" and "Not" in view 1.
    assert swept.points[0].flags_per_prompt == 3


def point(tau: float, fix: float | None, untouched: float | None, flags: float,
          gap: float = 0.0) -> Point:
    return Point(tau=tau, percentile=None, min_gap=gap, flags_per_prompt=flags,
                 spans_per_prompt=flags, prompts_flagged=1.0, fixed=0, fix_rate=fix,
                 untouched=0, untouched_rate=untouched)


def test_the_recommendation_rule() -> None:
    curve = [point(0.0, 0.5, 0.1, 1.0), point(0.1, 0.7, 0.0, 2.0), point(0.2, 0.7, 0.0, 3.0),
             point(0.3, 0.6, 0.4, 4.0)]
    assert recommend(curve, 0.0) == (curve[1], True)  # best fix rate; tie: fewer flags
    assert recommend(curve, 0.3) == (curve[3], True)  # the best that keeps 30 % untouched
    assert recommend(curve, 0.9) == (curve[1], False)  # none qualifies: best overall
    tie = [point(0.1, 0.7, 0.0, 2.0), point(0.1, 0.7, 0.2, 1.5, gap=0.5)]
    assert recommend(tie, 0.0) == (tie[1], True)  # tie: more clean prompts untouched
    same = [point(0.2, 0.7, 0.0, 2.0), point(0.1, 0.7, 0.0, 2.0)]
    assert recommend(same, 0.0)[0] == same[1]  # then the smaller tau
    assert recommend([point(0.1, None, 0.5, 1.0)], 0.0) == (None, False)  # nothing to fix
    assert recommend([point(0.1, 0.4, None, 1.0)], 0.9) == (point(0.1, 0.4, None, 1.0), True)


def test_sweep_defaults_and_errors_name_the_option() -> None:
    assert Sweep().values == DEFAULT_TAUS
    assert Sweep(threshold="percentile").values == DEFAULT_PERCENTILES
    assert Sweep(values=(0.3, 0.1)).values == (0.1, 0.3)
    cases = [
        ({"values": (0.1, 1.5)}, "tau_values"),
        ({"values": (0.1, 0.1)}, "tau_values"),
        ({"values": ()}, "tau_values"),
        ({"threshold": "percentile", "values": (0.0,)}, "percentiles"),
        ({"min_gaps": (-0.1,)}, "min_gaps"),
        ({"min_untouched": 1.5}, "min_untouched"),
        ({"values": tuple(i / (2 * MAX_VALUES) for i in range(MAX_VALUES + 1))}, "tau_values"),
        ({"min_gaps": tuple(i / (2 * MAX_GAPS) for i in range(MAX_GAPS + 1))}, "min_gaps"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ConfigError) as err:
            Sweep(**kwargs)  # type: ignore[arg-type]
        assert err.value.field == field, kwargs


def test_configs_from_api_options() -> None:
    sweep, detect = configs_from({"percentiles": [10, 5], "level": "response", "unit": "token"})
    assert (sweep.threshold, sweep.values, sweep.min_gaps) == ("percentile", (5.0, 10.0), (0.0,))
    assert (detect.level, detect.unit) == ("response", "token")
    assert configs_from({})[0] == Sweep()
    for options, field in [({"tau_values": [0.1], "percentiles": [5]}, "percentiles"),
                           ({"tau_values": []}, "tau_values"), ({"level": "x"}, "level")]:
        with pytest.raises(ConfigError) as err:
            configs_from(options)
        assert err.value.field == field


def _result(rows) -> Calibration:
    sweep = Sweep(values=(0.0, 0.5))
    swept = sweep_points(*rows, sweep, DetectConfig(unit="token"), answer=Student())
    return result_of(swept, sweep, generations=7, seconds={"total": 1.0},
                     params={"level": "instruction"})


def test_files_json_and_png(rows, tmp_path: Path) -> None:
    result = _result(rows)
    written, note = write_calibration(result, tmp_path / "out")
    assert note is None and [p.name for p in written] == [CURVE_JSON, CURVE_PNG]
    data = json.loads((tmp_path / "out" / CURVE_JSON).read_text())
    assert data["schema"] == SCHEMA and data["threshold"] == "tau"
    assert [p["tau"] for p in data["points"]] == [0.0, 0.5]
    assert "percentile" not in data["points"][0] and data["recommended"]["tau"] == 0.0
    assert (data["rows"], data["teacher_right_student_wrong"], data["clean"],
            data["teacher_wrong"]) == (3, 1, 1, 1)
    assert (tmp_path / "out" / CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_json_is_written_and_the_png_explained(
        rows, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    written, note = write_calibration(_result(rows), tmp_path)
    assert [p.name for p in written] == [CURVE_JSON]
    assert note is not None and "leaf-focus[bench]" in note
    assert not (tmp_path / CURVE_PNG).exists()


def test_a_real_sweep_on_the_demo_pair() -> None:
    from leaf_engine.data import example_from_row
    from leaf_engine.demo import demo_pair
    from leaf_engine.demo.tasks import generate
    from leaf_engine.detect import Detector
    from leaf_engine.models import load_model
    from leaf_engine.selection import Judge

    teacher, student = (load_model(p, device="cpu") for p in demo_pair())
    # Two distractors each: the demo student is misled by about half of them.
    examples = [example_from_row(p.to_row())
                for p in generate("validation", 16, seed=3, distractors=2)]
    stages: list[str] = []
    result = calibrate(Detector(teacher, student, batch_size=16), examples,
                       sweep=Sweep(values=(0.0, 0.1, 0.5)), judge=Judge(max_new_tokens=24),
                       progress=lambda stage, done, total: stages.append(stage))
    assert result.rows == 16 and result.teacher_right_student_wrong >= 3
    assert result.teacher_wrong == 16 - result.teacher_right_student_wrong - result.clean
    fixed = [p.fixed for p in result.points]
    assert max(fixed) >= 1  # pruning the flagged words fixes some of the student's answers
    flags = [p.flags_per_prompt for p in result.points]
    assert flags == sorted(flags) and flags[0] >= 0.5
    assert result.recommended is not None and result.constraint_met
    assert result.recommended.fixed == max(fixed)
    assert 2 * 16 < result.generations <= 2 * 16 + 3 * result.teacher_right_student_wrong
    assert list(dict.fromkeys(stages)) == ["answering (teacher)", "answering (student)",
                                           "saliency", "pruned answers"]
    assert {"answering", "saliency", "pruned answers", "total"} <= set(result.seconds)
    json.dumps(result.to_dict())
