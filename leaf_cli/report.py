"""`leaf report`: a corpus-level confounder report from `leaf detect`'s records."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from leaf_cli.options import config_kwargs, config_options
from leaf_engine.report.aggregate import ReportConfig

if TYPE_CHECKING:
    from leaf_engine.report import ReportBuilder


@click.command()
@click.argument("records", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory for report.json, report.html and report.md.")
@click.option("--against", type=click.Path(path_type=Path), default=None,
              help="Another run's records (another student, tau, or before distillation): "
                   "add which patterns and categories grew or shrank.")
@config_options(ReportConfig, ["top"])
def report(records: Path, out: Path, against: Path | None, **settings: object) -> None:
    """Report what the flags in RECORDS.jsonl have in common: the most flagged patterns,
    flags by category and position, the verified-fix share, and flags against tau."""
    from leaf_engine.report import report_with_comparison, write_report

    config = ReportConfig(**config_kwargs(ReportConfig, settings))
    this = _build(records, config)
    other = _build(against, config) if against is not None else None
    result = report_with_comparison(this, other, source=str(records),
                                    against=str(against or ""))
    paths = write_report(result, out)
    main = result.segments[0]
    click.echo(f"wrote {', '.join(p.name for p in paths)} to {out}: {result.records} records, "
               f"{main.flags} flags in {main.spans} spans", err=True)


def _build(path: Path, config: ReportConfig) -> ReportBuilder:
    from tqdm import tqdm

    from leaf_engine.errors import InputError
    from leaf_engine.report import build_report

    if not path.is_file():
        raise InputError(f"records file not found: {path}")
    with tqdm(total=path.stat().st_size, desc=f"reading {path.name}", unit="B",
              unit_scale=True, file=sys.stderr, dynamic_ncols=True, disable=None,
              mininterval=0.5) as progress:
        return build_report(path, config, progress=progress.update)
