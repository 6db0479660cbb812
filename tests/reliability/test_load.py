"""Bounded load against a real `leaf serve` with the bundled demo pair: 50 concurrent
clients, mixed requests (cached and new /detect, job submissions, polls, listings), repeated
in rounds. 0 errors, every job accounted for, and no growth of the worker's memory.

benchmarks/service_load.py is the load generator; docs/reliability.md has the full-size runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import service_load
from tests.reliability.procs import leaf_serve, service_env

ROUNDS = 4
GROWTH_MIB = 16.0  # tolerance: the allocator's noise between rounds is a few MiB


@pytest.mark.slow
def test_fifty_clients_mixed_load_no_errors_no_growth(tmp_path: Path) -> None:
    env = service_env(None, LEAF_DATA_DIR=tmp_path / "data", LEAF_DETECT_WAIT_S=60)
    with leaf_serve(env, log=tmp_path / "serve.log") as (url, _):
        args = service_load.parser().parse_args([
            "--url", url, "--clients", "50", "--requests", "200", "--rounds", str(ROUNDS),
            "--mix", "full", "--share-new", "0.1", "--share-jobs", "0.02", "--seed", "7",
            "--timeout", "240", "--out", str(tmp_path)])
        result = service_load.measure(args)
    print("\n" + service_load.markdown(result))
    assert result["errors"] == 0, result["error_examples"]
    assert result["requests"] == 200 * ROUNDS
    # Every submitted job finished and is listed by GET /jobs.
    assert result["jobs_submitted"] == 4 * ROUNDS and result["job_problems"] == []
    kinds = result["by_kind"]
    assert kinds["new"]["ok"] == kinds["new"]["requests"] == 20 * ROUNDS
    assert kinds["cached"]["ok"] == kinds["cached"]["requests"] > 0
    rss = [r["worker_rss_mib"] for r in result["rounds"]]
    assert all(rss), "the worker process was not found"
    # After the first round (models warm, buffers sized), no round may end much higher.
    assert max(rss[1:]) - rss[1] < GROWTH_MIB, f"worker RSS by round: {rss} MiB"
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
