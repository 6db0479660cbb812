from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leaf_engine.analysis import (
    Analysis,
    DetectConfig,
    ViewAnalysis,
    confounder_scores,
    decide,
    minmax,
)
from leaf_engine.data import Example
from leaf_engine.detect import Detector
from leaf_engine.errors import ConfigError
from leaf_engine.models import load_model
from leaf_engine.records import ContextToken
from tests import tiny

INSTRUCTION = "Ann has 7 pens. The sky is blue. She buys 5 more pens. How many pens?"
OUTPUT = "Step 1: 7 + 5 = 12. Step 2: so she has 12 pens. The answer is 12."


@pytest.fixture(scope="module")
def detector(llama_pair) -> Detector:
    teacher, student = (load_model(str(p), device="cpu") for p in llama_pair)
    return Detector(teacher, student, batch_size=8)


@pytest.fixture(scope="module")
def analysis(detector: Detector) -> Analysis:
    (result,) = detector.analyse([(INSTRUCTION, OUTPUT)], with_surprisal=True)
    return result


def _visible(record) -> list:
    return [t for t in record.tokens if t.text.strip()]


def test_minmax_and_scores() -> None:
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert np.all(minmax(np.array([3.0, 3.0])) == 0.5)  # no spread: no information
    _t, _s, score = confounder_scores(np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.5]),
                                    np.array([True, True, True]))
    np.testing.assert_allclose(score, [1.0, 0.0, 0.5])  # the student-only token scores 0


def test_tau_one_flags_every_visible_token_and_never_whitespace(analysis: Analysis) -> None:
    record = decide(analysis, DetectConfig(tau=1.0))
    assert all(t.confounder for t in _visible(record))
    assert not any(t.confounder for t in record.tokens if not t.text.strip())
    assert any(not t.text.strip() for t in record.tokens)  # the BPE has whitespace tokens
    assert record.collective == ""


def test_tau_zero_flags_only_the_minimum(analysis: Analysis) -> None:
    record = decide(analysis, DetectConfig(tau=0.0))
    visible = _visible(record)
    lowest = min(t.score for t in visible)
    assert lowest == 0.0
    assert [t.confounder for t in visible] == [t.score == lowest for t in visible]


def test_scores_are_normalised_over_visible_tokens(analysis: Analysis) -> None:
    visible = _visible(decide(analysis, DetectConfig()))
    for name in ("teacher", "student", "score"):
        values = [getattr(t, name) for t in visible]
        assert min(values) == 0.0 and max(values) == 1.0


def test_flags_grow_with_tau(analysis: Analysis) -> None:
    counts = [sum(t.confounder for t in decide(analysis, DetectConfig(tau=tau)).tokens)
              for tau in (0.0, 0.2, 0.5, 0.8, 1.0)]
    assert counts == sorted(counts) and counts[0] >= 1


def test_percentile_mode(analysis: Analysis) -> None:
    visible = _visible(decide(analysis, DetectConfig()))
    scores = np.array([t.score for t in visible])
    record = decide(analysis, DetectConfig(percentile=30))
    cut = min(np.sort(scores)[int(len(scores) * 0.3)], 0.5)  # the official code's rule
    assert [t.confounder for t in _visible(record)] == list(scores <= cut)
    capped = decide(analysis, DetectConfig(percentile=100))
    assert all(t.score <= 0.5 for t in capped.tokens if t.confounder)


def test_ppl_and_random_flag_as_many_as_gradient(analysis: Analysis) -> None:
    base = sum(t.confounder for t in decide(analysis, DetectConfig(tau=0.3)).tokens)
    ppl = decide(analysis, DetectConfig(tau=0.3, method="ppl"))
    assert sum(t.confounder for t in ppl.tokens) == base
    # ppl flags the student's most surprising tokens.
    view = analysis.views[0]
    flagged = {(t.start, t.end) for t in ppl.tokens if t.confounder}
    surprisal = {(tok.start, tok.end): v for tok, v in zip(view.tokens, view.surprisal,
                                                             strict=True)}
    worst_unflagged = max((v for k, v in surprisal.items() if k not in flagged
                           and INSTRUCTION[k[0]:k[1]].strip() and np.isfinite(v)))
    assert all(surprisal[k] >= worst_unflagged for k in flagged)
    runs = [decide(analysis, DetectConfig(tau=0.3, method="random", seed=s), example_id="x")
            for s in (1, 1, 2)]
    assert all(sum(t.confounder for t in r.tokens) == base for r in runs)
    assert [t.confounder for t in runs[0].tokens] == [t.confounder for t in runs[1].tokens]
    assert [t.confounder for t in runs[0].tokens] != [t.confounder for t in runs[2].tokens]


def test_word_unit_flags_whole_words(analysis: Analysis) -> None:
    record = decide(analysis, DetectConfig(tau=0.2, unit="word"))
    for t in record.tokens:
        same_word = [u for u in record.tokens if u.text.strip() and
                     _word_at(u.start) == _word_at(t.start)]
        if t.text.strip():
            assert {u.confounder for u in same_word} == {t.confounder}


def _word_at(pos: int) -> int:
    return INSTRUCTION[:pos + 1].count(" ")


