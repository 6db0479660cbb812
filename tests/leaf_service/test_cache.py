from __future__ import annotations

import dataclasses
from pathlib import Path

from leaf_service.cache import AnalysisParams, ModelRef, analysis_key, model_identity, record_id

BASE = {"device": "cpu", "dtype": "auto", "instruction": "Ann has 7 pens.", "output": "7."}


def _key(params: AnalysisParams = AnalysisParams(), teacher: str = "t", student: str = "s",
         **overrides: str) -> str:
    return analysis_key(teacher, student, params, **{**BASE, **overrides})


def test_key_covers_what_the_analysis_depends_on() -> None:
    base = _key()
    assert _key() == base  # deterministic
    variants = [
        _key(teacher="t2"), _key(student="s2"), _key(device="cuda"), _key(dtype="bf16"),
        _key(instruction="Ann has 8 pens."), _key(output="8."),
        _key(AnalysisParams(level="response")), _key(AnalysisParams(surprisal=True)),
        _key(AnalysisParams(truncate=True)),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
    # Segments only matter at response level.
    assert _key(AnalysisParams(segments=3)) == base
    assert _key(AnalysisParams(level="response", segments=3)) != _key(
        AnalysisParams(level="response", segments=2))
    # Nothing about thresholds is in AnalysisParams: tau, percentile, seed and unit are
    # applied on read.
    assert {f.name for f in dataclasses.fields(AnalysisParams)} == {
        "level", "segments", "surprisal", "truncate"}
    assert len(record_id(base)) == 16


def test_model_identity_follows_files_and_template(tmp_path: Path, llama_pair) -> None:
    teacher = str(llama_pair[0])
    plain = model_identity(ModelRef(teacher))
    assert plain == model_identity(ModelRef(teacher))
    assert plain != model_identity(ModelRef(teacher, "Q: {instruction}\nA:"))
    assert plain != model_identity(ModelRef(str(llama_pair[1])))
