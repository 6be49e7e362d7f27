"""A bounded, expiring cache in front of a peer look-up (cachetools' TTLCache, thread-safe).

Masked names and phones change rarely and a gate scans thousands of codes, so a peer's answer
is kept for a short while. Only answers are kept: a look-up that raises (not found, peer down)
is asked again next time, so a person who registers a moment later is found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import cachetools

T = TypeVar("T")


class CachedLookup(Generic[T]):
    """`load` by key, with its answers kept a while; `forget(keys)` when they change."""

    def __init__(self, load: Callable[[bytes], T], max_entries: int, ttl_s: float) -> None:
        self._load = load
        self._cache: cachetools.TTLCache[bytes, T] = cachetools.TTLCache(max_entries, ttl_s)
        self._lock = threading.Lock()

    def __call__(self, key: bytes) -> T:
        with self._lock:
            found = self._cache.get(key, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        value = self._load(key)  # outside the lock: a slow peer must not stall every reader
        with self._lock:
            self._cache[key] = value
        return value

    def forget(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            for key in keys:
                self._cache.pop(key, None)


_MISSING = object()


def cached_lookup(
    load: Callable[[bytes], T], *, max_entries: int = 100_000, ttl_s: float = 60.0
) -> CachedLookup[T]:
    """`load`, with its answers kept for `ttl_s` seconds, at most `max_entries` of them."""
    return CachedLookup(load, max_entries, ttl_s)
