"""`leaf`: one entry point; each command lives in its own module.

Errors the user can fix (bad data, bad flags, missing models) end with exit code 2 and a
single line on stderr, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from leaf_cli.demo import demo
from leaf_cli.detect import detect
from leaf_cli.distill import distill
from leaf_cli.evaluate import evaluate
from leaf_cli.serve import serve
from leaf_cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="leaf-focus", prog_name="leaf")
def cli() -> None:
    """LeaF: find confounding tokens with a teacher and a student model, prune them, and
    distill the teacher's focus into the student."""


cli.add_command(detect)
cli.add_command(demo)
cli.add_command(distill)
cli.add_command(evaluate)
cli.add_command(serve)
cli.add_command(worker)


def main(argv: list[str] | None = None) -> None:
    from leaf_engine.errors import LeafError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Our own bars report progress; transformers' per-file loading bars are noise here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    _quiet_transformers()
    try:
        code = cli.main(args=argv, prog_name="leaf", standalone_mode=False)
    except click.exceptions.Abort:
        print("leaf: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as err:
        where = f"leaf {err.ctx.info_name}" if getattr(err, "ctx", None) else "leaf"
        print(f"{where}: error: {err.format_message()}", file=sys.stderr)
        sys.exit(2)
    except LeafError as err:
        print(f"leaf: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("leaf: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


if __name__ == "__main__":
    main()
