"""A bounded, expiring cache in front of a peer look-up (cachetools' TTLCache, thread-safe).

Masked names and phones change rarely and a gate scans thousands of codes, so a peer's answer
is kept for a short while. Only answers are kept: a look-up that raises (not found, peer down)
is asked again next time, so a person who registers a moment later is found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import cachetools

T = TypeVar("T")


def cached_lookup(
    load: Callable[[bytes], T], *, max_entries: int = 100_000, ttl_s: float = 60.0
) -> Callable[[bytes], T]:
    """`load`, with its answers kept for `ttl_s` seconds, at most `max_entries` of them."""
    cache: cachetools.TTLCache[bytes, T] = cachetools.TTLCache(max_entries, ttl_s)
    return cachetools.cached(cache, lock=threading.Lock())(load)
