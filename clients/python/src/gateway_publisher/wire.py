"""What a publish writes to Redis, as a pure function: the commands of the Rust publisher.

`docs/redis.md` describes the format and `publisher/src/publish.rs` is the reference. A
publish becomes one bus message per destination (one per channel for several channels):

- a channel or user event goes through the history script (`EVALSHA`) when its namespace
  keeps history, when the gateways' namespaces are unknown, or when it has an idempotency key;
  otherwise, like client-type and broadcast events, it is a plain `PUBLISH <topic> <envelope>`;
- on a Redis Cluster (`mode="cluster"`) a channel's topic carries its hash tag
  (`<prefix>:ch:{<channel>}`), a channel message without history is an `SPUBLISH`, and the
  script gets only the keys of the channel's slot, with the idempotency window and the
  namespace's policy read from `{<prefix>}:namespaces` (see `Namespaces`);
- the envelope is compact JSON with its fields in this order: `channel` | `client_type` |
  `broadcast` (only when true), `event`, `data`, `timestamp`, `exclude_client` (when set).

`build` turns validated publishes into those commands without touching Redis, and `pipelines`
says which of them go out together (on a cluster: one pipeline per hash slot); both clients
and the test vectors (`publisher/vectors/publish.json`) go through them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Literal

from redis.crc import key_slot

from .errors import InvalidData, InvalidIdempotencyKey, InvalidPublish, InvalidTarget
from .names import channel_name, client_type_name, event_name, namespace, personal_channel, user_id
from .topology import RedisMode

__all__ = [
    "DEFAULT_IDEMPOTENCY_WINDOW_MS",
    "IDEMPOTENCY_WINDOW_FIELD",
    "NO_HISTORY",
    "SCRIPT",
    "SCRIPT_SHA1",
    "Destination",
    "Message",
    "Namespaces",
    "Publish",
    "Receipt",
    "build",
    "history_namespaces",
    "namespaces_key",
    "pipelines",
    "read_namespaces",
    "receipt",
    "timestamp_now",
]

#: The history script (`publisher/src/publish.lua`), byte for byte.
SCRIPT: bytes = resources.files(__package__).joinpath("publish.lua").read_bytes()
#: Its SHA1, the name Redis knows it by (`EVALSHA`).
SCRIPT_SHA1: str = hashlib.sha1(SCRIPT).hexdigest()

#: The field of the namespaces hash where the gateways write their idempotency window, in ms.
#: Its leading colon keeps it apart from every namespace name.
IDEMPOTENCY_WINDOW_FIELD = ":idempotency_window_ms"
#: The idempotency window, in ms, where no gateway wrote one (the script's default too).
DEFAULT_IDEMPOTENCY_WINDOW_MS = "300000"
#: The policy passed to the script, on a cluster, for a namespace that keeps no history.
NO_HISTORY = "0 0"
#: The largest window the Rust crate reads (a u64 of milliseconds).
_U64_MAX = 2**64 - 1

#: The publish fields of the gateway's admin API (`POST /api/publish`).
_FIELDS = frozenset(
    {
        "channel",
        "channels",
        "user",
        "client_type",
        "broadcast",
        "event",
        "data",
        "exclude_client",
        "idempotency_key",
    }
)


def _json(value: Any) -> str:
    """Compact JSON with raw UTF-8 and serde_json's escapes (only `"`, `\\` and controls)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _utf8(text: str, what: str) -> str:
    """`text`, if it can be sent as UTF-8 (a lone surrogate cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidData(f"{what} is not valid Unicode: {error}") from None
    return text


def timestamp_now() -> str:
    """The current time as the wire writes it: RFC 3339 in UTC with milliseconds, `Z`."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Destination:
    """Where one bus message goes: a channel, a client type, or every connection."""

    kind: Literal["channel", "client_type", "broadcast"]
    name: str = ""


