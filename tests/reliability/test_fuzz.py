"""A bounded schemathesis pass, every check on, against a real `leaf serve` with a token.

No project configuration, hooks or allowances: what a newcomer's `schemathesis run --checks
all` sees, so the OpenAPI schema alone must say which requests are valid. The same command,
with more examples, is in docs/reliability.md. The server runs without a worker (new prompts
are answered 202 at once), which keeps the pass to about a minute; the API's answers are what
is under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.procs import leaf_serve, service_env

TOKEN = "fuzz-token"
EXAMPLES = 25  # per operation and phase; ~1 minute on 2 busy cores
SEED = 20261128


@pytest.mark.slow
def test_schemathesis_finds_no_failure(tmp_path: Path) -> None:
    env = service_env(None, LEAF_DATA_DIR=tmp_path / "data", LEAF_API_TOKEN=TOKEN,
                      LEAF_DETECT_WAIT_S=0, LEAF_DEVICE="cpu")
    with leaf_serve(env, "--no-worker", workers=0, log=tmp_path / "serve.log") as (url, _):
        command = [
            sys.executable, "-m", "schemathesis.cli", "run",
            f"{url}/openapi.json", "--checks", "all", "-H", f"Authorization: Bearer {TOKEN}",
            "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
            "--no-color", "--report", "json", "--report-dir", str(tmp_path / "report"),
        ]
        # From the test's own directory, with no SCHEMATHESIS_* variables: no configuration
        # file or hooks are picked up.
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env={k: v for k, v in os.environ.items()
                                                if not k.startswith("SCHEMATHESIS_")})
    report = json.loads(next((tmp_path / "report").glob("*.json")).read_text())
    cases = report["test_cases"]
    print(f"\n[figure] schemathesis: {cases['generated']} cases over "
          f"{report['operations']['tested']} operations in {report['running_time']:.0f} s, "
          f"{cases['with_failures']} with failures, {cases['errored']} errored")
    assert done.returncode == 0, done.stdout[-8000:]
    assert report["operations"]["tested"] == report["operations"]["total"] >= 14
    assert report["failures"] == [] and report["errors"] == []
    assert all(p["status"] in {"success", "skip"} for p in report["phases"].values())
    # Every pattern the schema states is one a validator can enforce (else it is dropped).
    assert not report["warnings"].get("unsupported_regex"), report["warnings"]
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
