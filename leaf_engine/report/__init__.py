"""The corpus-level confounder report: what misleads the student across a dataset.

    builder = build_report("records.jsonl")              # streams; memory flat in records
    report = builder.report(source="records.jsonl")      # a `Report` (report.json's schema)
    write_report(report, Path("out"))                    # report.json, report.html, report.md

Computed from detection records alone (the JSONL `leaf detect` writes), without a model.
`ReportBuilder.add` takes one decoded record at a time, so a detect job can feed it as it
writes. The schema of report.json is in docs/report.md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from leaf_engine.data import atomic_writer
from leaf_engine.report.aggregate import ReportBuilder, ReportConfig, build_report, read_records
from leaf_engine.report.compare import compare
from leaf_engine.report.render_html import render_html
from leaf_engine.report.render_md import render_markdown
from leaf_engine.report.schema import SCHEMA, TAUS, Report

FILES = ("report.json", "report.html", "report.md")

__all__ = [
    "FILES",
    "SCHEMA",
    "TAUS",
    "Report",
    "ReportBuilder",
    "ReportConfig",
    "build_report",
    "compare",
    "read_records",
    "render_html",
    "render_markdown",
    "report_with_comparison",
    "write_report",
]


def report_with_comparison(this: ReportBuilder, other: ReportBuilder | None, *, source: str,
                           against: str = "") -> Report:
    """`this` run's report, with a comparison section against `other` when given."""
    report = this.report(source=source)
    if other is None:
        return report
    return dataclasses.replace(report, comparison=compare(this, other, against=against))


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write report.json, report.html and report.md into `out_dir`, each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = (json.dumps(report.to_dict(), ensure_ascii=False, indent=1) + "\n",
             render_html(report), render_markdown(report))
    paths = []
    for name, text in zip(FILES, texts, strict=True):
        with atomic_writer(out_dir / name) as handle:
            handle.write(text)
        paths.append(out_dir / name)
    return paths
