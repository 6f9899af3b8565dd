"""Publish events to the real-time gateway's Redis bus, from worker services in Python.

```python
from gateway_publisher import Publisher

with Publisher.from_url("redis://localhost:6379", prefix="gw") as publisher:
    publisher.publish_channel("jobs", "job_progress", {"job_id": "abc", "progress": 45.5})
    publisher.publish_user("42", "photo_ready", {"photo": "p1"})

# The gateways' GATEWAY_REDIS_MODE: a Redis Cluster from its seed nodes, or through Sentinel.
Publisher.from_url("redis://10.0.0.1:6379,redis://10.0.0.2:6379", mode="cluster")
Publisher.from_url("redis://10.0.0.5:26379", mode="sentinel", sentinel_master="mymaster")
```

`AsyncPublisher` has the same methods for asyncio. What goes to Redis is exactly what the Rust
`publisher` crate writes (`wire.build`, and on a cluster `wire.pipelines`), checked against
`publisher/vectors/publish.json`.
"""

from .client import AsyncPublisher, BatchItem, Publisher
from .errors import (
    InvalidChannel,
    InvalidClientType,
    InvalidConfiguration,
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
from .topology import MODES, RedisMode, Topology, parse_topology
from .wire import Publish, Receipt

__all__ = [
    "MODES",
    "AsyncPublisher",
    "BatchItem",
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
    "Publish",
    "PublishFailed",
    "Publisher",
    "PublisherError",
    "Receipt",
    "RedisMode",
    "ReservedEvent",
    "Topology",
    "parse_topology",
]
