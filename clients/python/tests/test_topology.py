"""The Redis settings (mode, URLs, the sentinels' master) as the Rust crate's
`publisher/src/topology.rs` checks them: what fits, and the clear `InvalidConfiguration` of what
does not, raised by `from_url` before anything is connected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway_publisher import (
    AsyncPublisher,
    InvalidConfiguration,
    Publisher,
    PublisherError,
)
from gateway_publisher.topology import MODES, Topology, parse_topology

from harness import REPO


def test_the_modes_are_the_gateways() -> None:
    topology = (REPO / "publisher" / "src" / "topology.rs").read_text()
    for mode in MODES:
        assert f'"{mode}" => Ok(Self::' in topology, mode
    assert MODES[0] == "standalone"


@pytest.mark.parametrize(
    ("url", "mode", "master", "expected"),
    [
        ("redis://a:6379", "standalone", None, Topology("standalone", ("redis://a:6379",))),
        (
            "unix:///run/redis.sock",
            "standalone",
            None,
            Topology("standalone", ("unix:///run/redis.sock",)),
        ),
        (" rediss://a:6379 ", "standalone", "", Topology("standalone", ("rediss://a:6379",))),
        (
            "redis://10.0.0.1:6379, redis://10.0.0.2:6379,",
            "cluster",
            None,
            Topology("cluster", ("redis://10.0.0.1:6379", "redis://10.0.0.2:6379")),
        ),
        (
            "redis://s1:26379,redis://s2:26379",
            "sentinel",
            " mymaster ",
            Topology("sentinel", ("redis://s1:26379", "redis://s2:26379"), "mymaster"),
        ),
    ],
)
def test_settings_that_fit(url: str, mode: str, master: str | None, expected: Topology) -> None:
    assert parse_topology(url, mode, master) == expected


REFUSED: list[tuple[str, Any, Any, str]] = [
    ("redis://a,redis://b", "standalone", None, "several Redis URLs need"),
    ("redis://a", "clustered", None, "unknown Redis mode 'clustered'"),
    ("redis://a", None, None, "unknown Redis mode None"),
    ("redis://s1:26379", "sentinel", None, "needs the name of the master"),
    ("redis://s1:26379", "sentinel", "  ", "needs the name of the master"),
    ("redis://a", "cluster", "mymaster", 'sentinel_master is for mode="sentinel" only'),
    ("redis://a", "standalone", "mymaster", 'sentinel_master is for mode="sentinel" only'),
    ("http://a", "cluster", None, "must start with redis://, rediss://"),
    ("unix:///run/redis.sock", "cluster", None, "must start with redis://, rediss://"),
    ("redis://a,unix:///s", "sentinel", "m", "must start with redis://, rediss://"),
    ("http://a", "standalone", None, "must start with redis://, rediss://, unix://"),
    (" , ", "cluster", None, "the Redis URL is empty"),
    ("", "standalone", None, "the Redis URL is empty"),
    ("redis://s1", "sentinel", 7, "sentinel_master must be a string"),
]


@pytest.mark.parametrize(("url", "mode", "master", "message"), REFUSED)
def test_settings_that_do_not_fit_are_refused_clearly(
    url: str, mode: Any, master: Any, message: str
) -> None:
    with pytest.raises(InvalidConfiguration, match=message) as refused:
        parse_topology(url, mode, master)
    assert refused.value.code == "invalid_configuration"
    assert isinstance(refused.value, PublisherError) and isinstance(refused.value, ValueError)


@pytest.mark.parametrize(("url", "mode", "master", "message"), REFUSED)
def test_from_url_refuses_them_before_connecting(
    url: str, mode: Any, master: Any, message: str
) -> None:
    with pytest.raises(InvalidConfiguration, match=message):
        Publisher.from_url(url, mode=mode, sentinel_master=master)

    async def make() -> None:
        AsyncPublisher.from_url(url, mode=mode, sentinel_master=master)

    with pytest.raises(InvalidConfiguration, match=message):
        asyncio.run(make())


def test_a_cluster_has_only_database_0() -> None:
    with pytest.raises(InvalidConfiguration, match="only database 0"):
        Publisher.from_url("redis://a:6379/2,redis://b:6379", mode="cluster")


def test_nothing_is_connected_by_from_url() -> None:
    # Nothing listens on these: from_url still answers, in every mode.
    for url, mode, master in [
        ("redis://127.0.0.1:9", "standalone", None),
        ("redis://127.0.0.1:9,redis://127.0.0.1:11", "cluster", None),
        ("redis://127.0.0.1:9", "sentinel", "mymaster"),
    ]:
        publisher = Publisher.from_url(url, mode=mode, sentinel_master=master)
        assert (publisher.mode, publisher.prefix) == (mode, "gw")
        publisher.close()
