"""One copy of an index's keys for every process of a machine (issue 9, item 2).

The person and phone keys are most of an index's memory (about 1 GiB of 1.3 at 18 M people).
Every process that holds the index (the risk index, the colour service, each display process
and worker) has the same ones: ids are given in the order keys are first seen, and the
replicas follow the risk index's stream. So a process that loads a whole index version reads
its keys from `persons.keys` and `phones.keys` in `<data_dir>/shared-keys/`, which every such
process maps read-only: the kernel keeps one copy in its page cache for all
(`Index.share_keys`, matcher_ext/src/shared.rs). The first to load writes them; a process that
finds them missing, damaged, another registry's, or holding under nine tenths of its keys
writes them again. Keys learnt after the load (new registrations) stay in the process until it
next loads a whole version. HEALTHCODE_SHARED_KEYS=off keeps every key in each process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import healthcode_matcher as hm

from services._common.config import ConfigError, PlatformConfig

ENV = "HEALTHCODE_SHARED_KEYS"


def shared_keys_dir(env: Mapping[str, str], platform: PlatformConfig) -> Path | None:
    """`<data_dir>/shared-keys`, the same for every service, unless HEALTHCODE_SHARED_KEYS=off."""
    setting = env.get(ENV, "on").strip().lower() or "on"
    if setting not in ("on", "off"):
        raise ConfigError(f"{ENV}: {setting!r}; say on or off")
    return platform.data_dir / "shared-keys" if setting == "on" else None


def share_keys(index: hm.Index, directory: Path | None, log: logging.Logger) -> hm.Index:
    """`index` with its keys read from the machine's shared key files (itself when `directory`
    is None, or when the files cannot be written: the process still serves, logged)."""
    if directory is None:
        return index
    start = time.perf_counter()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("index version %d: keys not shared: %s", index.version, exc)
        return index
    shared, done = index.share_keys(str(directory))
    kept = {table: how for table, how in done.items() if how.startswith("kept")}
    if kept:
        log.warning("index version %d: keys not shared: %s", index.version, kept)
    log.info(
        "index version %d: %d of %d person keys from %s (persons %s, phones %s) in %.1f s",
        index.version,
        shared.shared_person_count,
        shared.person_count,
        directory,
        done["persons"],
        done["phones"],
        time.perf_counter() - start,
    )
    return shared
