"""What each client sends to a real Redis, read back with MONITOR on a Redis no gateway uses:
exactly the vectors' commands, the script loaded once, reloaded after SCRIPT FLUSH."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from gateway_publisher import (
    AsyncPublisher,
    InvalidChannel,
    InvalidData,
    InvalidIdempotencyKey,
    InvalidTarget,
    InvalidUser,
    Publish,
    Publisher,
    PublishFailed,
    Receipt,
    ReservedEvent,
)
from gateway_publisher import client as client_module
from gateway_publisher.wire import SCRIPT, SCRIPT_SHA1

from conftest import AnyPublisher, make_publisher
from harness import RedisServer, free_port
from monitor import Monitor
from test_vectors import CASES, VECTORS

TIMESTAMP = re.compile(r'"timestamp":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"')
LOAD = ("SCRIPT", "LOAD", SCRIPT.decode())
POLICIES: dict[Any, Any] = {"default": "100 600000", "personal": "50 300000"}


@pytest.fixture
def redis_client(bare_redis: RedisServer) -> Iterator[redis.Redis]:
    client = bare_redis.client()
    client.flushall()
    client.script_flush()
    yield client
    client.close()


@pytest.fixture
def watch(bare_redis: RedisServer) -> Iterator[Any]:
    """Starts a MONITOR of the bare Redis: it sees what is sent from then on."""
    started: list[Monitor] = []

    def start() -> Monitor:
        started.append(Monitor(bare_redis.port))
        return started[-1]

    yield start
    for monitor in started:
        monitor.close()


@pytest.fixture
def make(kind: str, bare_redis: RedisServer) -> Iterator[Any]:
    """Makes publishers of this test's kind on the bare Redis; closes them afterwards."""
    made: list[AnyPublisher] = []

    def make_one(prefix: str = "gw") -> AnyPublisher:
        made.append(make_publisher(kind, bare_redis.url, prefix))
        return made[-1]

    yield make_one
    for publisher in made:
        publisher.close()


def with_fixed_timestamp(commands: list[tuple[str, ...]]) -> list[list[str]]:
    """The commands with their one timestamp (one per batch) replaced by the vectors'."""
    stamps = {m for command in commands for arg in command for m in TIMESTAMP.findall(arg)}
    assert len(stamps) <= 1, stamps
    fixed = f'"timestamp":"{VECTORS["timestamp"]}"'
    return [[TIMESTAMP.sub(fixed, arg) for arg in command] for command in commands]


SENDABLE = [case for case in CASES if "commands" in case]


@pytest.mark.parametrize("case", SENDABLE, ids=[case["name"] for case in SENDABLE])
def test_every_vector_is_sent_exactly(
    case: dict[str, Any], make: Any, redis_client: redis.Redis, watch: Any
) -> None:
    prefix = case.get("prefix", VECTORS["prefix"])
    redis_client.hset(f"{prefix}:namespaces", mapping=VECTORS["namespaces"])
    publisher = make(prefix)
    items = case["batch"] if "batch" in case else [case["publish"]]
    monitor = watch()

    results = publisher.publish_batch(items)

    expected = case["commands"]
    monitor.wait_for(2 + len(expected))
    sent = monitor.sent()
    assert sent[:2] == [("HGETALL", f"{prefix}:namespaces"), LOAD]
    assert with_fixed_timestamp(sent[2:]) == expected
    receipts = [receipt for result in results for receipt in result]
    assert len(receipts) == len(expected)
    history = {"default", "personal"}
    for receipt, command in zip(receipts, expected, strict=True):
        assert (receipt.offset is not None) == (command[0] == "EVALSHA" and command[9] in history)


def test_script_and_namespaces_are_reused_by_later_publishes(
    make: Any, redis_client: redis.Redis, watch: Any
) -> None:
    redis_client.hset("gw:namespaces", mapping=POLICIES)
    publisher = make()
    monitor = watch()

    first = publisher.publish_channel("jobs", "e", 1)
    [[second]] = publisher.publish_batch([Publish.to_channel("jobs", "e", 2)])

    monitor.wait_for(4)
    assert [command[0] for command in monitor.sent()] == [
        "HGETALL",
        "SCRIPT",
        "EVALSHA",
        "EVALSHA",
    ]
    assert (first.offset, second.offset) == (1, 2)


