"""Both clients behind a real Redis Sentinel (`redis-server --sentinel` watching one master):
the master it names gets the vectors' commands, exactly as a standalone server does (MONITOR),
and keeps the history; an unknown master fails the publish."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.sentinel
import redis.sentinel
from test_redis_commands import LOAD, with_fixed_timestamp

from gateway_publisher import AsyncPublisher, Publisher, PublishFailed, Receipt

from conftest import AnyPublisher, BlockingAsyncPublisher, make_publisher
from harness import RedisSentinel, RedisServer
from monitor import Monitor
from test_vectors import CASES, VECTORS

POLICIES: dict[Any, Any] = {"default": "100 600000", "personal": "50 300000"}


@pytest.fixture
def master(sentinel: tuple[RedisSentinel, RedisServer]) -> Iterator[redis.Redis]:
    """A client of the emptied master, which has no script loaded."""
    client = sentinel[1].client()
    client.flushall()
    client.script_flush()
    yield client
    client.close()


@pytest.fixture
def make(kind: str, sentinel: tuple[RedisSentinel, RedisServer]) -> Iterator[Any]:
    """Makes publishers of this test's kind through the sentinel; closes them afterwards."""
    made: list[AnyPublisher] = []

    def make_one(prefix: str = "gw", name: str = "mymaster") -> AnyPublisher:
        url = sentinel[0].url
        made.append(make_publisher(kind, url, prefix, mode="sentinel", sentinel_master=name))
        return made[-1]

    yield make_one
    for publisher in made:
        publisher.close()


def ours(monitor: Monitor) -> list[tuple[str, ...]]:
    """What the publisher sent the master: without what the sentinel asks and announces."""
    return [
        command
        for command in monitor.sent()
        if command[0].upper() not in ("PING", "INFO", "ROLE", "SUBSCRIBE", "PUBLISH")
        or (command[0].upper() == "PUBLISH" and not command[1].startswith("__sentinel__:"))
    ]


def mode_of(publisher: AnyPublisher) -> str:
    inner = publisher.inner if isinstance(publisher, BlockingAsyncPublisher) else publisher
    return inner.mode


SENDABLE = [case for case in CASES if "commands" in case and "batch" in case]


@pytest.mark.parametrize("case", SENDABLE, ids=[case["name"] for case in SENDABLE])
def test_the_master_gets_the_vectors_commands(
    case: dict[str, Any],
    make: Any,
    master: redis.Redis,
    sentinel: tuple[RedisSentinel, RedisServer],
) -> None:
    prefix = case.get("prefix", VECTORS["prefix"])
    master.hset(f"{prefix}:namespaces", mapping=VECTORS["namespaces"])
    publisher = make(prefix)
    monitor = Monitor(sentinel[1].port)
    try:
        results = publisher.publish_batch(case["batch"])
        expected = case["commands"]
        deadline = time.monotonic() + 10
        while len(sent := ours(monitor)) < 2 + len(expected):
            assert time.monotonic() < deadline, f"MONITOR saw only {sent}"
            time.sleep(0.02)
    finally:
        monitor.close()
    assert mode_of(publisher) == "sentinel"
    assert sent[:2] == [("HGETALL", f"{prefix}:namespaces"), LOAD]
    assert with_fixed_timestamp(sent[2 : 2 + len(expected)]) == expected
    assert len([r for result in results for r in result]) == len(expected)


def test_the_master_keeps_the_history(make: Any, master: redis.Redis) -> None:
    master.hset("gw:namespaces", mapping=POLICIES)
    publisher = make()

    results = publisher.publish_batch(
        [{"channel": "jobs", "event": "progress", "data": {"i": i}} for i in range(3)]
        + [{"user": "42", "event": "photo_ready", "data": None}]
    )
    duplicate = publisher.publish_channel("jobs", "e", 1, idempotency_key="k")
    again = publisher.publish_channel("jobs", "e", 1, idempotency_key="k")

    assert [[r.offset for r in result] for result in results] == [[1], [2], [3], [1]]
    assert (duplicate.offset, again.offset, again.duplicate) == (4, 4, True)
    stream: Any = master.xrange("gw:{jobs}:stream")
    events = [json.loads(fields[b"m"]) for _, fields in stream]
    assert [e["offset"] for e in events] == [1, 2, 3, 4]
    assert [e["data"] for e in events[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert master.xlen("gw:{#42}:stream") == 1


def test_an_unknown_master_raises_publish_failed(make: Any, master: redis.Redis) -> None:
    publisher = make(name="nobody")

    assert publisher.publish_batch([]) == []  # nothing to send: nothing is asked
    with pytest.raises(PublishFailed) as failed:
        publisher.broadcast("e", None)

    # redis.sentinel's MasterNotFoundError, or redis.asyncio.sentinel's.
    assert isinstance(failed.value.__cause__, redis.ConnectionError)
    assert type(failed.value.__cause__).__name__ == "MasterNotFoundError"
    assert "nobody" in str(failed.value)


def test_a_sentinel_master_of_the_application_is_left_open(
    sentinel: tuple[RedisSentinel, RedisServer], master: redis.Redis
) -> None:
    master.hset("gw:namespaces", mapping=POLICIES)
    watching = redis.sentinel.Sentinel([("127.0.0.1", sentinel[0].port)])
    client = watching.master_for("mymaster")
    with Publisher(client) as publisher:
        assert publisher.mode == "sentinel"
        assert publisher.publish_channel("jobs", "e", 1).offset == 1
    assert client.ping()
    client.close()
    for sentinel_client in watching.sentinels:
        sentinel_client.close()


@pytest.mark.asyncio
async def test_an_async_sentinel_master_of_the_application(
    sentinel: tuple[RedisSentinel, RedisServer], master: redis.Redis
) -> None:
    master.hset("gw:namespaces", mapping=POLICIES)
    watching = redis.asyncio.sentinel.Sentinel([("127.0.0.1", sentinel[0].port)])
    client = watching.master_for("mymaster")
    async with AsyncPublisher(client) as publisher:
        assert publisher.mode == "sentinel"
        receipt = await publisher.publish_user("42", "e", 1)
    epoch: Any = master.hget("gw:{#42}:meta", "epoch")
    assert receipt == Receipt("#42", 1, epoch.decode())
    assert await client.ping()
    await client.aclose()
    for sentinel_client in watching.sentinels:
        await sentinel_client.aclose()
