"""Handing the heap pages an index version freed back to the system, after a bulk change.

An index version shares what did not change with the version before (`Arc` buckets in the
matcher); what a change replaced is freed when the old version goes. glibc's allocator keeps
freed pages for reuse rather than return them, so a replica that followed a city's import, one
50,000-person version after another, held about a fifth more memory than the index needs: a
2,000,000-person index grown by 40 such versions held 261 MiB, 212 MiB after `malloc_trim(0)`
(BENCHMARKS.md, issue 8). `malloc_trim` walks the heap, about 13 ms at that size, so it runs
only after a bulk change and at most once per `MIN_INTERVAL_S`; the steady trickle of small
versions reuses its own freed pages.

On a C library without `malloc_trim` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# A change of at least this many bytes (`changes.approx_bytes`: 1 MiB is about 20,000 people
# with their phones) is bulk: an import's chunk, a whole feed, a county re-graded.
BULK_BYTES = 1 << 20
MIN_INTERVAL_S = 10.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_MALLOC_TRIM = _load_malloc_trim()


class FreedMemory:
    """Returns freed heap pages to the system after bulk changes, at most once per interval."""

    def __init__(
        self,
        trim: Callable[[int], int] | None = _MALLOC_TRIM,
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self._trim = trim
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._last: float | None = None
        self._lock = threading.Lock()
        self.trims = 0

    def after_change(self, changed_bytes: int) -> bool:
        """Call after a version's old data was let go: True if the heap was trimmed now."""
        if self._trim is None or changed_bytes < BULK_BYTES:
            return False
        with self._lock:
            now = self._clock()
            if self._last is not None and now - self._last < self._min_interval_s:
                return False
            self._last = now
            self.trims += 1
        start = time.perf_counter()
        self._trim(0)
        logger.debug("freed heap pages returned in %.1f ms", 1000 * (time.perf_counter() - start))
        return True