def test_namespaces_are_read_again_after_five_seconds(
    make: Any, redis_client: redis.Redis, watch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "POLICY_REFRESH_S", 0.3)
    publisher = make()
    monitor = watch()
    assert publisher.publish_channel("jobs", "e", 1) == Receipt("jobs")

    redis_client.hset("gw:namespaces", mapping=POLICIES)  # a gateway announced history
    assert publisher.publish_channel("jobs", "e", 2) == Receipt("jobs")  # still cached
    threading.Event().wait(0.4)
    third = publisher.publish_channel("jobs", "e", 3)

    assert third.offset == 1
    monitor.wait_for(7)
    assert [command[0] for command in monitor.sent() if command[0] != "HSET"] == [
        "HGETALL",
        "SCRIPT",
        "PUBLISH",
        "PUBLISH",
        "HGETALL",
        "EVALSHA",
    ]


def test_after_script_flush_only_the_script_calls_are_sent_again(
    make: Any, redis_client: redis.Redis, watch: Any
) -> None:
    redis_client.hset("gw:namespaces", mapping=POLICIES)
    publisher = make()
    publisher.publish_channel("jobs", "e", 1)
    redis_client.script_flush()
    monitor = watch()

    results = publisher.publish_batch(
        [
            {"client_type": "gui", "event": "e", "data": 2},
            {"channel": "jobs", "event": "e", "data": 3},
            {"channel": "room:1", "event": "e", "data": 4},
            {"user": "42", "event": "e", "data": 5},
        ]
    )

    monitor.wait_for(7)
    # Each command by its name and the argument that tells it apart.
    sent = [(c[0], c[-1] if c[0] in ("PUBLISH", "SCRIPT") else c[3]) for c in monitor.sent()]
    assert sent == [
        ("PUBLISH", sent[0][1]),
        ("EVALSHA", "gw:{jobs}:stream"),
        ("PUBLISH", sent[2][1]),
        ("EVALSHA", "gw:{#42}:stream"),
        ("SCRIPT", SCRIPT.decode()),
        ("EVALSHA", "gw:{jobs}:stream"),
        ("EVALSHA", "gw:{#42}:stream"),
    ]
    assert '"data":2' in sent[0][1] and '"data":4' in sent[2][1]
    assert [[r.offset for r in result] for result in results] == [[None], [2], [None], [1]]
    assert redis_client.script_exists(SCRIPT_SHA1) == [True]


def test_invalid_publishes_send_nothing(make: Any, watch: Any) -> None:
    publisher = make()
    monitor = watch()
    refused: list[tuple[Any, type[Exception]]] = [
        (lambda: publisher.publish_channel("bad name", "e", 1), InvalidChannel),
        (lambda: publisher.publish_channels(["jobs", "a b"], "e", 1), InvalidChannel),
        (lambda: publisher.publish_channels([], "e", 1), InvalidTarget),
        (lambda: publisher.publish_user("a,b", "e", 1), InvalidUser),
        (lambda: publisher.broadcast("subscribed", 1), ReservedEvent),
        (lambda: publisher.publish_channel("jobs", "e", float("nan")), InvalidData),
        (
            lambda: publisher.publish_channel("jobs", "e", 1, idempotency_key=""),
            InvalidIdempotencyKey,
        ),
        (
            lambda: publisher.publish_batch(
                [{"channel": "jobs", "event": "e"}, {"client_type": "gui", "event": "pong"}]
            ),
            ReservedEvent,
        ),
    ]
    for call, error in refused:
        with pytest.raises(error):
            call()

    publisher.broadcast("e", None)

    monitor.wait_for(3)
    assert [command[0] for command in monitor.sent()] == ["HGETALL", "SCRIPT", "PUBLISH"]


def test_the_idempotency_window_comes_from_the_namespaces_hash(
    make: Any, redis_client: redis.Redis
) -> None:
    redis_client.hset("short:namespaces", mapping={**POLICIES, ":idempotency_window_ms": "2000"})
    redis_client.hset("long:namespaces", mapping=POLICIES)

    make("short").publish_channel("jobs", "e", 1, idempotency_key="k")
    make("long").publish_channel("jobs", "e", 1, idempotency_key="k")

    assert 0 < redis_client.pttl("short:{jobs}:idem:k") <= 2000
    assert 2000 < redis_client.pttl("long:{jobs}:idem:k") <= 300_000


