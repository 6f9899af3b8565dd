"""The gateway's naming rules, exactly as `publisher/src/wire.rs` states them.

Each function takes a value as a caller gives it and returns it checked, or raises the
matching `InvalidName` error.
"""

from __future__ import annotations

import re

from .errors import InvalidChannel, InvalidClientType, InvalidEvent, InvalidUser, ReservedEvent

__all__ = [
    "RESERVED_EVENT_NAMES",
    "channel_name",
    "client_type_name",
    "event_name",
    "namespace",
    "personal_channel",
    "user_id",
]

#: Frame types the gateway itself sends or receives; an event may not be named like one.
RESERVED_EVENT_NAMES: frozenset[str] = frozenset(
    {
        "auth",
        "connection_established",
        "disconnect",
        "error",
        "heartbeat",
        "history",
        "join",
        "leave",
        "ping",
        "pong",
        "presence",
        "publish",
        "published",
        "refresh",
        "refreshed",
        "register",
        "registered",
        "reload",
        "subscribe",
        "subscribed",
        "unsubscribe",
        "unsubscribed",
    }
)

# All three charsets are ASCII, so a match also bounds the length in bytes.
_CHANNEL = re.compile(r"[A-Za-z0-9_:#.@=,-]{1,255}")
_EVENT = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_CLIENT_TYPE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# What Rust's `char::is_control` (category Cc) and `char::is_whitespace` (the Unicode
# White_Space property) refuse in a user id. Python's `str.isspace` is a different set, so the
# characters are listed here.
_CONTROL = {chr(c) for c in range(0x00, 0x20)} | {chr(c) for c in range(0x7F, 0xA0)}
_WHITESPACE = {
    *(chr(c) for c in range(0x09, 0x0E)),
    "\u0020",
    "\u0085",
    "\u00a0",
    "\u1680",
    *(chr(c) for c in range(0x2000, 0x200B)),
    "\u2028",
    "\u2029",
    "\u202f",
    "\u205f",
    "\u3000",
}
_NOT_IN_USER_ID = frozenset(_CONTROL | _WHITESPACE | {"#", ","})


def channel_name(name: object) -> str:
    """A channel name: 1 to 255 bytes of `[A-Za-z0-9_:#.@=,-]`."""
    if not isinstance(name, str) or not _CHANNEL.fullmatch(name):
        raise InvalidChannel(
            f"invalid channel name {name!r}: 1 to 255 bytes of [A-Za-z0-9_:#.@=,-]", name
        )
    return name


def event_name(name: object) -> str:
    """An event name: 1 to 128 bytes of `[A-Za-z0-9_.:-]`, not a frame type of the protocol."""
    if not isinstance(name, str) or not _EVENT.fullmatch(name):
        raise InvalidEvent(f"invalid event name {name!r}: 1 to 128 bytes of [A-Za-z0-9_.:-]", name)
    if name in RESERVED_EVENT_NAMES:
        raise ReservedEvent(f"event name {name!r} is reserved by the protocol", name)
    return name


def client_type_name(name: object) -> str:
    """A client type (`gui`, `mobile`, …): 1 to 64 bytes of `[A-Za-z0-9_.-]`."""
    if not isinstance(name, str) or not _CLIENT_TYPE.fullmatch(name):
        raise InvalidClientType(
            f"invalid client type {name!r}: 1 to 64 bytes of [A-Za-z0-9_.-]", name
        )
    return name


def user_id(user: object) -> str:
    """A user id: 1 to 255 bytes of UTF-8 without spaces, control characters, `#` or `,`.

    Ids such as `auth0|5f7c` are fine; `#` and `,` separate the users of a user-limited
    channel (`notifications#42,43`).
    """
    message = f"invalid user id {user!r}: 1 to 255 bytes, no spaces, control characters, '#' or ','"
    if not isinstance(user, str) or not user or not _NOT_IN_USER_ID.isdisjoint(user):
        raise InvalidUser(message, user)
    try:
        size = len(user.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidUser(message, user) from None
    if size > 255:
        raise InvalidUser(message, user)
    return user


def personal_channel(user: str) -> str:
    """The channel `#<user_id>` on which every connection of a user listens."""
    return f"#{user}"


def namespace(channel: str) -> str:
    """`personal` for `#<user>`, else the part before the first `:`, else `default`."""
    if channel.startswith("#"):
        return "personal"
    head, colon, _ = channel.partition(":")
    return head if colon else "default"
