"""`GET /datasets/{id}?offset=...` deep in a large dataset: seeking to the page through the
row index against parsing every earlier row (what `DataStore.dataset_rows` did before).

    python benchmarks/dataset_pages.py [--rows 100000] [--limit 50] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import RESULTS, machine, markdown_table, median_ms
from leaf_engine.data import iter_jsonl
from leaf_service.store import INDEX_FILE, DataStore

REPEATS = 7


def rows_file(path: Path, count: int) -> None:
    """Rows shaped like the demo task's: ~250 bytes, an id, an answer."""
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            out.write(json.dumps({
                "id": f"row-{n}", "answer": str(n % 97),
                "instruction": f"Ann has {n % 13} pens. Her brother has 9 pens. She buys "
                               f"{n % 7} more pens. How many pens does Ann have now?",
                "output": f"{n % 13} + {n % 7} = {n % 13 + n % 7}. The answer is "
                          f"{n % 13 + n % 7}."}) + "\n")


def parse_from_top(path: Path, offset: int, limit: int) -> list[dict[str, Any]]:
    """The page as the store read it before the index."""
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for index, (_, row) in enumerate(iter_jsonl(handle)):
            if index >= offset:
                out.append(row)
                if len(out) >= limit:
                    break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS / "dataset_pages.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = DataStore(Path(tmp) / "data")
        store.ensure()
        with store.upload() as upload:
            rows_file(upload, args.rows)
            start = time.perf_counter()
            meta = store.add_dataset(upload, dataset_id="0" * 20, name="big.jsonl",
                                     max_rows=args.rows)
            upload_s = time.perf_counter() - start
        path = store.dataset_rows_path(meta["id"])
        assert path is not None
        index_bytes = path.with_name(INDEX_FILE).stat().st_size
        last = args.rows - args.limit
        table = []
        for offset in (0, args.rows // 2, last):
            before = median_ms(lambda o=offset: parse_from_top(path, o, args.limit), REPEATS)
            now = median_ms(lambda o=offset: store.dataset_rows(meta["id"], offset=o,
                                                                limit=args.limit), REPEATS)
            assert store.dataset_rows(meta["id"], offset=offset, limit=args.limit) == \
                parse_from_top(path, offset, args.limit)
            table.append([f"offset {offset:,}", f"{before:.2f}", f"{now:.2f}",
                          f"{before / now:,.0f}x"])
        # A dataset stored before the index: its first page builds one.
        path.with_name(INDEX_FILE).unlink()
        start = time.perf_counter()
        store.dataset_rows(meta["id"], offset=last, limit=args.limit)
        lazy_ms = (time.perf_counter() - start) * 1000

    text = (f"A page of {args.limit} rows of a {args.rows:,}-row dataset "
            f"({meta['bytes'] / 2**20:.1f} MiB; index {index_bytes / 2**10:,.0f} KiB), median "
            f"of {REPEATS}, on {machine()}.\n\n"
            + markdown_table(["page", "parse from the top (before), ms",
                              "seek by the index (now), ms", "speed-up"], table)
            + f"\n\nUpload (validation and index together): {upload_s:.2f} s. The last page "
              f"of a dataset stored without an index, building it first: {lazy_ms:.0f} ms.\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
