"""Progress bars on stderr that stay quiet when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def bar(total: int, desc: str) -> Iterator[tqdm]:
    with tqdm(total=total, desc=desc, unit="ex", file=sys.stderr, dynamic_ncols=True,
              disable=None, mininterval=0.5) as progress:
        yield progress
