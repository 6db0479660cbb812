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
    units_of,
)
from leaf_engine.data import Example
from leaf_engine.detect import Detector
from leaf_engine.errors import ConfigError
from leaf_engine.models import load_model
from leaf_engine.records import ContextToken
from leaf_engine.units import is_word, pieces
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


def _words(record) -> list:
    return [t for t in record.tokens if is_word(t.text)]


def test_minmax_and_scores() -> None:
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    assert np.all(minmax(np.array([3.0, 3.0])) == 0.5)  # no spread: no information
    _t, _s, score = confounder_scores(np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.5]),
                                    np.array([True, True, True]))
    np.testing.assert_allclose(score, [1.0, 0.0, 0.5])  # the student-only token scores 0


@pytest.mark.parametrize("unit", ["token", "word"])
def test_tau_one_flags_every_word_and_never_whitespace_or_punctuation(
    analysis: Analysis, unit: str
) -> None:
    record = decide(analysis, DetectConfig(tau=1.0, unit=unit))  # type: ignore[arg-type]
    assert all(t.confounder for t in _words(record))
    assert not any(t.confounder for t in record.tokens if not is_word(t.text))
    if unit == "token":
        assert any(not t.text.strip() for t in record.tokens)  # the BPE has whitespace tokens
    assert any(not is_word(t.text) and t.text.strip() for t in record.tokens)  # "." and ":"
    assert not any(is_word(record.collective[a:b]) for a, b in pieces(record.collective))


def test_tau_zero_flags_only_the_minimum(analysis: Analysis) -> None:
    record = decide(analysis, DetectConfig(tau=0.0))
    visible = _visible(record)
    assert min(t.score for t in visible) == 0.0
    assert [t.confounder for t in visible] == [t.score == 0.0 and is_word(t.text)
                                               for t in visible]


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
    assert [t.confounder for t in _visible(record)] == [
        bool(x <= cut) and is_word(t.text) for x, t in zip(scores, visible, strict=True)]
    capped = decide(analysis, DetectConfig(percentile=100))
    assert all(t.score <= 0.5 for t in capped.tokens if t.confounder)


@pytest.mark.parametrize("unit", ["token", "word"])
def test_ppl_and_random_flag_as_many_as_gradient(analysis: Analysis, unit: str) -> None:
    base = sum(t.confounder for t in decide(analysis, DetectConfig(tau=0.3, unit=unit)).tokens)
    ppl = decide(analysis, DetectConfig(tau=0.3, method="ppl", unit=unit))
    assert sum(t.confounder for t in ppl.tokens) == base
    # ppl flags the student's most surprising units (a word's surprisal: its tokens' sum).
    view = analysis.views[0]
    texts = {"instruction": INSTRUCTION, "output": ""}
    units = units_of(view, texts, unit)  # type: ignore[arg-type]
    surprisal = {(e.start, e.end): units.surprisal[k] for e, k in zip(units.entries,
                                                                      units.owner, strict=True)}
    flagged = {(t.start, t.end) for t in ppl.tokens if t.confounder}
    worst_unflagged = max((v for k, v in surprisal.items() if k not in flagged
                           and is_word(INSTRUCTION[k[0]:k[1]]) and np.isfinite(v)))
    assert all(surprisal[k] >= worst_unflagged for k in flagged)
    runs = [decide(analysis, DetectConfig(tau=0.3, method="random", seed=s, unit=unit),
                   example_id="x") for s in (1, 1, 2)]
    assert all(sum(t.confounder for t in r.tokens) == base for r in runs)
    assert [t.confounder for t in runs[0].tokens] == [t.confounder for t in runs[1].tokens]
    assert [t.confounder for t in runs[0].tokens] != [t.confounder for t in runs[2].tokens]


def test_word_unit_lists_and_flags_whole_words(analysis: Analysis) -> None:
    record = decide(analysis, DetectConfig(tau=0.2))
    assert [t.text for t in record.tokens] == [INSTRUCTION[a:b] for a, b in pieces(INSTRUCTION)]
    assert record.params["unit"] == "word" and record.params["compare"] == "tokens"
    bounds = {p for span in pieces(INSTRUCTION) for p in span}
    assert all(s in bounds and e in bounds for s, e in record.spans)


def test_record_fields_and_pruning_are_consistent(analysis: Analysis) -> None:
    record = decide(analysis, DetectConfig(tau=0.3), example_id="q1",
                    passthrough={"answer": "12"}).to_dict()
    assert set(record) >= {"id", "instruction", "output", "tokens", "spans", "pruned",
                           "collective", "answer"}
    assert "warnings" not in record  # word unit, models with chat templates
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


