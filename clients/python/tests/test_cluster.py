"""Both clients on a real Redis Cluster of three masters (`redis-cli --cluster create`): a batch
over channels on every master, the vectors' pipelines on the nodes of their slots (read back
with MONITOR on every node), SSUBSCRIBE, NOSCRIPT on one node, idempotency, and failures."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from test_redis_commands import LOAD, with_fixed_timestamp

from gateway_publisher import AsyncPublisher, Publish, Publisher, PublishFailed, Receipt
from gateway_publisher import client as client_module
from gateway_publisher.wire import SCRIPT_SHA1

from conftest import AnyPublisher, make_publisher
from harness import Listener, RedisClusterNodes, free_port
from monitor import Monitor
from test_vectors import CASES, VECTORS

#: What the gateways announce in these tests: history on `default` only.
POLICIES: dict[Any, Any] = {"default": "100 600000"}
#: The commands a publish sends, apart from the connection's own (CLUSTER SLOTS, COMMAND, …).
PUBLISHING = frozenset({"EVALSHA", "SPUBLISH", "PUBLISH", "SCRIPT", "HGETALL"})


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterNodes) -> Iterator[redis.cluster.RedisCluster]:
    """A client of the emptied cluster, whose nodes have no script loaded."""
    for port in redis_cluster.ports:
        with redis_cluster.node(port) as node:
            node.flushall()
            node.script_flush()
    client = redis_cluster.client()
    yield client
    client.close()


@pytest.fixture
def make(kind: str, redis_cluster: RedisClusterNodes) -> Iterator[Any]:
    """Makes cluster publishers of this test's kind; closes them afterwards."""
    made: list[AnyPublisher] = []

    def make_one(prefix: str = "gw") -> AnyPublisher:
        made.append(make_publisher(kind, redis_cluster.url, prefix, mode="cluster"))
        return made[-1]

    yield make_one
    for publisher in made:
        publisher.close()


@pytest.fixture
def monitors(redis_cluster: RedisClusterNodes) -> Iterator[dict[int, Monitor]]:
    """A MONITOR of every node, by port, from now on."""
    started = {port: Monitor(port) for port in redis_cluster.ports}
    yield started
    for monitor in started.values():
        monitor.close()


def topic_of(command: list[str]) -> str:
    """The topic a publishing command sends to."""
    if command[0] == "EVALSHA":
        return command[3 + int(command[2])]
    return command[1]


def publishing(monitor: Monitor) -> list[tuple[str, ...]]:
    """What a node was sent to publish, in order: without the cluster client's own questions."""
    return [command for command in monitor.sent() if command[0].upper() in PUBLISHING]


def wait_publishing(monitor: Monitor, count: int, timeout: float = 10) -> None:
    """Waits until a node's MONITOR has seen `count` commands of publishing."""
    deadline = time.monotonic() + timeout
    while len(publishing(monitor)) < count:
        assert time.monotonic() < deadline, f"MONITOR saw only {publishing(monitor)}"
        time.sleep(0.02)


def wait_publishing_anywhere(monitors: dict[int, Monitor], count: int) -> None:
    """Waits until the nodes' MONITORs have seen `count` commands of publishing in all."""
    deadline = time.monotonic() + 10
    while sum(len(publishing(monitor)) for monitor in monitors.values()) < count:
        assert time.monotonic() < deadline, "MONITOR did not see every command"
        time.sleep(0.02)


def channels_on_every_master(cluster: RedisClusterNodes, count: int) -> list[str]:
    channels = [f"spread-{i}" for i in range(count)]
    masters = {cluster.port_of(f"gw:ch:{{{channel}}}") for channel in channels}
    assert masters == set(cluster.ports), "the channels do not cover every master"
    return channels


