"""Where the gateways' Redis is and how it is laid out, as the gateways' settings say it
(`GATEWAY_REDIS_MODE`, `GATEWAY_REDIS_URL`, `GATEWAY_REDIS_SENTINEL_MASTER`), checked with the
rules of the Rust crate's `publisher/src/topology.rs`:

```
standalone  one URL: one Redis server (or a proxy that looks like one)
cluster     the comma-separated URLs of some of a Redis Cluster's nodes (its seeds)
sentinel    the comma-separated URLs of the sentinels, and the name of the master they watch
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import InvalidConfiguration

__all__ = ["MODES", "RedisMode", "Topology", "parse_topology"]

#: How the gateways' Redis is laid out: the gateways' `GATEWAY_REDIS_MODE`.
RedisMode = Literal["standalone", "cluster", "sentinel"]

#: Every `RedisMode`, the default first.
MODES: tuple[RedisMode, ...] = ("standalone", "cluster", "sentinel")

#: The URL schemes of a Redis reached over TCP (every mode), and of a local socket (standalone).
_TCP_SCHEMES = ("redis://", "rediss://")
_STANDALONE_SCHEMES = (*_TCP_SCHEMES, "unix://")


@dataclass(frozen=True)
class Topology:
    """The gateways' Redis: its mode, its URLs and, in sentinel mode, the master's name."""

    #: `standalone`, `cluster` or `sentinel`.
    mode: RedisMode
    #: One server's URL, the cluster's seed nodes, or the sentinels; at least one.
    urls: tuple[str, ...]
    #: The name of the master the sentinels watch: in sentinel mode only.
    sentinel_master: str | None = None


def parse_topology(
    url: str, mode: str = "standalone", sentinel_master: str | None = None
) -> Topology:
    """Reads the settings: `url` is one URL (standalone), or a comma-separated list of the
    cluster's seed nodes or of the sentinels (blanks around the commas are ignored);
    `sentinel_master` names the master the sentinels watch, and is required in sentinel mode
    only. Raises `InvalidConfiguration` where they do not fit together.

    ```python
    parse_topology("redis://10.0.0.1:6379,redis://10.0.0.2:6379", "cluster")
    parse_topology("redis://10.0.0.5:26379", "sentinel", "mymaster")
    ```
    """
    if mode not in MODES:
        raise InvalidConfiguration(f"unknown Redis mode {mode!r}: standalone, cluster or sentinel")
    chosen: RedisMode = mode
    if not isinstance(url, str):
        raise InvalidConfiguration(f"the Redis URL must be a string, not {type(url).__name__}")
    urls = tuple(part.strip() for part in url.split(",") if part.strip())
    if not urls:
        raise InvalidConfiguration("the Redis URL is empty")
    schemes = _STANDALONE_SCHEMES if chosen == "standalone" else _TCP_SCHEMES
    for part in urls:
        if not part.startswith(schemes):
            raise InvalidConfiguration(
                f"in {chosen} mode every Redis URL must start with {', '.join(schemes)}; "
                f"got {part!r}"
            )
    if chosen == "standalone" and len(urls) > 1:
        raise InvalidConfiguration(
            'several Redis URLs need mode="cluster" (seed nodes) or mode="sentinel" (sentinels)'
        )
    if sentinel_master is not None and not isinstance(sentinel_master, str):
        raise InvalidConfiguration("sentinel_master must be a string, the master's name")
    master = sentinel_master.strip() if sentinel_master else ""
    if chosen == "sentinel" and not master:
        raise InvalidConfiguration(
            'mode="sentinel" needs the name of the master the sentinels watch (sentinel_master, '
            "the gateways' GATEWAY_REDIS_SENTINEL_MASTER)"
        )
    if chosen != "sentinel" and master:
        raise InvalidConfiguration(
            f'sentinel_master is for mode="sentinel" only, not mode="{chosen}"'
        )
    return Topology(chosen, urls, master or None)
