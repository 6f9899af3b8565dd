"""Pure logic beyond the vectors: naming rules, the admin fields, data, receipts, errors."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway_publisher import (
    InvalidChannel,
    InvalidClientType,
    InvalidData,
    InvalidEvent,
    InvalidIdempotencyKey,
    InvalidName,
    InvalidPublish,
    InvalidTarget,
    InvalidUser,
    Publish,
    PublisherError,
    PublishFailed,
    Receipt,
    ReservedEvent,
)
from gateway_publisher.names import RESERVED_EVENT_NAMES, namespace, user_id
from gateway_publisher.wire import Message, build, receipt, timestamp_now

from harness import REPO


def commands(publish: Publish, history: frozenset[str] | None) -> list[tuple[str, ...]]:
    batch = build([publish], prefix="gw", timestamp="t", history=history)
    return [message.command for message in batch[0]]


def test_reserved_names_are_the_rust_publishers() -> None:
    wire = (REPO / "publisher" / "src" / "wire" / "mod.rs").read_text()
    listed = wire.split("RESERVED_EVENT_NAMES: &[&str] = &[", 1)[1].split("];", 1)[0]
    assert set(re.findall(r'"([^"]+)"', listed)) == RESERVED_EVENT_NAMES


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("#42", "personal"),
        ("room:1", "room"),
        ("room:1:x", "room"),
        ("jobs", "default"),
        ("notifications#42,43", "default"),
        (":x", ""),
        ("a#b:c", "a#b"),
    ],
)
def test_namespaces(channel: str, expected: str) -> None:
    assert namespace(channel) == expected


@pytest.mark.parametrize(
    "user",
    ["a\u2028b", "a\u3000b", "a\u0085b", "a\u200ab", "a\nb", "a\x7fb", "a\x9fb", "\ud800"],
)
def test_user_ids_refuse_what_rust_calls_whitespace_or_control(user: str) -> None:
    with pytest.raises(InvalidUser):
        user_id(user)


@pytest.mark.parametrize("user", ["a\u200bb", "a\ufeffb", "a\u180eb", "auth0|5f7c", "zoë", "😀"])
def test_user_ids_accept_what_rust_accepts(user: str) -> None:
    assert user_id(user) == user


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"channel": 7, "event": "e"}, InvalidChannel),
        ({"user": 42, "event": "e"}, InvalidUser),
        ({"client_type": None, "event": "e"}, InvalidClientType),
        ({"channel": "jobs", "event": 5}, InvalidEvent),
        ({"channel": "jobs"}, InvalidPublish),
        ({"channel": "jobs", "event": "e", "extra": 1}, InvalidPublish),
        ({"channels": "jobs", "event": "e"}, InvalidTarget),
        ({"channels": [], "event": "e"}, InvalidTarget),
        ({"broadcast": "yes", "event": "e"}, InvalidTarget),
        ({"broadcast": False, "event": "e"}, InvalidTarget),
        ({"client_type": "gui", "event": "e", "idempotency_key": "k"}, InvalidIdempotencyKey),
        ({"broadcast": True, "event": "e", "idempotency_key": "k"}, InvalidIdempotencyKey),
        ({"channel": "jobs", "event": "e", "idempotency_key": ""}, InvalidIdempotencyKey),
        ({"channel": "jobs", "event": "e", "idempotency_key": "é" * 65}, InvalidIdempotencyKey),
        ({"channel": "jobs", "event": "e", "idempotency_key": 1}, InvalidIdempotencyKey),
        ({"channel": "jobs", "event": "e", "exclude_client": 1}, InvalidPublish),
        ({"channel": "jobs", "event": "e", "data": float("inf")}, InvalidData),
        ({"channel": "jobs", "event": "e", "data": {1j}}, InvalidData),
        ({"channel": "jobs", "event": "e", "data": "\udc80"}, InvalidData),
    ],
)
def test_admin_fields_are_refused_like_the_admin_api(
    fields: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        Publish.from_fields(fields)


def test_the_longest_idempotency_key_is_accepted() -> None:
    publish = Publish.from_fields({"channel": "jobs", "event": "e", "idempotency_key": "k" * 128})
    assert commands(publish, frozenset())[0][6] == "gw:{jobs}:idem:" + "k" * 128


def test_data_keeps_the_callers_key_order_and_types() -> None:
    publish = Publish.to_channel("room:1", "e", {"b": 1, "a": (1, 2), "c": {"z": None, "y": 1.5}})
    envelope = json.loads(commands(publish, frozenset())[0][2])
    assert list(envelope) == ["channel", "event", "data", "timestamp"]
    assert publish.data == '{"b":1,"a":[1,2],"c":{"z":null,"y":1.5}}'


def test_unknown_history_sends_every_channel_event_through_the_script() -> None:
    publish = Publish.to_channels(["room:1", "jobs"], "e", None)
    assert [c[0] for c in commands(publish, None)] == ["EVALSHA", "EVALSHA"]
    assert [c[0] for c in commands(publish, frozenset({"default"}))] == ["PUBLISH", "EVALSHA"]
    assert [c[0] for c in commands(Publish.broadcast("e", None), None)] == ["PUBLISH"]


def test_timestamps_are_rfc3339_utc_milliseconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", timestamp_now())


def test_receipts_from_script_replies() -> None:
    scripted = Message("jobs", True, ("EVALSHA",))
    assert receipt(scripted, [3, b"1790000000123456", 0]) == Receipt("jobs", 3, "1790000000123456")
    assert receipt(scripted, [3, "e", 1]) == Receipt("jobs", 3, "e", duplicate=True)
    assert receipt(scripted, [0, b"", 1]) == Receipt("jobs", None, None, duplicate=True)
    assert receipt(Message(None, False, ("PUBLISH",)), 2) == Receipt(None)
    with pytest.raises(ValueError, match="unexpected reply"):
        receipt(scripted, b"OK")


def test_error_hierarchy_and_codes() -> None:
    assert issubclass(ReservedEvent, InvalidEvent)
    for name_error in (InvalidChannel, InvalidEvent, InvalidUser, InvalidClientType):
        assert issubclass(name_error, InvalidName)
    for before_redis in (InvalidName, InvalidTarget, InvalidIdempotencyKey, InvalidData):
        assert issubclass(before_redis, InvalidPublish)
    assert issubclass(InvalidPublish, ValueError)
    assert issubclass(InvalidPublish, PublisherError)
    assert issubclass(PublishFailed, PublisherError)
    assert not issubclass(PublishFailed, InvalidPublish)
    with pytest.raises(ReservedEvent) as refused:
        Publish.broadcast("pong", None)
    assert (refused.value.code, refused.value.value) == ("reserved_event", "pong")