def test_a_batch_over_channels_on_every_master(
    make: Any, cluster_client: redis.cluster.RedisCluster, redis_cluster: RedisClusterNodes
) -> None:
    cluster_client.hset("{gw}:namespaces", mapping=POLICIES)
    channels = channels_on_every_master(redis_cluster, 24)
    first, room = "gw:ch:{spread-0}", "gw:ch:{room:1}"
    sharded = Listener(redis_cluster.port_of(first), first, sharded=True)
    sharded_room = Listener(redis_cluster.port_of(room), room, sharded=True)
    # A plain PUBLISH reaches the subscribers of every node.
    others = [port for port in redis_cluster.ports if port != redis_cluster.port_of(first)]
    broadcast = Listener(others[0], "gw:broadcast", sharded=False)
    publisher = make()
    try:
        rounds = 3
        items: list[dict[str, Any]] = [
            {"channel": channel, "event": "progress", "data": {"round": r}}
            for r in range(rounds)
            for channel in channels
        ]
        items += [
            {"channel": "room:1", "event": "typing", "data": {"on": True}},
            {"broadcast": True, "event": "maintenance", "data": None},
            {"client_type": "gui", "event": "sync", "data": None},
        ]

        results = publisher.publish_batch(items)

        assert [len(result) for result in results] == [1] * len(items)
        receipts = [result[0] for result in results]
        for index, channel in enumerate(channels):
            mine = receipts[index :: len(channels)][:rounds]
            assert [r.channel for r in mine] == [channel] * rounds
            assert [r.offset for r in mine] == [1, 2, 3]
            assert len({r.epoch for r in mine}) == 1 and not any(r.duplicate for r in mine)
            stream: Any = cluster_client.xrange(f"gw:{{{channel}}}:stream")
            assert [entry_id for entry_id, _ in stream] == [b"0-1", b"0-2", b"0-3"]
            events = [json.loads(fields[b"m"]) for _, fields in stream]
            assert [e["data"] for e in events] == [{"round": r} for r in range(rounds)]
            assert {(e["channel"], e["epoch"]) for e in events} == {(channel, mine[0].epoch)}
            assert [e["offset"] for e in events] == [1, 2, 3]
        assert receipts[-3:] == [Receipt("room:1"), Receipt(None), Receipt(None)]
        assert not cluster_client.exists("gw:{room:1}:stream")

        # The script SPUBLISHed each event of spread-0 with its position; room:1 went out as
        # a plain SPUBLISH, the broadcast as a PUBLISH.
        got = sharded.messages(rounds)
        assert [topic for topic, _ in got] == [first] * rounds
        assert [json.loads(data)["offset"] for _, data in got] == [1, 2, 3]
        [(topic, data)] = sharded_room.messages(1)
        assert topic == room and json.loads(data)["data"] == {"on": True}
        [(topic, data)] = broadcast.messages(1)
        assert topic == "gw:broadcast" and json.loads(data)["broadcast"] is True

        [[again]] = publisher.publish_batch([{"channel": "spread-0", "event": "e", "data": 4}])
        assert (again.offset, again.epoch) == (4, receipts[0].epoch)
        sharded.messages(1)
    finally:
        for listener in (sharded, sharded_room, broadcast):
            listener.close()


CLUSTER_CASES = [case for case in CASES if case.get("mode") == "cluster"]


