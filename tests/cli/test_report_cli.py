"""`leaf report` end to end: files written, --against, --top, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import leaf_cli.main
from tests.cli.runner import run
from tests.leaf_engine.test_report import corpus, naive


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # A no-op once leaf_cli/main.py lists the command itself.
    monkeypatch.setitem(leaf_cli.main.COMMANDS, "report", "leaf_cli.report")


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_report_writes_json_html_and_markdown(tmp_path: Path, capsys) -> None:
    pairs = corpus(60, seed=4)
    records = _write(tmp_path / "records.jsonl", [r for r, _ in pairs])
    out = tmp_path / "report"
    code, err = run(["report", str(records), "--out", str(out), "--top", "5"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json",
                                                      "report.md"]
    data = json.loads((out / "report.json").read_text())
    assert data["schema"] == "leaf.report/1" and data["records"] == 60
    assert data["comparison"] is None
    want = naive(pairs, 0)
    main = data["segments"][0]
    assert (main["flags"], main["spans"]) == (want["flags"], want["spans"])
    assert len(main["patterns"]["rows"]) == 5
    assert [s["segment"] for s in data["segments"]] == [0, 1]
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    md = (out / "report.md").read_text()
    assert md.startswith("# LeaF confounder report") and "### Flags by category" in md
    assert f"wrote report.json, report.html, report.md to {out}: 60 records" in err


def test_against_adds_a_comparison_to_every_output(tmp_path: Path, capsys) -> None:
    a = _write(tmp_path / "a.jsonl", [r for r, _ in corpus(50, seed=1)])
    b = _write(tmp_path / "b.jsonl", [r for r, _ in corpus(30, seed=2)])
    out = tmp_path / "cmp"
    code, err = run(["report", str(a), "--against", str(b), "--out", str(out)], capsys)
    assert code == 0, err
    data = json.loads((out / "report.json").read_text())
    assert data["comparison"]["against"] == str(b)
    assert data["comparison"]["records_against"] == 30
    assert {c["key"] for c in data["comparison"]["segments"][0]["categories"]} == {
        "number", "name", "function", "punctuation", "template", "other"}
    assert "## Comparison" in (out / "report.md").read_text()
    assert "<h2>Comparison</h2>" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "line 2: invalid JSON"),
        ('{"instruction": "ab", "tokens": [{"start": 0, "end": 1, "score": null}]}\n',
         "line 2: tokens[0].score must be a number"),
    ],
)
def test_bad_record_exits_2_with_one_line(tmp_path: Path, capsys, content: str,
                                          message: str) -> None:
    good = json.dumps(corpus(1)[0][0]) + "\n"
    records = tmp_path / "bad.jsonl"
    records.write_text(good + content + good)
    out = tmp_path / "report"
    code, err = run(["report", str(records), "--out", str(out)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"leaf: error: {message}"), err
    assert not out.exists()


def test_missing_file_and_bad_top_exit_2(tmp_path: Path, capsys) -> None:
    code, err = run(["report", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)], capsys)
    assert code == 2 and "records file not found" in err
    records = _write(tmp_path / "r.jsonl", [corpus(1)[0][0]])
    code, err = run(["report", str(records), "--out", str(tmp_path / "o"), "--top", "0"],
                    capsys)
    assert code == 2 and "--top" in err


def test_report_on_real_detection_records(tmp_path: Path, capsys) -> None:
    """The demo pair's own records, verified: the report reads what `leaf detect` writes."""
    code, err = run(["demo", "data", "--out", str(tmp_path / "data"), "--n", "12"], capsys)
    assert code == 0, err
    records = tmp_path / "records.jsonl"
    code, err = run(["detect", "--data", str(tmp_path / "data" / "test.jsonl"), "--out",
                     str(records), "--verify", "--level", "response"], capsys)
    assert code == 0, err
    code, err = run(["report", str(records), "--out", str(tmp_path / "report")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    main = data["segments"][0]
    assert main["flags"] == sum(t["confounder"] for r in lines for t in r["tokens"])
    assert main["verified"]["checked"] == sum(
        any("verified" in p for p in r["pruned"]) for r in lines)
    assert [s["segment"] for s in data["segments"]] == [0, 1]
    assert data["segments"][1]["flags"] == sum(
        t["confounder"] for r in lines for t in r["views"][0]["tokens"])
