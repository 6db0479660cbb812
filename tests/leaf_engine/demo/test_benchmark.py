from __future__ import annotations

import numpy as np
import pytest

from leaf_engine.analysis import Analysis, DetectConfig, ViewAnalysis, decide
from leaf_engine.demo import demo_pair
from leaf_engine.demo.benchmark import count, evaluate_methods, single_model
from leaf_engine.demo.tasks import Problem, generate
from leaf_engine.detect import Detector
from leaf_engine.models import load_model
from leaf_engine.records import ContextToken

TEXT = "Ann has 7 pens. Bob has 9 pens. Ann buys 5 more pens."
PROBLEM = Problem("p", TEXT, "7 + 5 = 12. The answer is 12.", "12", 1,
                  distractor_spans=[[16, 31]], key_spans=[[24, 25]])


def _analysis(student_peak: str) -> Analysis:
    words = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", TEXT)]
    tokens = tuple(ContextToken("instruction", s, e) for s, e in words)
    teacher = np.ones(len(tokens))
    student = np.array([5.0 if TEXT[s:e].startswith(student_peak) else 1.0 for s, e in words])
    return Analysis(TEXT, PROBLEM.output, (ViewAnalysis((0, 29), tokens, teacher, student, None),))


def test_counts_score_flags_against_ground_truth() -> None:
    hit = count([decide(_analysis("9"), DetectConfig(tau=0.1))], [PROBLEM]).metrics()
    assert hit["key_precision"] == 1.0 and hit["key_recall"] == 1.0
    assert hit["token_precision"] == 1.0 and hit["token_recall"] == pytest.approx(1 / 5)
    assert hit["sentence_hit"] == 1.0
    miss = count([decide(_analysis("5"), DetectConfig(tau=0.1))], [PROBLEM]).metrics()
    assert miss["key_f1"] == 0.0 and miss["sentence_hit"] == 0.0
    clean = Problem("c", TEXT, PROBLEM.output, "12", 0)
    counts = count([decide(_analysis("5"), DetectConfig(tau=0.1))], [clean])
    assert counts.clean_problems == 1 and counts.clean_flags == 1


def test_single_model_baselines() -> None:
    student_only = decide(single_model(_analysis("9"), "student-only"), DetectConfig(tau=0.1))
    assert [t.text for t in student_only.tokens if t.confounder] == ["9"]
    teacher_only = decide(single_model(_analysis("9"), "teacher-only"), DetectConfig(tau=0.1))
    assert not any(t.confounder for t in teacher_only.tokens)  # a flat teacher flags nothing


@pytest.mark.slow
def test_demo_pair_gradient_beats_random_on_key_tokens() -> None:
    teacher, student = (load_model(p, device="cpu") for p in demo_pair())
    problems = generate("test", 60, seed=5, distractors=1)
    analyses = Detector(teacher, student).analyse(
        [(p.instruction, p.output) for p in problems], with_surprisal=True)
    rows = {r["method"]: r for r in evaluate_methods(analyses, problems, [0.1],
                                                     methods=("gradient", "random", "ppl"))}
    assert rows["gradient"]["key_recall"] > 3 * max(rows["random"]["key_recall"], 0.02)
    assert rows["gradient"]["key_f1"] > rows["ppl"]["key_f1"]