def test_template_notes_reach_every_record_and_survive_json(llama_pair) -> None:
    teacher, student = (load_model(str(p), device="cpu") for p in llama_pair)
    note = "student 'tiny' has no chat template; using the plain template"
    student.template_note = note  # type: ignore[attr-defined]
    (a,) = Detector(teacher, student).analyse([(INSTRUCTION, OUTPUT)])
    assert a.warnings == (note,)
    again = Analysis.from_dict(json.loads(json.dumps(a.to_dict())))
    for config in (DetectConfig(), DetectConfig(unit="token", tau=0.6)):
        warnings = decide(again, config).to_dict()["warnings"]
        assert warnings[0] == note
        assert len(warnings) == (2 if config.unit == "token" else 1)


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
    assert data["params"]["normalise"] == "segment"
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


def test_different_tokenizers_compare_on_words(model_dir: Path, llama_pair) -> None:
    word_student = load_model(str(tiny.save_pair(model_dir / "w", "llama",
                                                 tiny.word_tokenizer())), device="cpu")
    teacher = load_model(str(llama_pair[0]), device="cpu")
    detector = Detector(teacher, word_student)
    assert not detector.shared_tokens
    (record,) = detector.detect([Example("w", INSTRUCTION, OUTPUT)], DetectConfig(tau=0.2))
    assert [t.text for t in record.tokens] == [INSTRUCTION[a:b] for a, b in pieces(INSTRUCTION)]
    assert record.params["compare"] == "words" and record.params["unit"] == "word"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"tau": 1.5}, "tau"), ({"percentile": 0}, "percentile"), ({"method": "x"}, "method"),
     ({"level": "doc"}, "level"), ({"segments": 4}, "segments"), ({"unit": "char"}, "unit"),
     ({"tau": True}, "tau"), ({"min_gap": -1}, "min_gap"), ({"normalise": "x"}, "normalise")],
)
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DetectConfig(**kwargs)


def test_view_analysis_handles_nan_surprisal() -> None:
    view = ViewAnalysis((0, 1), (ContextToken("instruction", 0, 1),), np.ones(1), np.ones(1),
                        np.array([np.nan]))
    assert np.isnan(ViewAnalysis.from_dict(json.loads(json.dumps(view.to_dict()))).surprisal[0])


def _two_field_analysis() -> Analysis:
    """A response-level view: instruction words, then the earlier response as context."""
    instruction, output = "aa bb cc dd", "xx yy. zz"
    tokens = tuple(ContextToken("instruction", a, b) for a, b in pieces(instruction)) + tuple(
        ContextToken("output", a, b) for a, b in pieces(output[:6]))  # xx, yy, "."
    teacher = np.array([1.0, 2.0, 3.0, 4.0, 9.0, 8.0, 1.0])
    student = np.array([1.5, 1.0, 3.0, 1.0, 1.0, 9.0, 1.0])
    first = ViewAnalysis((0, 9), tokens[:4], teacher[:4], student[:4], None)
    later = ViewAnalysis((6, 9), tokens, teacher, student, None)
    return Analysis(instruction, output, (first, later))


@pytest.mark.parametrize("normalise", ["segment", "joint"])
def test_response_context_is_normalised_per_part_or_jointly(normalise: str) -> None:
    analysis = _two_field_analysis()
    config = DetectConfig(level="response", tau=0.0, normalise=normalise)  # type: ignore[arg-type]
    record = decide(analysis, config)
    assert record.params["normalise"] == normalise
    view = record.views[1]
    got = np.array([t.score for t in view.tokens])
    teacher, student = analysis.views[1].teacher, analysis.views[1].student
    everything = np.ones(7, dtype=bool)
    if normalise == "joint":
        want = confounder_scores(teacher, student, everything)[2]
    else:  # each part alone, as the official script normalises the response part it scores
        want = np.concatenate([confounder_scores(teacher[:4], student[:4], everything[:4])[2],
                               confounder_scores(teacher[4:], student[4:], everything[4:])[2]])
    np.testing.assert_allclose(got, want)
    flagged = [t.text for t in view.tokens if t.confounder]
    # Joint: the response's "yy" takes the only minimum; per part, each part flags its own.
    assert flagged == (["yy"] if normalise == "joint" else ["cc", "yy"])
    # The instruction-level view has one part: both ways agree there.
    assert [t.score for t in record.views[0].tokens] == [
        t.score for t in decide(analysis, DetectConfig(tau=0.0)).views[0].tokens]
    assert "normalise" not in decide(analysis, DetectConfig()).params