def test_a_redis_error_raises_publish_failed_with_its_cause(
    make: Any, redis_client: redis.Redis
) -> None:
    redis_client.set("broken:namespaces", "not a hash")
    publisher = make("broken")

    with pytest.raises(PublishFailed) as failed:
        publisher.publish_channel("jobs", "e", 1)

    assert isinstance(failed.value.__cause__, redis.ResponseError)
    assert "WRONGTYPE" in str(failed.value.__cause__)
    assert publisher.publish_client_type("gui", "e", 1) == Receipt(None)


def test_unreachable_redis_raises_publish_failed(kind: str) -> None:
    publisher = make_publisher(kind, f"redis://127.0.0.1:{free_port()}")
    try:
        assert publisher.publish_batch([]) == []  # nothing to send: Redis is not asked
        with pytest.raises(PublishFailed) as failed:
            publisher.publish_channel("jobs", "e", 1)
        assert isinstance(failed.value.__cause__, redis.ConnectionError)
    finally:
        publisher.close()


def test_an_existing_client_with_decoded_replies_is_left_open(
    bare_redis: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.hset("gw:namespaces", mapping=POLICIES)
    client = redis.Redis(port=bare_redis.port, decode_responses=True)
    with Publisher(client, prefix="gw") as publisher:
        receipt = publisher.publish_user("42", "e", {"x": "✓"})
    assert receipt.offset == 1 and isinstance(receipt.epoch, str)
    assert client.ping()  # not closed by the publisher
    client.close()


def test_threads_sharing_one_publisher_get_distinct_offsets(
    bare_redis: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.hset("gw:namespaces", mapping=POLICIES)
    offsets: list[int | None] = []
    lock = threading.Lock()
    with Publisher.from_url(bare_redis.url) as publisher:

        def work() -> None:
            for i in range(25):
                receipt = publisher.publish_channel("jobs", "e", i)
                with lock:
                    offsets.append(receipt.offset)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(o for o in offsets if o is not None) == list(range(1, 201))


@pytest.mark.asyncio
async def test_concurrent_async_publishes_get_distinct_offsets(
    bare_redis: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.hset("gw:namespaces", mapping=POLICIES)
    async with AsyncPublisher.from_url(bare_redis.url) as publisher:
        receipts = await asyncio.gather(
            *(publisher.publish_channel("jobs", "e", i) for i in range(50))
        )
        batch = await publisher.publish_batch(
            [{"channels": ["jobs", "room:1"], "event": "e", "data": None}]
        )
    assert sorted(r.offset or 0 for r in receipts) == list(range(1, 51))
    assert [[r.offset for r in result] for result in batch] == [[51, None]]


@pytest.mark.asyncio
async def test_async_publisher_over_an_existing_client_leaves_it_open(
    bare_redis: RedisServer,
) -> None:
    client = redis.asyncio.Redis(port=bare_redis.port)
    async with AsyncPublisher(client, prefix="other") as publisher:
        assert publisher.prefix == "other"
        assert await publisher.broadcast("e", None) == Receipt(None)
    assert await client.ping()
    await client.aclose()


def test_a_refused_script_load_is_the_reported_cause(
    kind: str, bare_redis: RedisServer, redis_client: redis.Redis
) -> None:
    redis_client.hset("gw:namespaces", mapping=POLICIES)
    redis_client.acl_setuser(
        "noload",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-script|load"],
        reset=True,
    )
    publisher = make_publisher(kind, f"redis://noload:pw@127.0.0.1:{bare_redis.port}")
    try:
        assert publisher.publish_client_type("gui", "e", 1) == Receipt(None)
        with pytest.raises(PublishFailed, match="load the script") as failed:
            publisher.publish_channel("jobs", "e", 1)
        assert isinstance(failed.value.__cause__, redis.exceptions.NoPermissionError)
    finally:
        publisher.close()
        redis_client.acl_deluser("noload")