@pytest.mark.parametrize("case", CLUSTER_CASES, ids=[case["name"] for case in CLUSTER_CASES])
def test_every_cluster_vector_goes_out_as_its_pipelines_on_their_nodes(
    case: dict[str, Any],
    make: Any,
    cluster_client: redis.cluster.RedisCluster,
    redis_cluster: RedisClusterNodes,
    monitors: dict[int, Monitor],
) -> None:
    prefix = case.get("prefix", VECTORS["prefix"])
    cluster_client.hset(f"{{{prefix}}}:namespaces", mapping=VECTORS["namespaces"])
    publisher = make(prefix)
    items = case["batch"] if "batch" in case else [case["publish"]]

    results = publisher.publish_batch(items)

    # Each pipeline reaches the master of its slot, in order, after the one SCRIPT LOAD that
    # node needs where it gets script calls; plain PUBLISHes go to any node.
    expected: dict[int, list[list[str]]] = {port: [] for port in redis_cluster.ports}
    plain: list[list[str]] = []
    for pipeline in case["pipelines"]:
        for command in pipeline:
            if command[0] == "PUBLISH":
                plain.append(command)
            else:
                expected[redis_cluster.port_of(topic_of(command))].append(command)
    loads = {
        port for port, commands in expected.items() if any(c[0] == "EVALSHA" for c in commands)
    }
    namespaces_node = redis_cluster.port_of(f"{{{prefix}}}:namespaces")
    for port, monitor in monitors.items():
        wait_publishing(monitor, len(expected[port]) + (port in loads) + (port == namespaces_node))
    wait_publishing_anywhere(monitors, sum(len(p) for p in case["pipelines"]) + len(loads) + 1)
    published: list[list[str]] = []
    for port, monitor in monitors.items():
        sent = publishing(monitor)
        if port == namespaces_node:
            assert ("HGETALL", f"{{{prefix}}}:namespaces") in sent
        sent = [command for command in sent if command[0] != "HGETALL"]
        if port in loads:
            assert sent[0] == LOAD, port
            sent = sent[1:]
        assert LOAD not in sent, port
        commands = with_fixed_timestamp(sent)
        assert [c for c in commands if c[0] != "PUBLISH"] == expected[port], port
        published += [c for c in commands if c[0] == "PUBLISH"]
    assert published == plain

    receipts = [receipt for result in results for receipt in result]
    assert len(receipts) == sum(len(pipeline) for pipeline in case["pipelines"])


def test_after_script_flush_on_one_node_only_its_script_calls_are_sent_again(
    make: Any, cluster_client: redis.cluster.RedisCluster, redis_cluster: RedisClusterNodes
) -> None:
    cluster_client.hset("{gw}:namespaces", mapping=POLICIES)
    channels = channels_on_every_master(redis_cluster, 12)
    publisher = make()
    publisher.publish_batch([{"channel": c, "event": "e", "data": 1} for c in channels])
    flushed = redis_cluster.ports[1]
    with redis_cluster.node(flushed) as node:
        node.script_flush()
    # From here on: the first batch was run before these MONITORs began.
    monitors = {port: Monitor(port) for port in redis_cluster.ports}
    try:
        items = [{"channel": c, "event": "e", "data": 2} for c in channels]
        items.insert(1, {"channel": "room:1", "event": "e", "data": 3})
        results = publisher.publish_batch(items)

        on = {
            port: [c for c in channels if redis_cluster.port_of(f"gw:ch:{{{c}}}") == port]
            for port in redis_cluster.ports
        }
        for port, monitor in monitors.items():
            wait_publishing(monitor, len(on[port]) * (2 if port == flushed else 1))
        sent_by_port = {port: publishing(monitor) for port, monitor in monitors.items()}
    finally:
        for monitor in monitors.values():
            monitor.close()

    offsets = [[r.offset for r in result] for result in results]
    assert offsets == [[2], [None]] + [[2]] * (len(channels) - 1)
    on_flushed = on[flushed]
    for port, sent in sent_by_port.items():
        mine = on[port]
        evalshas = [c[3] for c in sent if c[0] == "EVALSHA"]
        if port == flushed:
            # Every script call failed with NOSCRIPT; then the script, then those calls again.
            assert LOAD in sent
            load = sent.index(LOAD)
            assert [c[3] for c in sent[:load] if c[0] == "EVALSHA"] == [
                f"gw:{{{c}}}:stream" for c in on_flushed
            ]
            assert [c[3] for c in sent[load:] if c[0] == "EVALSHA"] == [
                f"gw:{{{c}}}:stream" for c in on_flushed
            ]
        else:
            assert LOAD not in sent
            assert evalshas == [f"gw:{{{c}}}:stream" for c in mine]
    with redis_cluster.node(flushed) as node:
        assert node.script_exists(SCRIPT_SHA1) == [True]


