"""`leaf evaluate`: greedy decoding, answer checking, teacher agreement; a JSON report."""

from __future__ import annotations

from pathlib import Path

import click

from leaf_cli.progress import bar


@click.command()
@click.option("--model", required=True, help="Model to evaluate: local path or hub id.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="JSONL: instruction[, input], answer or tests[, id].")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Where to write the JSON report.")
@click.option("--teacher", default=None,
              help="Also evaluate a teacher and report output similarity (Jaccard).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Prompts generated together (left padding).")
@click.option("--answer-check", type=click.Choice(["auto", "number", "math"]), default="auto",
              show_default=True,
              help="number: final-number match; math: math-verify; auto: by the answer.")
@click.option("--code-timeout", type=click.FloatRange(0, 3600, min_open=True), default=10.0,
              show_default=True, help="Seconds per code test run.")
@click.option("--code-memory-mb", type=click.IntRange(min=64), default=1024, show_default=True,
              help="Memory limit per code test run.")
@click.option("--group-by", default=None, help="Also report accuracy per value of this field.")
@click.option("--prompt-template", default=None,
              help="Plain template with '{instruction}' for models without a chat template.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
def evaluate(
    model: str, data: Path, out: Path, teacher: str | None, max_new_tokens: int,
    batch_size: int, answer_check: str, code_timeout: float, code_memory_mb: int,
    group_by: str | None, prompt_template: str | None, device: str,
) -> None:
    """Score a model on a JSONL file by greedy decoding and answer checking."""
    from leaf_engine.evaluate import EvalConfig
    from leaf_engine.evaluate import evaluate as run

    config = EvalConfig(
        model=model, data=str(data), out=str(out), teacher=teacher,
        max_new_tokens=max_new_tokens, batch_size=batch_size, device=device,
        answer_check=answer_check, code_timeout_s=code_timeout,  # type: ignore[arg-type]
        code_memory_mb=code_memory_mb, group_by=group_by, prompt_template=prompt_template,
    )
    allow_unsandboxed_with_warning()
    with bar(0, "evaluate") as progress:
        def update(done: int, total: int) -> None:
            progress.total = total
            progress.n = done
            progress.refresh()

        report = run(config, progress=update)
    parts = [f"accuracy {report.accuracy:.3f} ({report.correct}/{report.total})"]
    if report.pass_at_1 is not None:
        parts.append(f"pass@1 {report.pass_at_1:.3f}")
    if report.teacher is not None:
        parts.append(f"teacher {report.teacher['accuracy']:.3f}, Jaccard {report.jaccard:.3f}")
    click.echo(f"{'; '.join(parts)}; report written to {out}", err=True)


def allow_unsandboxed_with_warning() -> None:
    """Where bubblewrap isolation is missing, check answers anyway (on the command line the
    user runs their own data as themselves) and say so once on stderr, when code first runs."""
    from leaf_engine.sandbox import allow_unsandboxed, isolation_problem

    def warn(problem: str) -> None:
        click.echo(f"leaf: warning: {problem}; model-written code and math answers are "
                   "checked in a plain child process that can read your files and reach the "
                   "network (install bubblewrap to isolate them)", err=True)

    if isolation_problem() is not None:
        allow_unsandboxed(True, warn=warn)
