"""`leaf calibrate` end to end on the bundled demo pair, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leaf_engine.calibrate import CURVE_JSON, CURVE_PNG, SCHEMA
from leaf_engine.demo.tasks import generate, write_split
from tests.cli.runner import run


@pytest.fixture(scope="module")
def validation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibrate") / "validation.jsonl"
    write_split(path, generate("validation", 12, seed=5, distractors=2))
    return path


def test_calibrate_writes_the_curve_and_recommends(validation: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "curve"
    code, err = run(["calibrate", "--data", str(validation), "--out", str(out),
                     "--tau-values", "0,0.1,0.5", "--min-gaps", "0,0.5", "--max-new-tokens", "24",
                     "--batch-size", "16"], capsys)
    assert code == 0, err
    data = json.loads((out / CURVE_JSON).read_text())
    assert data["schema"] == SCHEMA and data["threshold"] == "tau"
    assert [(p["tau"], p["min_gap"]) for p in data["points"]] == [
        (0.0, 0.0), (0.0, 0.5), (0.1, 0.0), (0.1, 0.5), (0.5, 0.0), (0.5, 0.5)]
    assert data["params"]["data"] == str(validation)
    assert (out / CURVE_PNG).read_bytes()[:4] == b"\x89PNG"
    best = data["recommended"]
    assert f"recommended tau {best['tau']:g}" in err
    assert f"wrote {CURVE_JSON}, {CURVE_PNG} to {out}" in err


def test_percentiles_alone_sweep_the_official_grid(validation: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["calibrate", "--data", str(validation), "--out", str(tmp_path),
                     "--percentiles", "--max-new-tokens", "24", "--batch-size", "16"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / CURVE_JSON).read_text())
    assert data["threshold"] == "percentile"
    assert [p["percentile"] for p in data["points"]] == data["params"]["percentiles"]
    assert data["params"]["percentiles"][:3] == [1.0, 2.0, 5.0]


@pytest.mark.parametrize(("args", "says"), [
    (["--tau-values", "0.1,x"], "expected numbers separated by commas"),
    (["--tau-values", "0.1,2"], "tau_values"),
    (["--tau-values", "0.1", "--percentiles", "5"], "either --tau-values or --percentiles"),
    (["--min-untouched", "2"], "--min-untouched"),
])
def test_bad_options_end_in_one_line(validation: Path, tmp_path: Path, args: list[str],
                                     says: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["calibrate", "--data", str(validation), "--out", str(tmp_path), *args],
                    capsys)
    assert code == 2
    assert says in err and len(err.strip().splitlines()) == 1, err


def test_rows_without_answers_fail_before_any_model_loads(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"id": "q", "instruction": "Ann has 7 pens.",
                                "output": "7"}) + "\n")
    code, err = run(["calibrate", "--data", str(data), "--out", str(tmp_path / "o"),
                     "--teacher", str(tmp_path / "no-such-model")], capsys)
    assert code == 2
    assert "needs an 'answer'" in err and "'q'" in err and "no-such-model" not in err