def test_idempotency_on_a_cluster(make: Any, cluster_client: redis.cluster.RedisCluster) -> None:
    cluster_client.hset(
        "{short}:namespaces", mapping={**POLICIES, ":idempotency_window_ms": "2000"}
    )
    cluster_client.hset("{long}:namespaces", mapping=POLICIES)
    short, long = make("short"), make("long")

    first = short.publish_channel("jobs", "done", 1, idempotency_key="k")
    again = short.publish_channel("jobs", "done", 1, idempotency_key="k")
    room = short.publish_channel("room:1", "done", 1, idempotency_key="k")
    room_again = short.publish_channel("room:1", "done", 1, idempotency_key="k")
    long.publish_channel("jobs", "done", 1, idempotency_key="k")

    assert (first.offset, first.duplicate) == (1, False)
    assert (again.offset, again.epoch, again.duplicate) == (1, first.epoch, True)
    assert (room, room_again) == (Receipt("room:1"), Receipt("room:1", duplicate=True))
    assert cluster_client.xlen("short:{jobs}:stream") == 1
    assert 0 < cluster_client.pttl("short:{jobs}:idem:k") <= 2000
    assert 0 < cluster_client.pttl("short:{room:1}:idem:k") <= 2000
    assert 2000 < cluster_client.pttl("long:{jobs}:idem:k") <= 300_000


def test_the_namespaces_are_read_from_the_cluster_again_after_five_seconds(
    make: Any, cluster_client: redis.cluster.RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "POLICY_REFRESH_S", 0.3)
    publisher = make()
    # No gateway announced anything yet: an empty hash, no history anywhere.
    assert publisher.publish_channel("jobs", "e", 1) == Receipt("jobs")

    cluster_client.hset("{gw}:namespaces", mapping=POLICIES)
    assert publisher.publish_channel("jobs", "e", 2) == Receipt("jobs")  # still cached
    threading.Event().wait(0.4)

    assert publisher.publish_channel("jobs", "e", 3).offset == 1


def test_unreadable_namespaces_fail_every_publish(
    make: Any, cluster_client: redis.cluster.RedisCluster, monitors: dict[int, Monitor]
) -> None:
    cluster_client.set("{broken}:namespaces", "not a hash")
    publisher = make("broken")

    for publish in (
        Publish.to_channel("jobs", "e", 1),
        Publish.broadcast("e", 1),
    ):
        with pytest.raises(PublishFailed, match="must know") as failed:
            publisher.publish(publish)
        assert isinstance(failed.value.__cause__, redis.ResponseError)
        assert "WRONGTYPE" in str(failed.value.__cause__)
    # Nothing was guessed: nothing was published.
    for monitor in monitors.values():
        assert not [c for c in publishing(monitor) if c[0] != "HGETALL"]


def test_an_unreachable_cluster_raises_publish_failed(kind: str) -> None:
    seeds = f"redis://127.0.0.1:{free_port()},redis://127.0.0.1:{free_port()}"
    publisher = make_publisher(kind, seeds, mode="cluster")
    try:
        assert publisher.publish_batch([]) == []  # nothing to send: Redis is not asked
        with pytest.raises(PublishFailed):
            publisher.publish_channel("jobs", "e", 1)
    finally:
        publisher.close()


def test_a_cluster_client_of_the_application_is_used_in_cluster_mode_and_left_open(
    cluster_client: redis.cluster.RedisCluster, redis_cluster: RedisClusterNodes
) -> None:
    cluster_client.hset("{gw}:namespaces", mapping=POLICIES)
    nodes = [redis.cluster.ClusterNode("127.0.0.1", port) for port in redis_cluster.ports]
    client = redis.cluster.RedisCluster(startup_nodes=nodes, decode_responses=True)
    with Publisher(client, prefix="gw") as publisher:
        assert publisher.mode == "cluster"
        assert publisher.publish_user("42", "e", None) == Receipt("#42")
        receipt = publisher.publish_channel("jobs", "e", None)
        assert receipt.offset == 1 and isinstance(receipt.epoch, str)
    assert client.ping()  # not closed by the publisher
    client.close()


