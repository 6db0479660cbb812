"""An on-disk cache of the teacher's top-k log-probabilities on every response token.

The teacher is frozen, so its distributions are the same in every epoch: computing them
once saves a teacher forward pass per step. Each response position keeps its k most likely
token ids, their log-probs at the distillation temperature and the log of the remaining
(tail) mass; `losses.topk_kl_rows` compares the student against that. Storage is three
memory-mapped .npy files (k int32 + k fp32 + 1 fp32 per position) and an index from a row's
content hash (its token ids and target positions) to its slice, in a directory named by a
hash of everything that determines the numbers, so a stale cache is never read.

Under `accelerate launch` every process computes an interleaved share of the rows into the
same files (each writes disjoint slices), so the directory must be on a shared filesystem
when processes span machines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leaf_engine.losses import teacher_topk

log = logging.getLogger(__name__)

COMPLETE = "complete.json"


@dataclass(frozen=True, eq=False)
class CachedRow:
    """One tokenized row: token ids and the positions of response tokens. int32 arrays, not
    tuples of Python ints, so a large training set stays small in memory."""

    ids: np.ndarray  # (T,) int32
    targets: np.ndarray  # (n,) int32, ascending positions of response tokens

    @staticmethod
    def of(ids: Sequence[int], targets: Sequence[int]) -> CachedRow:
        return CachedRow(np.asarray(ids, dtype=np.int32), np.asarray(targets, dtype=np.int32))

    @cached_property
    def key(self) -> str:
        """Content hash: rows with the same ids and targets share cache entries."""
        digest = hashlib.sha1(self.ids.astype(np.int64).tobytes())
        digest.update(self.targets.astype(np.int64).tobytes())
        return digest.hexdigest()


class TeacherCache:
    """Read access to a complete cache: `lookup` returns the rows' stacked top-k tensors."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.index: dict[str, tuple[int, int]] = {
            k: (int(v[0]), int(v[1]))
            for k, v in json.loads((directory / "index.json").read_text()).items()
        }
        self.ids = np.load(directory / "ids.npy", mmap_mode="r")  # (N, k) int32
        self.logp = np.load(directory / "logp.npy", mmap_mode="r")  # (N, k) fp32
        self.tail = np.load(directory / "tail.npy", mmap_mode="r")  # (N,) fp32

    def lookup(self, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Concatenated (ids (R, k), log-probs (R, k), tail (R,)) of the rows, in order."""
        slices = [slice(*self._span(key)) for key in keys]
        ids = np.concatenate([self.ids[s] for s in slices])
        logp = np.concatenate([self.logp[s] for s in slices])
        tail = np.concatenate([self.tail[s] for s in slices])
        return torch.from_numpy(ids), torch.from_numpy(logp), torch.from_numpy(tail)

    def _span(self, key: str) -> tuple[int, int]:
        start, count = self.index[key]
        return start, start + count


def cache_directory(root: Path, meta: dict[str, Any], rows: Sequence[CachedRow]) -> Path:
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for key in sorted({r.key for r in rows}):
        digest.update(key.encode())
    return root / digest.hexdigest()[:20]


def build_cache(
    root: Path,
    meta: dict[str, Any],
    rows: Sequence[CachedRow],
    teacher_rows: Callable[[Sequence[CachedRow]], tuple[torch.Tensor, Any]],
    *,
    k: int,
    temperature: float,
    vocab: int,
    batch_rows: int,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherCache:
    """Compute (or reuse) the cache for `rows` and open it.

    `teacher_rows(batch)` returns the teacher's hidden states at the positions predicting
    each row's targets (rows concatenated, (R, D)) and its LM head. `barrier` synchronises
    processes; `rank`/`world` split the work.
    """
    unique = list({r.key: r for r in rows}.values())
    directory = cache_directory(root, meta, unique)
    if (directory / COMPLETE).is_file():
        log.info("reusing the teacher cache in %s", directory)
        return TeacherCache(directory)
    offsets: dict[str, tuple[int, int]] = {}
    total = 0
    for r in unique:
        offsets[r.key] = (total, len(r.targets))
        total += len(r.targets)
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(directory / "ids.npy", "w+", np.int32, (total, k))
        np.lib.format.open_memmap(directory / "logp.npy", "w+", np.float32, (total, k))
        np.lib.format.open_memmap(directory / "tail.npy", "w+", np.float32, (total,))
        (directory / "index.json").write_text(json.dumps(offsets))
    barrier()
    ids = np.load(directory / "ids.npy", mmap_mode="r+")
    logp = np.load(directory / "logp.npy", mmap_mode="r+")
    tail = np.load(directory / "tail.npy", mmap_mode="r+")
    mine = sorted(unique[rank::world], key=lambda r: len(r.ids))  # similar lengths batch well
    done = 0
    for start in range(0, len(mine), batch_rows):
        batch = mine[start : start + batch_rows]
        hidden, head = teacher_rows(batch)
        top_ids, top_logp, top_tail = teacher_topk(hidden, head, k, temperature=temperature,
                                                   vocab=vocab)
        cursor = 0
        for r in batch:
            begin, count = offsets[r.key]
            ids[begin : begin + count] = top_ids[cursor : cursor + count].cpu().numpy()
            logp[begin : begin + count] = top_logp[cursor : cursor + count].cpu().numpy()
            tail[begin : begin + count] = top_tail[cursor : cursor + count].cpu().numpy()
            cursor += count
        done += len(batch)
        if progress is not None:
            progress(done, len(mine))
    for array in (ids, logp, tail):
        array.flush()
    del ids, logp, tail
    barrier()
    if rank == 0:
        (directory / "meta.json").write_text(json.dumps(meta, indent=2))
        (directory / COMPLETE).write_text(json.dumps({"rows": len(unique), "positions": total}))
    barrier()
    return TeacherCache(directory)
