"""Detection records as JSONL: the one loop behind `leaf detect` and the service's detect
job. Examples are analysed and decided block by block, so memory stays bounded on any
dataset; each record becomes one line, and its span-pruned rows (the official LeaF training
format) go to a second file if asked.

What differs between the callers comes in as parameters: where analyses are already known
(the service's cache), whether pruned variants are verified (`leaf detect --verify`), and
what else is tallied per record. Torch-free at import: the detector is the caller's.

The counts it returns carry the peak memory of the run: the process's peak resident set
(weights included) since the run began, and torch's peak CUDA allocation when a GPU is in
use. Linux lets the peak be reset (`/proc/self/clear_refs`), so a long-lived worker reports
each job's own; elsewhere it is the process's peak so far.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from leaf_engine.analysis import Analysis, DetectConfig, decide, passthrough
from leaf_engine.data import Example, atomic_writer
from leaf_engine.records import DetectionRecord

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from leaf_engine.detect import Detector, Progress

Flags = list[list[bool]]  # per view, per pruned variant (`leaf_engine.selection.Flags`)
Verify = Callable[[list[DetectionRecord]], Sequence[Flags]]
MIN_BLOCK = 64  # examples per block, at least; a block is 8 detector batches otherwise


class KnownAnalyses(Protocol):
    """Analyses the caller already has (a cache), by example index; told what is new."""

    def known(self, indices: Sequence[int]) -> Mapping[int, Analysis]:
        """The analyses it has among these examples; the rest are computed."""
        ...

    def add(self, indices: Sequence[int], analyses: Sequence[Analysis]) -> None:
        """Analyses just computed for these examples, in order."""
        ...


@dataclass(frozen=True)
class DetectionCounts:
    """What was written."""

    records: int
    flagged_tokens: int  # at segment 0, as the records' top-level `tokens` say
    spans: int
    pruned_rows: int  # lines of the export file (0 without one)
    peak_rss_bytes: int | None = None  # peak resident memory of the run, weights included
    peak_cuda_bytes: int | None = None  # peak CUDA memory torch allocated; None without a GPU

    def memory_text(self) -> str:
        """'peak memory 2.1 GiB RSS, 5.3 GiB CUDA', or '' when nothing was measured."""
        parts = [f"{n / 2**30:.2f} GiB {what}" for n, what in
                 ((self.peak_rss_bytes, "RSS"), (self.peak_cuda_bytes, "CUDA")) if n is not None]
        return "peak memory " + ", ".join(parts) if parts else ""


def block_size(batch_size: int) -> int:
    return max(batch_size * 8, MIN_BLOCK)


def write_detections(
    examples: Sequence[Example], config: DetectConfig, out: Path, *,
    detector: Detector | None, batch_size: int, export: Path | None = None,
    progress: Progress | None = None, cache: KnownAnalyses | None = None,
    verify: Verify | None = None, on_record: Callable[[dict[str, Any]], None] | None = None,
) -> DetectionCounts:
    """Detect confounders in `examples` and write one JSON record per line to `out` (and
    the pruned rows to `export`), each file renamed into place only once complete.

    `detector` analyses what `cache` does not know (it may be None when the cache knows
    every example); `progress` gets its steps. `verify` marks each pruned variant
    `verified`; `on_record` sees each record's JSON form after it is written.
    """
    flagged = spans = exported = 0
    _reset_peaks()
    with ExitStack() as stack:
        records = stack.enter_context(atomic_writer(out))
        rows = stack.enter_context(atomic_writer(export)) if export is not None else None
        block = block_size(batch_size)
        for start in range(0, len(examples), block):
            indices = range(start, min(start + block, len(examples)))
            analyses = _analyses(examples, indices, config, detector, progress, cache)
            found = [decide(a, config, example_id=examples[i].id,
                            passthrough=passthrough(examples[i]))
                     for i, a in zip(indices, analyses, strict=True)]
            marks: Sequence[Flags | None] = (verify(found) if verify is not None
                                             else [None] * len(found))
            for record, flags in zip(found, marks, strict=True):
                fields, pruned = _json_forms(record, flags)
                _write_line(records, fields)
                flagged += sum(t.confounder for t in record.tokens)
                spans += len(record.spans)
                if rows is not None:
                    for row in pruned:
                        _write_line(rows, row)
                    exported += len(pruned)
                if on_record is not None:
                    on_record(fields)
    return DetectionCounts(len(examples), flagged, spans, exported, *_peaks())


def _analyses(
    examples: Sequence[Example], indices: range, config: DetectConfig,
    detector: Detector | None, progress: Progress | None, cache: KnownAnalyses | None,
) -> list[Analysis]:
    """The block's analyses in order: known ones from the cache, the rest computed."""
    known = dict(cache.known(indices)) if cache is not None else {}
    todo = [i for i in indices if i not in known]
    if todo:
        if detector is None:
            raise ValueError(f"{len(todo)} examples have no known analysis and no detector "
                             "was given")
        fresh = detector.analyse(
            [(examples[i].instruction, examples[i].output) for i in todo], level=config.level,
            segments=config.segments, with_surprisal=config.needs_surprisal, progress=progress,
        )
        if cache is not None:
            cache.add(todo, fresh)
        known.update(zip(todo, fresh, strict=True))
    return [known[i] for i in indices]


def _json_forms(record: DetectionRecord, flags: Flags | None
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if flags is None:
        return record.to_dict(), record.export_rows()
    # Only verification needs it, and it imports the models (torch).
    from leaf_engine.selection import with_verified

    return with_verified(record, flags)


def _write_line(handle: IO[str], data: dict[str, Any]) -> None:
    handle.write(json.dumps(data, ensure_ascii=False) + "\n")


def _reset_peaks() -> None:
    """Start the peak-memory counters afresh, where the platform allows."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak resident set size (Linux >= 4.0)
    except OSError:
        log.debug("cannot reset the peak RSS; reporting the process's peak so far")
    torch = sys.modules.get("torch")  # CUDA is only in use if the caller imported torch
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def _peaks() -> tuple[int | None, int | None]:
    """(peak RSS, peak CUDA allocation) in bytes since `_reset_peaks`."""
    rss = None
    try:
        with open("/proc/self/status") as handle:
            rss = next((int(line.split()[1]) * 1024 for line in handle
                        if line.startswith("VmHWM:")), None)
    except OSError:
        pass
    if rss is None:
        import resource  # POSIX only, so imported where /proc is missing

        # Linux reports ru_maxrss in KiB, macOS in bytes.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = peak if sys.platform == "darwin" else peak * 1024
    torch = sys.modules.get("torch")
    cuda = (int(torch.cuda.max_memory_allocated())
            if torch is not None and torch.cuda.is_initialized() else None)
    return rss, cuda