def test_threads_sharing_one_cluster_publisher_get_distinct_offsets(
    redis_cluster: RedisClusterNodes, cluster_client: redis.cluster.RedisCluster
) -> None:
    cluster_client.hset("{gw}:namespaces", mapping=POLICIES)
    channels = channels_on_every_master(redis_cluster, 12)
    offsets: dict[str, list[int | None]] = {channel: [] for channel in channels}
    lock = threading.Lock()
    with Publisher.from_url(redis_cluster.url, mode="cluster") as publisher:

        def work() -> None:
            for i in range(10):
                results = publisher.publish_batch(
                    [{"channel": c, "event": "e", "data": i} for c in channels]
                )
                with lock:
                    for channel, [receipt] in zip(channels, results, strict=True):
                        offsets[channel].append(receipt.offset)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    for channel in channels:
        assert sorted(o or 0 for o in offsets[channel]) == list(range(1, 81)), channel


@pytest.mark.asyncio
async def test_concurrent_async_publishes_on_a_cluster_get_distinct_offsets(
    redis_cluster: RedisClusterNodes, cluster_client: redis.cluster.RedisCluster
) -> None:
    cluster_client.hset("{gw}:namespaces", mapping=POLICIES)
    channels = channels_on_every_master(redis_cluster, 6)
    async with AsyncPublisher.from_url(redis_cluster.url, mode="cluster") as publisher:
        assert publisher.mode == "cluster"
        receipts = await asyncio.gather(
            *(publisher.publish_channel(c, "e", i) for i in range(20) for c in channels)
        )
    for channel in channels:
        mine = [r.offset or 0 for r in receipts if r.channel == channel]
        assert sorted(mine) == list(range(1, 21)), channel


@pytest.mark.asyncio
async def test_an_async_cluster_client_of_the_application(
    redis_cluster: RedisClusterNodes, cluster_client: redis.cluster.RedisCluster
) -> None:
    cluster_client.hset("{gw}:namespaces", mapping=POLICIES)
    nodes = [redis.asyncio.cluster.ClusterNode("127.0.0.1", p) for p in redis_cluster.ports]
    client = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes)
    async with AsyncPublisher(client) as publisher:
        assert publisher.mode == "cluster"
        [[a], [b]] = await publisher.publish_batch(
            [
                {"channel": "jobs", "event": "e", "data": 1},
                {"channel": "jobs", "event": "e", "data": 2, "idempotency_key": "k"},
            ]
        )
        assert (a.offset, b.offset) == (1, 2)
    assert await client.ping()
    await client.aclose()


def test_the_script_is_loaded_on_each_node_that_gets_script_calls(
    make: Any, cluster_client: redis.cluster.RedisCluster, redis_cluster: RedisClusterNodes
) -> None:
    cluster_client.hset("{gw}:namespaces", mapping=POLICIES)
    channel = "spread-0"
    home = redis_cluster.port_of(f"gw:ch:{{{channel}}}")
    publisher = make()

    # Messages without history need no script, wherever they go.
    publisher.publish_batch([{"channel": "room:1", "event": "e", "data": 1}])
    publisher.publish_channel(channel, "e", 1)

    for port in redis_cluster.ports:
        with redis_cluster.node(port) as node:
            assert node.script_exists(SCRIPT_SHA1) == [port == home], port
    channels = channels_on_every_master(redis_cluster, 12)
    publisher.publish_batch([{"channel": c, "event": "e", "data": 1} for c in channels])
    for port in redis_cluster.ports:
        with redis_cluster.node(port) as node:
            assert node.script_exists(SCRIPT_SHA1) == [True], port