def test_record_fields_and_pruning_are_consistent(analysis: Analysis) -> None:
    record = decide(analysis, DetectConfig(tau=0.3), example_id="q1",
                    passthrough={"answer": "12"}).to_dict()
    assert set(record) >= {"id", "instruction", "output", "tokens", "spans", "pruned",
                           "collective", "answer"}
    for tok in record["tokens"]:
        assert INSTRUCTION[tok["start"]:tok["end"]] == tok["text"]
        assert set(tok) == {"text", "start", "end", "teacher", "student", "score", "confounder"}
    assert len(record["pruned"]) == len(record["spans"]) >= 1
    for p, (s, e) in zip(record["pruned"], record["spans"], strict=True):
        assert p["span"] == [s, e]
        assert INSTRUCTION[s:e] not in p["instruction"] or INSTRUCTION.count(INSTRUCTION[s:e]) > 1
        assert len(p["instruction"]) < len(INSTRUCTION)
    for tok in record["tokens"]:
        inside = any(s <= tok["start"] and tok["end"] <= e for s, e in record["spans"])
        if tok["confounder"]:
            assert inside
    json.dumps(record)


def test_analysis_round_trips_through_json(analysis: Analysis) -> None:
    again = Analysis.from_dict(json.loads(json.dumps(analysis.to_dict())))
    for config in (DetectConfig(tau=0.2), DetectConfig(method="ppl", tau=0.4)):
        assert decide(again, config).to_dict() == decide(analysis, config).to_dict()


def test_identical_models_flag_nothing(llama_pair) -> None:
    same = load_model(str(llama_pair[0]), device="cpu")
    (a,) = Detector(same, same).analyse([(INSTRUCTION, OUTPUT)])
    # t - s is 0 everywhere: no spread, so every score is the midpoint and nothing is flagged.
    assert {t.score for t in decide(a, DetectConfig(tau=0.4)).tokens} == {0.5}
    assert not any(t.confounder for t in decide(a, DetectConfig(tau=0.4)).tokens)


def test_min_gap_guard(analysis: Analysis) -> None:
    plain = decide(analysis, DetectConfig(tau=0.2))
    gap = max(t.student - t.teacher for t in _visible(plain))
    below = decide(analysis, DetectConfig(tau=0.2, min_gap=gap - 1e-6))
    above = decide(analysis, DetectConfig(tau=0.2, min_gap=min(1.0, gap + 1e-6)))
    assert [t.confounder for t in below.tokens] == [t.confounder for t in plain.tokens]
    assert any(t.confounder for t in plain.tokens) and not any(t.confounder for t in above.tokens)


def test_response_level_scores_earlier_segments(detector: Detector) -> None:
    (a,) = detector.analyse([(INSTRUCTION, OUTPUT)], level="response", segments=3)
    assert len(a.views) == 3
    record = decide(a, DetectConfig(level="response", segments=3, tau=0.3), example_id="r")
    data = record.to_dict()
    assert len(data["views"]) == 2
    for view in data["views"]:
        start, _end = view["target"]
        prefix = OUTPUT[:start]
        fields = {t["field"] for t in view["tokens"]}
        assert fields == {"instruction", "output"}
        for t in view["tokens"]:
            text = INSTRUCTION if t["field"] == "instruction" else prefix
            assert text[t["start"]:t["end"]] == t["text"]
        for p in view["pruned"]:
            assert len(p["instruction"]) + len(p["output_prefix"]) < len(INSTRUCTION) + len(prefix)
    rows = record.export_rows()
    response_rows = [r for r in rows if r.get("segment")]
    assert response_rows and all(OUTPUT.endswith(r["output"]) or r["output"] in OUTPUT
                                 for r in response_rows)
    assert all(r["original_output_prefix"] + r["output"] in OUTPUT for r in response_rows)


def test_export_rows_official_format(analysis: Analysis) -> None:
    record = decide(analysis, DetectConfig(tau=0.3), example_id="q1")
    rows = record.export_rows()
    assert len(rows) == len(record.spans)
    for i, row in enumerate(rows):
        assert set(row) == {"sample_id", "instruction", "original_instruction", "output",
                            "masked_tokens", "mask_run_index"}
        assert row["mask_run_index"] == i and row["sample_id"] == "q1"
        assert row["original_instruction"] == INSTRUCTION and row["output"] == OUTPUT
        s, e = record.spans[i]
        assert "".join(row["masked_tokens"]).replace(" ", "") == \
            "".join(INSTRUCTION[s:e].split())


def test_different_tokenizers_compare_on_words(model_dir: Path, llama_pair) -> None:
    word_student = load_model(str(tiny.save_pair(model_dir / "w", "llama",
                                                 tiny.word_tokenizer())), device="cpu")
    teacher = load_model(str(llama_pair[0]), device="cpu")
    detector = Detector(teacher, word_student)
    assert not detector.shared_tokens
    (record,) = detector.detect([Example("w", INSTRUCTION, OUTPUT)], DetectConfig(tau=0.2))
    assert [t.text for t in record.tokens] == INSTRUCTION.split()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"tau": 1.5}, "tau"), ({"percentile": 0}, "percentile"), ({"method": "x"}, "method"),
     ({"level": "doc"}, "level"), ({"segments": 4}, "segments"), ({"unit": "char"}, "unit"),
     ({"tau": True}, "tau"), ({"min_gap": -1}, "min_gap")],
)
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DetectConfig(**kwargs)


def test_view_analysis_handles_nan_surprisal() -> None:
    view = ViewAnalysis((0, 1), (ContextToken("instruction", 0, 1),), np.ones(1), np.ones(1),
                        np.array([np.nan]))
    assert np.isnan(ViewAnalysis.from_dict(json.loads(json.dumps(view.to_dict()))).surprisal[0])
