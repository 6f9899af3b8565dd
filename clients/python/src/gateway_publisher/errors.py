"""Every exception the publisher raises.

```
PublisherError                      anything this library raises
├── InvalidPublish (ValueError)     refused before anything was sent to Redis
│   ├── InvalidName
│   │   ├── InvalidChannel          invalid_channel
│   │   ├── InvalidEvent            invalid_event
│   │   │   └── ReservedEvent       reserved_event
│   │   ├── InvalidUser             invalid_user
│   │   └── InvalidClientType       invalid_client_type
│   ├── InvalidTarget               invalid_target
│   ├── InvalidIdempotencyKey       invalid_idempotency_key
│   └── InvalidData                 invalid_data
├── InvalidConfiguration            invalid_configuration: the Redis settings do not fit
│                                   together (also a ValueError); raised by `from_url`
└── PublishFailed                   publish_failed: Redis failed or refused the publish
```

Each class has a `code`, the one the test vectors (`publisher/vectors/publish.json`) name.
`PublishFailed` keeps the Redis error as its `__cause__`.
"""

from __future__ import annotations

__all__ = [
    "InvalidChannel",
    "InvalidClientType",
    "InvalidConfiguration",
    "InvalidData",
    "InvalidEvent",
    "InvalidIdempotencyKey",
    "InvalidName",
    "InvalidPublish",
    "InvalidTarget",
    "InvalidUser",
    "PublishFailed",
    "PublisherError",
    "ReservedEvent",
]


class PublisherError(Exception):
    """Base of every error of this library."""

    code: str = "publisher_error"


class InvalidPublish(PublisherError, ValueError):
    """A publish was refused before anything was sent to Redis."""

    code = "bad_request"


class InvalidName(InvalidPublish):
    """A channel, event, user id or client type does not follow the gateway's rules."""

    code = "invalid_name"

    def __init__(self, message: str, value: object) -> None:
        super().__init__(message)
        #: The refused value, as given.
        self.value = value


class InvalidChannel(InvalidName):
    """A channel name is not 1 to 255 bytes of `[A-Za-z0-9_:#.@=,-]`."""

    code = "invalid_channel"


class InvalidEvent(InvalidName):
    """An event name is not 1 to 128 bytes of `[A-Za-z0-9_.:-]`."""

    code = "invalid_event"


class ReservedEvent(InvalidEvent):
    """An event name is one of the protocol's frame types (`pong`, `subscribed`, …)."""

    code = "reserved_event"


class InvalidUser(InvalidName):
    """A user id is empty, over 255 bytes, or holds a space, control character, `#` or `,`."""

    code = "invalid_user"


class InvalidClientType(InvalidName):
    """A client type is not 1 to 64 bytes of `[A-Za-z0-9_.-]`."""

    code = "invalid_client_type"


class InvalidTarget(InvalidPublish):
    """A publish names no target, more than one, or an empty list of channels."""

    code = "invalid_target"


class InvalidIdempotencyKey(InvalidPublish):
    """An idempotency key is not 1 to 128 bytes, or is given for a client type or broadcast."""

    code = "invalid_idempotency_key"


class InvalidData(InvalidPublish):
    """The event's data cannot be written as JSON (NaN, an unknown type, a lone surrogate…)."""

    code = "invalid_data"


class InvalidConfiguration(PublisherError, ValueError):
    """The Redis settings do not fit together: an unknown mode, several URLs in standalone
    mode, sentinel mode without the master's name, a master's name in another mode, a URL
    that the mode cannot use. Raised by `from_url`, before anything is connected."""

    code = "invalid_configuration"


class PublishFailed(PublisherError):
    """Redis failed or refused the publish; the Redis error is the `__cause__`.

    In a batch, the messages before and after the failing one may have been published.
    """

    code = "publish_failed"
