"""End to end: events published with each client reach WebSocket clients of two real gateway
replicas through a real Redis. Every test runs once with `Publisher` and once with
`AsyncPublisher`."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway_publisher import InvalidChannel, Receipt
from gateway_publisher.wire import SCRIPT_SHA1

from conftest import AnyPublisher
from harness import Gateway, RedisServer, Subscriber

Connect = Callable[[Gateway, str], Subscriber]


def test_channel_events_get_contiguous_offsets_that_match_delivery(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    channel = f"jobs-{unique}"
    subscriber = connect(gateways[0], f"u-{unique}")
    subscriber.subscribe(channel)

    receipts = [
        publisher.publish_channel(channel, "job_progress", {"job_id": unique, "step": step})
        for step in range(20)
    ]

    assert [r.offset for r in receipts] == list(range(1, 21))
    epochs = {r.epoch for r in receipts}
    assert len(epochs) == 1 and None not in epochs
    assert all(r.channel == channel and not r.duplicate for r in receipts)
    events = subscriber.events(20)
    assert [e["type"] for e in events] == ["job_progress"] * 20
    assert [e["channel"] for e in events] == [channel] * 20
    assert [e["data"] for e in events] == [{"job_id": unique, "step": s} for s in range(20)]
    assert [(e["offset"], e["epoch"]) for e in events] == [(r.offset, r.epoch) for r in receipts]
    assert all(e["timestamp"].endswith("Z") for e in events)


def test_channel_without_history_is_delivered_without_offset(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    channel = f"room:{unique}"
    subscriber = connect(gateways[1], f"u-{unique}")
    subscriber.subscribe(channel)

    receipt = publisher.publish_channel(channel, "typing", {"on": True, "text": "héllo ✓\n"})

    assert receipt == Receipt(channel, None, None, False)
    event = subscriber.event()
    assert event["type"] == "typing" and event["channel"] == channel
    assert event["data"] == {"on": True, "text": "héllo ✓\n"}
    assert "offset" not in event and "epoch" not in event


def test_user_event_reaches_both_tabs_on_both_replicas(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    user = f"auth0|{unique}"
    tabs = [connect(gateways[0], user), connect(gateways[1], user)]
    stranger = connect(gateways[0], f"other-{unique}")

    receipt = publisher.publish_user(user, "photo_ready", {"photo": "p1"})

    assert receipt.channel == f"#{user}" and receipt.offset == 1
    for tab in tabs:
        event = tab.event()
        assert event["type"] == "photo_ready" and event["channel"] == f"#{user}"
        assert event["data"] == {"photo": "p1"}
        assert (event["offset"], event["epoch"]) == (receipt.offset, receipt.epoch)
    stranger.nothing_within(0.5)


def test_idempotency_key_delivers_once_and_answers_the_first_position(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    channel = f"jobs-{unique}"
    subscriber = connect(gateways[0], f"u-{unique}")
    subscriber.subscribe(channel)

    first = publisher.publish_channel(channel, "job_done", {"n": 1}, idempotency_key="done")
    second = publisher.publish_channel(channel, "job_done", {"n": 2}, idempotency_key="done")
    after = publisher.publish_channel(channel, "next", None)

    assert (first.offset, first.duplicate) == (1, False)
    assert second == Receipt(channel, first.offset, first.epoch, duplicate=True)
    assert after.offset == 2
    # The repeat published nothing: the next event on the channel is the one after it.
    assert [(e["type"], e["data"]) for e in subscriber.events(2)] == [
        ("job_done", {"n": 1}),
        ("next", None),
    ]


def test_idempotency_key_works_where_no_history_is_kept(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    channel = f"room:{unique}"
    subscriber = connect(gateways[1], f"u-{unique}")
    subscriber.subscribe(channel)

    first = publisher.publish_channel(channel, "job_done", 1, idempotency_key=f"k-{unique}")
    second = publisher.publish_channel(channel, "job_done", 2, idempotency_key=f"k-{unique}")
    publisher.publish_channel(channel, "next", 3)

    assert first == Receipt(channel, None, None, duplicate=False)
    assert second == Receipt(channel, None, None, duplicate=True)
    assert [e["data"] for e in subscriber.events(2)] == [1, 3]


def test_batch_mixes_every_target_in_one_call(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    jobs, room, client_type = f"jobs-{unique}", f"room:{unique}", f"gui-{unique}"
    user = f"u-{unique}"
    near = connect(gateways[0], user)
    near.subscribe(jobs, room)
    near.register(client_type)
    far = connect(gateways[1], f"far-{unique}")

    results = publisher.publish_batch(
        [
            {"channel": jobs, "event": "a", "data": 1},
            {"user": user, "event": "b", "data": 2},
            {"client_type": client_type, "event": "c", "data": 3},
            {"channels": [room, jobs], "event": "d", "data": 4},
            {"broadcast": True, "event": "e", "data": unique},
        ]
    )

    epoch = results[0][0].epoch
    assert results == [
        [Receipt(jobs, 1, epoch)],
        [Receipt(f"#{user}", 1, results[1][0].epoch)],
        [Receipt(None)],
        [Receipt(room), Receipt(jobs, 2, epoch)],
        [Receipt(None)],
    ]
    # Topics are separate Redis channels, so only each channel's own order is guaranteed.
    seen = near.events(6)
    assert sorted((e["type"], e.get("channel"), e["data"]) for e in seen) == [
        ("a", jobs, 1),
        ("b", f"#{user}", 2),
        ("c", None, 3),
        ("d", jobs, 4),
        ("d", room, 4),
        ("e", None, unique),
    ]
    assert [e["offset"] for e in seen if e.get("channel") == jobs] == [1, 2]
    event = far.event()
    assert (event["type"], event["data"]) == ("e", unique) and "channel" not in event


def test_script_flush_is_survived_and_history_continues(
    publisher: AnyPublisher,
    redis_server: RedisServer,
    gateways: tuple[Gateway, Gateway],
    connect: Connect,
    unique: str,
) -> None:
    channel = f"jobs-{unique}"
    subscriber = connect(gateways[0], f"u-{unique}")
    subscriber.subscribe(channel)
    first = publisher.publish_channel(channel, "step", 1)

    redis_server.client().script_flush()
    assert redis_server.client().script_exists(SCRIPT_SHA1) == [False]
    second = publisher.publish_channel(channel, "step", 2)

    assert (first.offset, second.offset) == (1, 2)
    assert second.epoch == first.epoch
    assert redis_server.client().script_exists(SCRIPT_SHA1) == [True]
    assert [(e["data"], e["offset"]) for e in subscriber.events(2)] == [(1, 1), (2, 2)]
    subscriber.nothing_within(0.5)


def test_client_type_event_reaches_only_that_client_type(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    gui = [connect(gateways[0], f"a-{unique}"), connect(gateways[1], f"b-{unique}")]
    for subscriber in gui:
        subscriber.register(f"gui-{unique}")
    mobile = connect(gateways[0], f"c-{unique}")
    mobile.register(f"mobile-{unique}")

    receipt = publisher.publish_client_type(f"gui-{unique}", "config_changed", {"theme": "dark"})

    assert receipt == Receipt(None)
    for subscriber in gui:
        event = subscriber.event()
        assert event["type"] == "config_changed" and event["data"] == {"theme": "dark"}
        assert "channel" not in event
    mobile.nothing_within(0.5)


def test_broadcast_reaches_every_connection_on_every_replica(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    everyone = [connect(g, f"{n}-{unique}") for n, g in enumerate(gateways * 2)]

    assert publisher.broadcast("maintenance", {"id": unique}) == Receipt(None)

    for subscriber in everyone:
        event = subscriber.event()
        assert (event["type"], event["data"]) == ("maintenance", {"id": unique})
        assert "channel" not in event


def test_exclude_client_leaves_out_that_connection_only(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    channel = f"jobs-{unique}"
    sender, other = connect(gateways[0], f"s-{unique}"), connect(gateways[1], f"o-{unique}")
    for subscriber in (sender, other):
        subscriber.subscribe(channel)

    publisher.publish_channel(channel, "moved", 1, exclude_client=sender.client_id)
    publisher.publish_channel(channel, "moved", 2)

    assert [e["data"] for e in other.events(2)] == [1, 2]
    assert [e["data"] for e in sender.events(1)] == [2]


def test_exclude_client_on_a_user_and_a_broadcast(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    user = f"u-{unique}"
    sender, other_tab = connect(gateways[0], user), connect(gateways[1], user)

    publisher.publish_user(user, "saved", 1, exclude_client=sender.client_id)
    publisher.publish_user(user, "saved", 2)

    assert [e["data"] for e in other_tab.events(2)] == [1, 2]
    assert [e["data"] for e in sender.events(1)] == [2]

    publisher.broadcast("hello", unique, exclude_client=sender.client_id)
    assert other_tab.event()["data"] == unique
    sender.nothing_within(0.5)


def test_bad_names_raise_and_publish_nothing(
    publisher: AnyPublisher, gateways: tuple[Gateway, Gateway], connect: Connect, unique: str
) -> None:
    channel = f"jobs-{unique}"
    subscriber = connect(gateways[0], f"u-{unique}")
    subscriber.subscribe(channel)

    with pytest.raises(InvalidChannel):
        publisher.publish_batch(
            [
                {"channel": channel, "event": "first", "data": None},
                {"channel": "bad name", "event": "e", "data": None},
            ]
        )
    receipt = publisher.publish_channel(channel, "second", None)

    assert receipt.offset == 1
    assert subscriber.event()["type"] == "second"
