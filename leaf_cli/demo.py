"""`leaf demo`: rebuild the bundled demo pair and write the demo task's data splits."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def demo() -> None:
    """The bundled demo: a tiny teacher/student pair and a synthetic confounder task."""


@demo.command()
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write teacher/ and student/.  [default: the bundled pair]")
def train(out: Path | None) -> None:
    """Train the demo teacher and student from scratch (deterministic, a few CPU minutes)."""
    from leaf_cli.progress import bar
    from leaf_engine.demo import PAIR_DIR
    from leaf_engine.demo.train import STUDENT, TEACHER, train_pair

    target = out or PAIR_DIR
    bars: dict[str, object] = {}
    with bar(TEACHER.steps + STUDENT.steps, "training") as progress:
        def report(name: str, step: int, total: int, loss: float) -> None:
            bars[name] = loss
            progress.set_postfix_str(f"{name} loss {loss:.3f}", refresh=False)
            progress.update(1)

        result = train_pair(target, progress=report)
    click.echo(json.dumps({k: result[k] for k in ("teacher", "student", "train_seconds")},
                          indent=2))
    click.echo(f"wrote the demo pair to {target}", err=True)


@demo.command()
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory for train.jsonl, validation.jsonl and test.jsonl.")
@click.option("--n", "count", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Problems per split.")
@click.option("--seed", type=int, default=0, show_default=True)
def data(out: Path, count: int, seed: int) -> None:
    """Write the demo task's fixed train / validation / test splits with ground truth."""
    from leaf_engine.demo.tasks import generate, write_split

    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        write_split(out / f"{split}.jsonl", generate(split, count, seed=seed))
    click.echo(f"wrote {count} problems per split to {out}", err=True)