@dataclass(frozen=True)
class Publish:
    """One validated publish: its destinations, event name, data (already JSON) and options.

    Build one with the `to_*` constructors or `from_fields`; each validates its names, and
    raises an `InvalidPublish` error, before anything reaches Redis. The data is written as
    given: JSON objects keep the order of the caller's dicts (serde_json, and so the Rust
    publisher, sorts keys; clients see the same values either way).
    """

    destinations: tuple[Destination, ...]
    event: str
    data: str
    exclude_client: str | None = None
    idempotency_key: str | None = None

    @classmethod
    def to_channel(
        cls,
        channel: str,
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> Publish:
        """An event for the subscribers of `channel`."""
        target = Destination("channel", channel_name(channel))
        return cls._make((target,), event, data, exclude_client, idempotency_key)

    @classmethod
    def to_channels(
        cls,
        channels: Iterable[str],
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> Publish:
        """An event for the subscribers of each of `channels`: one bus message per channel."""
        if isinstance(channels, str | bytes):
            raise InvalidTarget("channels must be a list of channel names, not one string")
        targets = tuple(Destination("channel", channel_name(c)) for c in channels)
        if not targets:
            raise InvalidTarget("channels is empty")
        return cls._make(targets, event, data, exclude_client, idempotency_key)

    @classmethod
    def to_user(
        cls,
        user: str,
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> Publish:
        """An event for every connection of `user`: its personal channel `#<user>`."""
        target = Destination("channel", personal_channel(user_id(user)))
        return cls._make((target,), event, data, exclude_client, idempotency_key)

    @classmethod
    def to_client_type(
        cls, client_type: str, event: str, data: Any, *, exclude_client: str | None = None
    ) -> Publish:
        """An event for every connection registered as `client_type`."""
        target = Destination("client_type", client_type_name(client_type))
        return cls._make((target,), event, data, exclude_client, None)

    @classmethod
    def broadcast(cls, event: str, data: Any, *, exclude_client: str | None = None) -> Publish:
        """An event for every connection (a broadcast)."""
        return cls._make((Destination("broadcast"),), event, data, exclude_client, None)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Publish:
        """A publish from the admin API's fields (`POST /api/publish`): exactly one of
        `channel`, `channels`, `user`, `client_type` or `broadcast: true`, with `event`,
        `data` (default null), `exclude_client` and `idempotency_key` (optional)."""
        if not isinstance(fields, Mapping):
            raise InvalidPublish(f"a publish is a mapping of fields, not {type(fields).__name__}")
        unknown = sorted(str(f) for f in fields if f not in _FIELDS)
        if unknown:
            raise InvalidPublish(f"unknown publish fields: {', '.join(unknown)}")
        broadcast = fields.get("broadcast", False)
        if not isinstance(broadcast, bool):
            raise InvalidTarget("broadcast must be true or false")
        named = [f for f in ("channel", "channels", "user", "client_type") if f in fields]
        if broadcast:
            named.append("broadcast")
        if len(named) != 1:
            raise InvalidTarget(
                "name exactly one target: channel, channels, user, client_type or broadcast"
                + (f" (got {', '.join(named)})" if named else "")
            )
        if "event" not in fields:
            raise InvalidPublish("event is missing")
        event, data = fields["event"], fields.get("data")
        exclude = fields.get("exclude_client")
        key = fields.get("idempotency_key")
        match named[0]:
            case "channel":
                return cls.to_channel(
                    fields["channel"], event, data, exclude_client=exclude, idempotency_key=key
                )
            case "channels":
                channels = fields["channels"]
                if not isinstance(channels, list | tuple):
                    raise InvalidTarget("channels must be a list of channel names")
                return cls.to_channels(
                    channels, event, data, exclude_client=exclude, idempotency_key=key
                )
            case "user":
                return cls.to_user(
                    fields["user"], event, data, exclude_client=exclude, idempotency_key=key
                )
            case "client_type":
                target = Destination("client_type", client_type_name(fields["client_type"]))
            case _:
                target = Destination("broadcast")
        return cls._make((target,), event, data, exclude, key)

    @classmethod
    def _make(
        cls,
        destinations: tuple[Destination, ...],
        event: Any,
        data: Any,
        exclude_client: Any,
        idempotency_key: Any,
    ) -> Publish:
        name = event_name(event)
        if idempotency_key is not None:
            if destinations[0].kind != "channel":
                raise InvalidIdempotencyKey(
                    "idempotency_key works with channel, channels and user targets"
                )
            if (
                not isinstance(idempotency_key, str)
                or not 1 <= len(_utf8(idempotency_key, "idempotency_key").encode()) <= 128
            ):
                raise InvalidIdempotencyKey("idempotency_key must be 1 to 128 bytes")
        if exclude_client is not None:
            if not isinstance(exclude_client, str):
                raise InvalidPublish("exclude_client must be a client id (a string)")
            _utf8(exclude_client, "exclude_client")
        try:
            encoded = _json(data)
        except (TypeError, ValueError, RecursionError) as error:
            raise InvalidData(f"event data is not serialisable as JSON: {error}") from error
        return cls(
            destinations, name, _utf8(encoded, "event data"), exclude_client, idempotency_key
        )


@dataclass(frozen=True)
class Message:
    """One bus message of a publish, as the Redis command that sends it."""

    #: The channel, for channel and user events.
    channel: str | None
    #: Sent through the history script (its reply is `[offset, epoch, duplicate]`).
    scripted: bool
    #: The command and its arguments, as sent.
    command: tuple[str, ...]
    #: The pub/sub topic it goes to; on a cluster its hash slot is the message's (`pipelines`).
    topic: str = ""


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Namespaces:
    """What the gateways wrote to the hash `<prefix>:namespaces` (`{<prefix>}:namespaces` on a
    cluster), as a publisher needs it. Read one with `read_namespaces`."""

    #: The namespaces that keep history (whose policy does not start with `"0 "`), each with
    #: its policy `"<size> <ttl_ms>"` as the hash holds it.
    history: Mapping[str, str]
    #: The idempotency window in ms, in decimal: the gateways', else 300000.
    window_ms: str = DEFAULT_IDEMPOTENCY_WINDOW_MS

    def policy(self, namespace: str) -> str:
        """The policy the script gets on a cluster: the namespace's, or `"0 0"` (none)."""
        return self.history.get(namespace, NO_HISTORY)


def _window(value: str) -> str | None:
    """The window as the Rust crate reads it (a u64 of milliseconds), in decimal; else None."""
    digits = value[1:] if value.startswith("+") else value
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    ms = int(digits)
    return str(ms) if ms <= _U64_MAX else None


def read_namespaces(fields: Mapping[Any, Any]) -> Namespaces:
    """The settings in the fields of the namespaces hash (what `HGETALL` answered, as bytes or
    text): field = namespace, value = its policy `"<size> <ttl_ms>"`, and the idempotency
    window under `:idempotency_window_ms`. Fields starting with `:` are settings, never
    namespaces."""
    history: dict[str, str] = {}
    window = DEFAULT_IDEMPOTENCY_WINDOW_MS
    for raw_field, raw_value in fields.items():
        field, value = _text(raw_field), _text(raw_value)
        if field == IDEMPOTENCY_WINDOW_FIELD:
            window = _window(value) or DEFAULT_IDEMPOTENCY_WINDOW_MS
        elif not field.startswith(":") and not value.startswith("0 "):
            history[field] = value
    return Namespaces(history, window)


def _envelope(destination: Destination, publish: Publish, timestamp: str) -> str:
    match destination.kind:
        case "channel":
            head = f'{{"channel":{_json(destination.name)},'
        case "client_type":
            head = f'{{"client_type":{_json(destination.name)},'
        case _:
            head = '{"broadcast":true,'
    tail = "}"
    if publish.exclude_client is not None:
        tail = f',"exclude_client":{_json(publish.exclude_client)}}}'
    return (
        f'{head}"event":{_json(publish.event)},"data":{publish.data},'
        f'"timestamp":{_json(timestamp)}{tail}'
    )


def _topic(prefix: str, destination: Destination, sharded: bool) -> str:
    match destination.kind:
        case "channel" if sharded:
            return f"{prefix}:ch:{{{destination.name}}}"
        case "channel":
            return f"{prefix}:ch:{destination.name}"
        case "client_type":
            return f"{prefix}:ct:{destination.name}"
        case _:
            return f"{prefix}:broadcast"


def namespaces_key(prefix: str, mode: RedisMode = "standalone") -> str:
    """The hash of the gateways' settings: `<prefix>:namespaces`, on a cluster
    `{<prefix>}:namespaces` (the node registry's keys share the prefix's slot)."""
    return f"{{{prefix}}}:namespaces" if mode == "cluster" else f"{prefix}:namespaces"


def _script_call(
    prefix: str,
    channel: str,
    topic: str,
    payload: str,
    key: str | None,
    cluster: Namespaces | None,
) -> tuple[str, ...]:
    """The history script's call (`PublishCall::invocation` of `publisher/src/wire/script.rs`):
    KEYS stream, meta, then the namespaces hash and the idempotency key or `""`; on a cluster
    only the keys of the channel's slot, with the window, the policy and `SPUBLISH` in ARGV."""
    ns = namespace(channel)
    keys = [f"{prefix}:{{{channel}}}:stream", f"{prefix}:{{{channel}}}:meta"]
    idempotency = "" if key is None else f"{prefix}:{{{channel}}}:idem:{key}"
    if cluster is None:
        # The idempotency window and the namespace's policy: the script reads both from the
        # namespaces hash, where the gateways wrote them.
        keys += [namespaces_key(prefix), idempotency]
        return ("EVALSHA", SCRIPT_SHA1, str(len(keys)), *keys, topic, payload, ns, "", "")
    # On a cluster every key shares the channel's slot: no namespaces key, and no empty
    # idempotency key (it would hash to slot 0); the caller passes what the script cannot read.
    if key is not None:
        keys.append(idempotency)
    window, policy = cluster.window_ms, cluster.policy(ns)
    return (
        "EVALSHA",
        SCRIPT_SHA1,
        str(len(keys)),
        *keys,
        topic,
        payload,
        ns,
        window,
        policy,
        "SPUBLISH",
    )


def build(
    publishes: Sequence[Publish],
    *,
    prefix: str,
    timestamp: str,
    history: Set[str] | None = None,
    mode: RedisMode = "standalone",
    namespaces: Namespaces | None = None,
) -> list[list[Message]]:
    """The Redis commands of `publishes`, published together at `timestamp`: one list per
    publish, one message per destination. Without the `SCRIPT LOAD` that leads them while the
    script is not loaded.

    What the gateways wrote to the namespaces hash is `namespaces` (`read_namespaces`), or
    just `history`, the set of namespaces that keep history (`history_namespaces`); with
    neither, the settings are unknown and every channel event is scripted, which is always
    correct — except in `mode="cluster"`, where the script cannot read them itself: there
    `namespaces` is required (a `ValueError` without it). `mode="sentinel"` writes what
    `standalone` writes.
    """
    sharded = mode == "cluster"
    if sharded and namespaces is None:
        raise ValueError("on a Redis Cluster the gateways' namespaces must be known")
    if history is None and namespaces is not None:
        history = namespaces.history.keys()
    batch = []
    for publish in publishes:
        messages = []
        for destination in publish.destinations:
            topic = _topic(prefix, destination, sharded)
            payload = _envelope(destination, publish, timestamp)
            if destination.kind != "channel":
                messages.append(Message(None, False, ("PUBLISH", topic, payload), topic))
                continue
            channel = destination.name
            key = publish.idempotency_key
            if key is None and history is not None and namespace(channel) not in history:
                publish_command = "SPUBLISH" if sharded else "PUBLISH"
                messages.append(Message(channel, False, (publish_command, topic, payload), topic))
                continue
            cluster = namespaces if sharded else None
            command = _script_call(prefix, channel, topic, payload, key, cluster)
            messages.append(Message(channel, True, command, topic))
        batch.append(messages)
    return batch


def pipelines(messages: Sequence[Message], mode: RedisMode = "standalone") -> list[list[int]]:
    """The indexes of `messages` in pipelines, as `Publisher::groups` of the Rust crate: one
    with all of them, or in `mode="cluster"` one per hash slot of their topics (a channel's
    topic is in the slot of its history keys), in the order of each one's first message, each
    in the messages' order."""
    if mode != "cluster":
        return [list(range(len(messages)))] if messages else []
    slots: dict[int, list[int]] = {}
    for index, message in enumerate(messages):
        # dicts keep their keys in the order first set: that of each group's first message.
        slots.setdefault(key_slot(message.topic.encode("utf-8")), []).append(index)
    return list(slots.values())


def history_namespaces(policies: Mapping[Any, Any]) -> frozenset[str]:
    """The namespaces that keep history, from the hash `<prefix>:namespaces` (field =
    namespace, value = `"<size> <ttl_ms>"`): those whose size is not 0.

    Fields starting with `:` are settings (`:idempotency_window_ms`), never namespaces.
    """
    return frozenset(read_namespaces(policies).history)


@dataclass(frozen=True)
class Receipt:
    """What one bus message became.

    `channel` is the channel for channel and user events (`#<user>` for a user), else `None`.
    `offset` and `epoch` are the event's position where the channel keeps history, else
    `None`. `duplicate` is true when the idempotency key had been seen: nothing was published,
    and the position is the first publish's.
    """

    channel: str | None
    offset: int | None = None
    epoch: str | None = None
    duplicate: bool = False


def receipt(message: Message, reply: Any) -> Receipt:
    """The receipt of `message` from its Redis reply: the script's `[offset, epoch,
    duplicate]`, or PUBLISH's count of receiving nodes (which says nothing)."""
    if not message.scripted:
        return Receipt(message.channel)
    if (
        not isinstance(reply, list | tuple)
        or len(reply) != 3
        or not isinstance(reply[0], int)
        or not isinstance(reply[2], int)
    ):
        raise ValueError(f"unexpected reply to the publish script: {reply!r}")
    offset, epoch, duplicate = reply
    if offset > 0:
        return Receipt(message.channel, offset, _text(epoch), duplicate == 1)
    return Receipt(message.channel, None, None, duplicate == 1)
