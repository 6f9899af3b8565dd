"""Publish events to the real-time gateway's Redis bus, from worker services in Python.

```python
from gateway_publisher import Publisher

with Publisher.from_url("redis://localhost:6379", prefix="gw") as publisher:
    publisher.publish_channel("jobs", "job_progress", {"job_id": "abc", "progress": 45.5})
    publisher.publish_user("42", "photo_ready", {"photo": "p1"})
```

`AsyncPublisher` has the same methods for asyncio. What goes to Redis is exactly what the Rust
`publisher` crate writes (`wire.build`), checked against `publisher/vectors/publish.json`.
"""

from .client import AsyncPublisher, BatchItem, Publisher
from .errors import (
    InvalidChannel,
    InvalidClientType,
    InvalidData,
    InvalidEvent,
    InvalidIdempotencyKey,
    InvalidName,
    InvalidPublish,
    InvalidTarget,
    InvalidUser,
    PublisherError,
    PublishFailed,
    ReservedEvent,
)
from .wire import Publish, Receipt

__all__ = [
    "AsyncPublisher",
    "BatchItem",
    "InvalidChannel",
    "InvalidClientType",
    "InvalidData",
    "InvalidEvent",
    "InvalidIdempotencyKey",
    "InvalidName",
    "InvalidPublish",
    "InvalidTarget",
    "InvalidUser",
    "Publish",
    "PublishFailed",
    "Publisher",
    "PublisherError",
    "Receipt",
    "ReservedEvent",
]
