"""The colour service's configuration, read once from the environment at start.

| variable                              | default                               |
|---------------------------------------|---------------------------------------|
| HEALTHCODE_COLOUR_PORT                | 50053                                 |
| HEALTHCODE_RISK_INDEX_ADDR            | 127.0.0.1:50052 (WatchIndex)          |
| HEALTHCODE_DECLARATION_ADDR           | 127.0.0.1:50051 (masked phones, R7)   |
| HEALTHCODE_COLOUR_RULE_SET            | services/rules/default.toml           |
| HEALTHCODE_COLOUR_RECONNECT_MAX_S     | 5 (backoff ceiling, seconds)          |
| HEALTHCODE_COLOUR_FRESHNESS_S         | 30 (ListSources poll, seconds)        |
| HEALTHCODE_COLOUR_SNAPSHOT_S          | 300 (own index snapshot; 0: never)    |
| HEALTHCODE_COLOUR_PROCESSES           | 1 (worker processes on the one port)  |
| HEALTHCODE_SHARED_KEYS                | on (off: every replica keeps its keys) |
| HEALTHCODE_DATA_DIR, HEALTHCODE_SECRET, ... | see services/_common/config.py  |

The rule-set, reconnect, freshness and snapshot settings are those of every replica of the
verdicts (`ReplicaConfig`): the colour service's and the one each display process holds, so
both start from the same rule set and follow the index alike.

With HEALTHCODE_COLOUR_PROCESSES = N > 1 the process started supervises N workers on the one port
(SO_REUSEPORT, services/_common/workers.py), each with its own replica and its own snapshot
`<data_dir>/colour/index.<i>.snapshot`.

Every replica on a machine (the colour service's and each display process's, workers or not) and
the risk index read the person and phone keys, most of an index's memory, from `persons.keys` and
`phones.keys` in `<data_dir>/shared-keys/`, which all of them map read-only: the machine holds one
copy of them, not one a process (`Index.share_keys`, matcher_ext/src/shared.rs). A replica writes
the files when it loads a whole index version and finds them missing, damaged, another registry's
or well short of its own keys (services/_common/shared_keys.py). HEALTHCODE_SHARED_KEYS=off keeps
the keys in each process instead.

The rule set activated through SetRuleSet is kept in `<data_dir>/colour/rule_set.toml` and wins
over HEALTHCODE_COLOUR_RULE_SET at the next start, so a restart does not undo an activation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from services._common.config import ConfigError, PlatformConfig, env_float, env_int
from services._common.shared_keys import shared_keys_dir
from services._common.workers import MAX_PROCESSES
from services.rules import DEFAULT_RULE_SET_PATH


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """How one replica of the verdicts (colour, or a display process) is made and fed."""

    risk_index_addr: str
    declaration_addr: str
    initial_rule_set: Path
    active_rule_set_file: Path
    reconnect_initial_s: float
    reconnect_max_s: float
    freshness_interval_s: float
    snapshot_path: Path
    snapshot_interval_s: float
    # The replicas of one machine read the person and phone keys from files there, one copy
    # for all (Index.share_keys); None: this one keeps its own in memory.
    shared_keys_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], platform: PlatformConfig, home: str) -> ReplicaConfig:
        """`home`: the replica's directory under the data directory (its own snapshot)."""
        rule_set = Path(env.get("HEALTHCODE_COLOUR_RULE_SET", "") or DEFAULT_RULE_SET_PATH)
        if not rule_set.is_file():
            raise ConfigError(f"HEALTHCODE_COLOUR_RULE_SET: {rule_set} is not a file")
        reconnect_max = env_float(env, "HEALTHCODE_COLOUR_RECONNECT_MAX_S", 5.0, low=0.1)
        return cls(
            risk_index_addr=platform.peers.risk_index,
            declaration_addr=platform.peers.declaration,
            initial_rule_set=rule_set,
            active_rule_set_file=platform.data_dir / "colour" / "rule_set.toml",
            reconnect_initial_s=min(0.1, reconnect_max),
            reconnect_max_s=reconnect_max,
            freshness_interval_s=env_float(env, "HEALTHCODE_COLOUR_FRESHNESS_S", 30.0, low=0.1),
            snapshot_path=platform.data_dir / home / "index.snapshot",
            snapshot_interval_s=env_float(env, "HEALTHCODE_COLOUR_SNAPSHOT_S", 300.0, low=0.0),
            shared_keys_dir=shared_keys_dir(env, platform),
        )

    def for_worker(self, index: int) -> ReplicaConfig:
        """The replica of worker `index` of a service with several processes: its own
        snapshot file (`index.<i>.snapshot`), everything else alike."""
        return replace(self, snapshot_path=self.snapshot_path.with_name(f"index.{index}.snapshot"))


@dataclass(frozen=True, slots=True)
class ColourConfig:
    platform: PlatformConfig
    port: int
    replica: ReplicaConfig
    processes: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ColourConfig:
        env = os.environ if env is None else env
        platform = PlatformConfig.from_env(env)
        return cls(
            platform=platform,
            port=platform.ports.colour,
            replica=ReplicaConfig.from_env(env, platform, "colour"),
            processes=env_int(env, "HEALTHCODE_COLOUR_PROCESSES", 1, low=1, high=MAX_PROCESSES),
        )

    def for_worker(self, index: int, port: int | None) -> ColourConfig:
        """Worker `index` of several processes, on the port its parent holds."""
        return replace(
            self,
            port=self.port if port is None else port,
            replica=self.replica.for_worker(index),
        )
