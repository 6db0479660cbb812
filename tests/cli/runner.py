"""Running `leaf` in-process, as the console script would, for CLI tests."""

from __future__ import annotations

import pytest

from leaf_cli.main import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr) of `leaf ARGS`."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return int(exit_info.value.code or 0), capsys.readouterr().err
