"""`leaf evaluate`: greedy decoding, answer checking, teacher agreement; a JSON report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from leaf_cli.options import config_options
from leaf_cli.progress import bar
from leaf_engine.config_fields import field_specs
from leaf_engine.eval_config import EvalConfig

OPTIONS = ("teacher", "max_new_tokens", "batch_size", "answer_check", "code_timeout_s",
           "code_memory_mb", "group_by", "prompt_template", "device")
# The command's result is the report, so unlike the engine's `out` it is required here.
_OUT_HELP = next(s.help for s in field_specs(EvalConfig) if s.name == "out")


@click.command()
@config_options(EvalConfig, ("model", "data"), paths=("data",))
@click.option("--out", type=click.Path(path_type=Path), required=True, help=_OUT_HELP)
@config_options(EvalConfig, OPTIONS, flags={"code_timeout_s": "--code-timeout"})
@click.option("--force-template", is_flag=True,
              help="Use --prompt-template (or the default plain one) even for models that "
                   "have a chat template.")
def evaluate(out: Path, force_template: bool, **options: Any) -> None:
    """Score a model on a JSONL file by greedy decoding and answer checking."""
    from leaf_engine.evaluate import evaluate as run
    from leaf_engine.models import load_model

    config = EvalConfig(out=str(out), **options)
    allow_unsandboxed_with_warning()
    model, teacher = (
        None if name is None else load_model(name, device=config.device,
                                             prompt_template=config.prompt_template,
                                             force_template=force_template)
        for name in (config.model, config.teacher))
    for loaded in (model, teacher):
        if loaded is not None and loaded.template_note:
            click.echo(f"leaf: warning: {loaded.template_note}", err=True)
    with bar(0, "evaluate") as progress:
        def update(done: int, total: int) -> None:
            progress.total = total
            progress.n = done
            progress.refresh()

        report = run(config, model=model, teacher=teacher, progress=update)
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
