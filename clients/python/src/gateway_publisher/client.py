"""`Publisher` (blocking, redis-py) and `AsyncPublisher` (asyncio, `redis.asyncio`).

Both do what the Rust `publisher::Publisher` does, with the same method names:

1. validate every publish of the call (nothing is sent if one is invalid);
2. read the gateways' settings from `<prefix>:namespaces` (`{<prefix>}:namespaces` on a Redis
   Cluster), at most every 5 s;
3. send every message of the call in one pipelined round trip (not a transaction), with
   `SCRIPT LOAD` in front while the script is not known to be loaded. On a Redis Cluster the
   messages go out as one pipeline per hash slot of their topics (`wire.pipelines`), all in one
   round trip to every node concerned (redis-py's cluster pipeline), with `SCRIPT LOAD` in front
   on each node that gets script calls and is not known to have the script;
4. if Redis lost its scripts (`NOSCRIPT`: a restart, `SCRIPT FLUSH`, a cluster node that never
   had it), load the script (on a cluster, on each node that answered so) and send again
   exactly the script calls that failed: the plain `PUBLISH`es already went out.

Neither client retries a failed round trip: a retried pipeline could publish twice. Give
channel and user events an idempotency key if you retry them yourself. (On a cluster,
redis-py itself sends a command again to the node a `MOVED` or `ASK` answer names, which is
safe: the first node did not run it.)

The mode comes from `from_url(..., mode=...)`, as the gateways' `GATEWAY_REDIS_MODE`: a
`standalone` server, a `cluster`, or a master found through `sentinel`s, which is written to as
a standalone server is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from redis.retry import Retry

from .errors import InvalidConfiguration, PublishFailed
from .topology import RedisMode, Topology, parse_topology
from .wire import (
    SCRIPT,
    Message,
    Namespaces,
    Publish,
    Receipt,
    build,
    namespaces_key,
    pipelines,
    read_namespaces,
    receipt,
    timestamp_now,
)

__all__ = ["AsyncPublisher", "BatchItem", "Publisher"]

#: How long the gateways' settings (the namespaces hash) are cached, as in the Rust publisher.
POLICY_REFRESH_S = 5.0

#: What `publish_batch` takes: the admin API's publish fields, or a `Publish`.
BatchItem = Mapping[str, Any] | Publish

_LOAD = ("SCRIPT", "LOAD", SCRIPT)

#: What redis-py raises when Redis fails: its errors, and its cluster's own (no node reachable,
#: a slot no node serves), which are not `RedisError`s.
_REDIS_ERRORS = (RedisError, RedisClusterException)

#: One command of a round trip: its arguments, and the options redis-py's pipeline takes with
#: them (`target_nodes`, for a `SCRIPT LOAD` on one cluster node).
_Command = tuple[tuple[Any, ...], dict[str, Any]]


def _client_options(options: dict[str, Any], retry: object) -> dict[str, Any]:
    # The Rust publisher waits up to 5 s for a connection and for each reply, and never
    # retries a pipeline; redis-py 6+ would retry three times by default.
    options.setdefault("retry", retry)
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 5.0)
    return options


def _url_options(url: str) -> dict[str, Any]:
    """What redis-py reads from a `redis://` or `rediss://` URL (host, port, credentials,
    database, query options), with `ssl=True` for `rediss://`."""
    try:
        options: dict[str, Any] = dict(parse_url(url))
    except ValueError as error:
        raise InvalidConfiguration(f"invalid Redis URL {url!r}: {error}") from None
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True  # parse_url names SSLConnection for rediss://
    return options


def _addresses(topology: Topology) -> list[tuple[str, int]]:
    """The host and port of each URL (6379 where a URL names none, as in every Redis URL)."""
    addresses = []
    for url in topology.urls:
        options = _url_options(url)
        addresses.append((str(options.get("host") or "localhost"), int(options.get("port", 6379))))
    return addresses


def _shared_options(topology: Topology) -> dict[str, Any]:
    """What every node's (or sentinel's) connection takes from the first URL: credentials, TLS
    and query options; not its address, and not a database, which a cluster does not have."""
    options = _url_options(topology.urls[0])
    for address in ("host", "port"):
        options.pop(address, None)
    database = options.pop("db", 0)
    if topology.mode == "cluster" and database not in (0, None):
        raise InvalidConfiguration(f"a Redis Cluster has only database 0, not {database}")
    return options


def _sentinel_options(topology: Topology, options: Mapping[str, Any]) -> dict[str, Any]:
    """The sentinels' connections: the URLs' credentials and TLS, the publisher's timeouts."""
    timeouts = {
        name: options[name]
        for name in ("socket_timeout", "socket_connect_timeout")
        if name in options
    }
    return {**timeouts, **_shared_options(topology)}


def _mode_of(client: object) -> RedisMode:
    """The mode of a client the application made: a cluster's, a Sentinel master's, or one
    server's."""
    if isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster):
        return "cluster"
    pool = getattr(client, "connection_pool", None)
    sentinel_pools = (
        redis.sentinel.SentinelConnectionPool,
        redis.asyncio.sentinel.SentinelConnectionPool,
    )
    return "sentinel" if isinstance(pool, sentinel_pools) else "standalone"


class _State:
    """What both clients remember between calls: the prefix and mode, where the script is
    loaded, and the cached namespace settings."""

    def __init__(self, prefix: str, mode: RedisMode) -> None:
        self.prefix = prefix
        self.mode: RedisMode = mode
        #: Whether the one server has the script (standalone and sentinel modes).
        self.script_loaded = False
        #: Why Redis refused the last `SCRIPT LOAD`, if it did.
        self.load_error: Exception | None = None
        self._lock = threading.Lock()
        #: The cluster nodes (by name, `host:port`) known to have the script.
        self._loaded_nodes: set[str] = set()
        self._namespaces: Namespaces | None = None
        self._read_at: float | None = None

    @property
    def cluster(self) -> bool:
        return self.mode == "cluster"

    @property
    def namespaces_key(self) -> str:
        return namespaces_key(self.prefix, self.mode)

    def cached_namespaces(self) -> Namespaces | None:
        """The gateways' settings if they were read less than 5 s ago."""
        with self._lock:
            if self._read_at is not None and time.monotonic() - self._read_at < POLICY_REFRESH_S:
                return self._namespaces
        return None

    def remember_namespaces(self, fields: Mapping[Any, Any]) -> Namespaces:
        namespaces = read_namespaces(fields)
        with self._lock:
            self._namespaces, self._read_at = namespaces, time.monotonic()
        return namespaces

    def unreadable_namespaces(self, error: Exception) -> Namespaces | None:
        """What to go on when the settings could not be read: on one server nothing (every
        channel event goes through the script, always correct); on a cluster, where the script
        cannot read them itself, the publish fails: nothing is guessed."""
        if self.cluster:
            raise PublishFailed(
                f"cannot read the gateways' settings from {self.namespaces_key}, which a "
                f"publisher on a Redis Cluster must know: {error}"
            ) from error
        return None

    def plan(
        self, publishes: Sequence[Publish], namespaces: Namespaces | None
    ) -> tuple[list[list[Message]], list[Message], list[int]]:
        """The call's messages, per publish and all of them, and the order they are sent in:
        pipeline after pipeline (one, or on a cluster one per hash slot)."""
        # One batch is published at one moment: one timestamp for all its events.
        batch = build(
            publishes,
            prefix=self.prefix,
            timestamp=timestamp_now(),
            mode=self.mode,
            namespaces=namespaces,
        )
        messages = [message for messages in batch for message in messages]
        order = [index for group in pipelines(messages, self.mode) for index in group]
        return batch, messages, order

    def pipeline(
        self,
        messages: Sequence[Message],
        indexes: Iterable[int],
        node_of: Callable[[str], Any] | None,
    ) -> tuple[list[Any], list[_Command]]:
        """The commands of one round trip: the messages at `indexes`, after the `SCRIPT LOAD`s
        they need. On one server (`node_of` None) one while the script is not known to be
        loaded; on a cluster one on each node that gets script calls and is not known to have
        it (`node_of(topic)` is the node of a topic's slot). Also answers those nodes (None for
        the one server), in the order of their `SCRIPT LOAD`s."""
        indexes = list(indexes)
        loads: list[Any] = []
        if node_of is None:
            if not self.script_loaded:
                loads.append(None)
        else:
            with self._lock:
                loaded = set(self._loaded_nodes)
            for index in indexes:
                if messages[index].scripted:
                    node = node_of(messages[index].topic)
                    if node.name not in loaded:
                        loaded.add(node.name)
                        loads.append(node)
        commands: list[_Command] = [
            (_LOAD, {} if node is None else {"target_nodes": node}) for node in loads
        ]
        for index in indexes:
            name, *args = messages[index].command
            commands.append(((name, *(arg.encode("utf-8") for arg in args)), {}))
        return loads, commands

    def took(self, loads: Sequence[Any], replies: list[Any]) -> list[Any]:
        """The replies of the messages, once those of the `SCRIPT LOAD`s are set apart."""
        refused = None
        for node, reply in zip(loads, replies, strict=False):
            if isinstance(reply, Exception):
                refused = reply
            elif node is None:
                self.script_loaded = True
            else:
                with self._lock:
                    self._loaded_nodes.add(node.name)
        if loads:
            self.load_error = refused
        return replies[len(loads) :]

    def lost_script(
        self,
        messages: Sequence[Message],
        replies: Sequence[Any],
        node_of: Callable[[str], Any] | None,
    ) -> list[int]:
        """The messages whose script call found no script; they must be sent again, after the
        script is loaded where they go."""
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost and node_of is None:
            self.script_loaded = False
        elif lost and node_of is not None:
            nodes = {node_of(messages[index].topic).name for index in lost}
            with self._lock:
                self._loaded_nodes -= nodes
        return lost

    def receipts(self, batch: list[list[Message]], replies: Sequence[Any]) -> list[list[Receipt]]:
        answers = iter(replies)
        results = []
        for messages in batch:
            receipts = []
            for message in messages:
                reply = next(answers)
                if isinstance(reply, NoScriptError) and self.load_error is not None:
                    error = self.load_error
                    raise PublishFailed(f"Redis refused to load the script: {error}") from error
                if isinstance(reply, Exception):
                    where = message.channel if message.channel is not None else message.command[1]
                    raise PublishFailed(f"Redis refused the publish to {where}: {reply}") from reply
                try:
                    receipts.append(receipt(message, reply))
                except ValueError as error:
                    raise PublishFailed(str(error)) from error
            results.append(receipts)
        return results


def _validated(items: Iterable[BatchItem]) -> list[Publish]:
    return [item if isinstance(item, Publish) else Publish.from_fields(item) for item in items]


def _failed(error: Exception) -> PublishFailed:
    # Some of redis-py's errors say nothing but their class (MaxConnectionsError).
    return PublishFailed(f"publishing through Redis failed: {str(error) or repr(error)}")


class Publisher:
    """Publishes events to the gateways' Redis bus; blocking, thread-safe. Share one per
    process.

    ```python
    with Publisher.from_url("redis://localhost:6379", prefix="gw") as publisher:
        receipt = publisher.publish_channel("jobs", "job_progress", {"job_id": "abc"})

    on_cluster = Publisher.from_url("redis://10.0.0.1:6379,redis://10.0.0.2:6379", mode="cluster")
    behind_sentinel = Publisher.from_url(
        "redis://10.0.0.5:26379,redis://10.0.0.6:26379", mode="sentinel", sentinel_master="mymaster"
    )
    ```
    """

    def __init__(
        self, client: redis.Redis | redis.cluster.RedisCluster, *, prefix: str = "gw"
    ) -> None:
        """A publisher over an existing redis-py client, which it does not close: a
        `redis.Redis`, a Sentinel's `master_for(...)`, or a `redis.cluster.RedisCluster` (then
        in cluster mode). Its `decode_responses` and `encoding` settings do not matter."""
        self._setup(prefix, _mode_of(client), client)

    def _setup(
        self,
        prefix: str,
        mode: RedisMode,
        client: Any,
        *,
        connect: Callable[[], Any] | None = None,
        sentinels: Sequence[Any] = (),
        owned: bool = False,
    ) -> None:
        # Typed as Any here and below: redis-py's annotations differ between its versions.
        self._redis: Any = client
        #: Makes the client on first use (a cluster's, which connects as it is made).
        self._connect = connect
        self._connect_lock = threading.Lock()
        self._state = _State(prefix, mode)
        #: Whether `close` closes the client and the sentinels' clients (made by `from_url`).
        self._owns_client = owned
        self._sentinels = list(sentinels)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "gw",
        mode: str = "standalone",
        sentinel_master: str | None = None,
        **options: Any,
    ) -> Publisher:
        """A publisher for the gateways' Redis, given as the gateways' settings: `url` is
        their `GATEWAY_REDIS_URL`, `mode` their `GATEWAY_REDIS_MODE`, `sentinel_master` their
        `GATEWAY_REDIS_SENTINEL_MASTER`, `prefix` their `GATEWAY_REDIS_PREFIX`.

        - `standalone`: `url` is one server (`redis://`, `rediss://`, `unix://`); `options`
          go to `redis.Redis.from_url`.
        - `cluster`: `url` is a comma-separated list of some of the cluster's nodes
          (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`); the first URL's credentials, TLS
          and query options apply to every node, and so do `options`
          (`redis.cluster.RedisCluster`). The cluster is connected to on first use.
        - `sentinel`: `url` is a comma-separated list of the sentinels, whose credentials and
          TLS the first URL gives; `sentinel_master` names the master they watch. `options`
          go to the master's connections (`redis.sentinel.Sentinel(...).master_for(...)`).

        By default connecting and each reply may take 5 s, and nothing is retried. Settings
        that do not fit together raise `InvalidConfiguration`."""
        topology = parse_topology(url, mode, sentinel_master)
        options = _client_options(options, Retry(NoBackoff(), 0))
        publisher = cls.__new__(cls)
        if topology.mode == "cluster":
            nodes = [redis.cluster.ClusterNode(host, port) for host, port in _addresses(topology)]
            arguments = {**_shared_options(topology), **options}

            def connect() -> Any:
                return redis.cluster.RedisCluster(startup_nodes=nodes, **arguments)

            publisher._setup(prefix, "cluster", None, connect=connect, owned=True)
        elif topology.mode == "sentinel":
            sentinel: Any = redis.sentinel.Sentinel(
                _addresses(topology),
                sentinel_kwargs=_sentinel_options(topology, options),
                **options,
            )
            master = sentinel.master_for(topology.sentinel_master)
            publisher._setup(prefix, "sentinel", master, sentinels=sentinel.sentinels, owned=True)
        else:
            client: Any = redis.Redis.from_url(topology.urls[0], **options)
            publisher._setup(prefix, "standalone", client, owned=True)
        return publisher

    @property
    def prefix(self) -> str:
        """The key and channel prefix."""
        return self._state.prefix

    @property
    def mode(self) -> RedisMode:
        """Where it publishes: `standalone`, `cluster` or `sentinel`."""
        return self._state.mode

    def publish_channel(
        self,
        channel: str,
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> Receipt:
        """Publishes `event` with `data` to the subscribers of `channel`."""
        publish = Publish.to_channel(
            channel, event, data, exclude_client=exclude_client, idempotency_key=idempotency_key
        )
        return self.publish(publish)[0]

    def publish_channels(
        self,
        channels: Iterable[str],
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[Receipt]:
        """Publishes `event` to each of `channels`; one receipt per channel, in order."""
        publish = Publish.to_channels(
            channels, event, data, exclude_client=exclude_client, idempotency_key=idempotency_key
        )
        return self.publish(publish)

    def publish_user(
        self,
        user: str,
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> Receipt:
        """Publishes `event` to every connection of `user`, on every gateway."""
        publish = Publish.to_user(
            user, event, data, exclude_client=exclude_client, idempotency_key=idempotency_key
        )
        return self.publish(publish)[0]

    def publish_client_type(
        self, client_type: str, event: str, data: Any, *, exclude_client: str | None = None
    ) -> Receipt:
        """Publishes `event` to every connection registered as `client_type`."""
        publish = Publish.to_client_type(client_type, event, data, exclude_client=exclude_client)
        return self.publish(publish)[0]

    def broadcast(self, event: str, data: Any, *, exclude_client: str | None = None) -> Receipt:
        """Publishes `event` to every connection."""
        publish = Publish.broadcast(event, data, exclude_client=exclude_client)
        return self.publish(publish)[0]

    def publish(self, publish: Publish) -> list[Receipt]:
        """Publishes one `Publish`; one receipt per destination."""
        return self._publish([publish])[0]

    def publish_batch(self, items: Iterable[BatchItem]) -> list[list[Receipt]]:
        """Publishes many events in one round trip, in order. Each item is a mapping of the
        admin API's publish fields (`{"channel": "jobs", "event": "e", "data": …}`) or a
        `Publish`. Answers one list per item, with one receipt per destination.

        Every item is validated first: if one is invalid, nothing is published."""
        return self._publish(_validated(items))

    def close(self) -> None:
        """Closes the Redis client (and sentinels) if this publisher made it (`from_url`)."""
        if not self._owns_client:
            return
        if self._redis is not None:
            self._redis.close()
        for sentinel in self._sentinels:
            sentinel.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _client(self) -> Any:
        if self._redis is None and self._connect is not None:
            with self._connect_lock:
                if self._redis is None:
                    try:
                        self._redis = self._connect()
                    except _REDIS_ERRORS as error:
                        raise PublishFailed(f"cannot reach the Redis Cluster: {error}") from error
        return self._redis

    def _node_of(self, client: Any) -> Callable[[str], Any] | None:
        """On a cluster, where a topic's slot is served: the node of `SCRIPT LOAD`."""
        return client.get_node_from_key if self._state.cluster else None

    def _publish(self, publishes: Sequence[Publish]) -> list[list[Receipt]]:
        if not publishes:
            return []
        state = self._state
        client = self._client()
        namespaces = state.cached_namespaces()
        if namespaces is None:
            namespaces = self._read_namespaces(client)
        batch, messages, order = state.plan(publishes, namespaces)
        replies: list[Any] = [None] * len(messages)
        for index, reply in zip(order, self._run(client, messages, order), strict=True):
            replies[index] = reply
        try:
            lost = state.lost_script(messages, replies, self._node_of(client))
        except _REDIS_ERRORS as error:
            raise _failed(error) from error
        if lost:
            for index, reply in zip(lost, self._run(client, messages, lost), strict=True):
                replies[index] = reply
        return state.receipts(batch, replies)

    def _read_namespaces(self, client: Any) -> Namespaces | None:
        try:
            fields: Any = client.hgetall(self._state.namespaces_key)
        except _REDIS_ERRORS as error:
            return self._state.unreadable_namespaces(error)
        return self._state.remember_namespaces(fields)

    def _run(self, client: Any, messages: Sequence[Message], indexes: Sequence[int]) -> list[Any]:
        try:
            loads, commands = self._state.pipeline(messages, indexes, self._node_of(client))
            pipeline: Any = client.pipeline(transaction=False)
            for args, options in commands:
                pipeline.execute_command(*args, **options)
            try:
                replies = pipeline.execute(raise_on_error=False)
            finally:
                pipeline.reset()
        except _REDIS_ERRORS as error:
            raise _failed(error) from error
        return self._state.took(loads, list(replies))


class AsyncPublisher:
    """Publishes events to the gateways' Redis bus from asyncio code. Share one per event
    loop.

    ```python
    async with AsyncPublisher.from_url("redis://localhost:6379") as publisher:
        receipt = await publisher.publish_user("42", "photo_ready", {"photo": "p1"})
    ```
    """

    def __init__(
        self,
        client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster,
        *,
        prefix: str = "gw",
    ) -> None:
        """A publisher over an existing `redis.asyncio` client, which it does not close: a
        `redis.asyncio.Redis`, a Sentinel's `master_for(...)`, or a
        `redis.asyncio.cluster.RedisCluster` (then in cluster mode)."""
        # Typed as Any: redis-py's annotations differ between its versions.
        self._redis: Any = client
        self._state = _State(prefix, _mode_of(client))
        self._owns_client = False
        self._sentinels: list[Any] = []
        #: The read of the settings in flight, which concurrent publishes wait for together.
        self._reading: asyncio.Future[Namespaces | None] | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "gw",
        mode: str = "standalone",
        sentinel_master: str | None = None,
        **options: Any,
    ) -> AsyncPublisher:
        """As `Publisher.from_url`, with `redis.asyncio.Redis.from_url`,
        `redis.asyncio.cluster.RedisCluster` and `redis.asyncio.sentinel.Sentinel`. Nothing
        is connected before the first publish."""
        topology = parse_topology(url, mode, sentinel_master)
        options = _client_options(options, AsyncRetry(NoBackoff(), 0))
        sentinels: list[Any] = []
        client: Any
        if topology.mode == "cluster":
            nodes = [
                redis.asyncio.cluster.ClusterNode(host, port) for host, port in _addresses(topology)
            ]
            arguments = {**_shared_options(topology), **options}
            client = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **arguments)
        elif topology.mode == "sentinel":
            sentinel: Any = redis.asyncio.sentinel.Sentinel(
                _addresses(topology),
                sentinel_kwargs=_sentinel_options(topology, options),
                **options,
            )
            client = sentinel.master_for(topology.sentinel_master)
            sentinels = list(sentinel.sentinels)
        else:
            client = redis.asyncio.Redis.from_url(topology.urls[0], **options)
        publisher = cls(client, prefix=prefix)
        publisher._state.mode = topology.mode
        publisher._owns_client = True
        publisher._sentinels = sentinels
        return publisher

    @property
    def prefix(self) -> str:
        """The key and channel prefix."""
        return self._state.prefix

    @property
    def mode(self) -> RedisMode:
        """Where it publishes: `standalone`, `cluster` or `sentinel`."""
        return self._state.mode

    async def publish_channel(
        self,
        channel: str,
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> Receipt:
        """Publishes `event` with `data` to the subscribers of `channel`."""
        publish = Publish.to_channel(
            channel, event, data, exclude_client=exclude_client, idempotency_key=idempotency_key
        )
        return (await self.publish(publish))[0]

    async def publish_channels(
        self,
        channels: Iterable[str],
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[Receipt]:
        """Publishes `event` to each of `channels`; one receipt per channel, in order."""
        publish = Publish.to_channels(
            channels, event, data, exclude_client=exclude_client, idempotency_key=idempotency_key
        )
        return await self.publish(publish)

    async def publish_user(
        self,
        user: str,
        event: str,
        data: Any,
        *,
        exclude_client: str | None = None,
        idempotency_key: str | None = None,
    ) -> Receipt:
        """Publishes `event` to every connection of `user`, on every gateway."""
        publish = Publish.to_user(
            user, event, data, exclude_client=exclude_client, idempotency_key=idempotency_key
        )
        return (await self.publish(publish))[0]

    async def publish_client_type(
        self, client_type: str, event: str, data: Any, *, exclude_client: str | None = None
    ) -> Receipt:
        """Publishes `event` to every connection registered as `client_type`."""
        publish = Publish.to_client_type(client_type, event, data, exclude_client=exclude_client)
        return (await self.publish(publish))[0]

    async def broadcast(
        self, event: str, data: Any, *, exclude_client: str | None = None
    ) -> Receipt:
        """Publishes `event` to every connection."""
        publish = Publish.broadcast(event, data, exclude_client=exclude_client)
        return (await self.publish(publish))[0]

    async def publish(self, publish: Publish) -> list[Receipt]:
        """Publishes one `Publish`; one receipt per destination."""
        return (await self._publish([publish]))[0]

    async def publish_batch(self, items: Iterable[BatchItem]) -> list[list[Receipt]]:
        """As `Publisher.publish_batch`: one round trip, one list of receipts per item."""
        return await self._publish(_validated(items))

    async def close(self) -> None:
        """Closes the Redis client (and sentinels) if this publisher made it (`from_url`)."""
        if not self._owns_client:
            return
        await self._redis.aclose()
        for sentinel in self._sentinels:
            await sentinel.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _node_of(self) -> Callable[[str], Any] | None:
        """On a cluster, where a topic's slot is served: the node of `SCRIPT LOAD`."""
        return self._redis.get_node_from_key if self._state.cluster else None

    async def _publish(self, publishes: Sequence[Publish]) -> list[list[Receipt]]:
        if not publishes:
            return []
        state = self._state
        namespaces = state.cached_namespaces()
        if namespaces is None:
            namespaces = await self._shared_read()
        batch, messages, order = state.plan(publishes, namespaces)
        replies: list[Any] = [None] * len(messages)
        for index, reply in zip(order, await self._run(messages, order), strict=True):
            replies[index] = reply
        try:
            lost = state.lost_script(messages, replies, self._node_of())
        except _REDIS_ERRORS as error:
            raise _failed(error) from error
        if lost:
            for index, reply in zip(lost, await self._run(messages, lost), strict=True):
                replies[index] = reply
        return state.receipts(batch, replies)

    async def _shared_read(self) -> Namespaces | None:
        """The settings, read once for every publish that needs them meanwhile: concurrent
        publishes do not each ask Redis (a cluster client's nodes allow 100 connections)."""
        reading = self._reading
        if reading is None or reading.done():
            reading = self._reading = asyncio.ensure_future(self._read_namespaces())
        # One waiter's cancellation is not the others'.
        return await asyncio.shield(reading)

    async def _read_namespaces(self) -> Namespaces | None:
        try:
            if self._state.cluster:
                # Ask for the slots' nodes before anything is sent: redis-py's asyncio cluster
                # client fails commands made concurrently with its first initialisation.
                await self._redis.initialize()
            reply: Any = self._redis.hgetall(self._state.namespaces_key)
            fields = await reply
        except _REDIS_ERRORS as error:
            return self._state.unreadable_namespaces(error)
        return self._state.remember_namespaces(fields)

    async def _run(self, messages: Sequence[Message], indexes: Sequence[int]) -> list[Any]:
        try:
            if self._state.cluster:
                # The slots' nodes are known once the cluster was asked (a no-op after that).
                await self._redis.initialize()
            loads, commands = self._state.pipeline(messages, indexes, self._node_of())
            pipeline: Any = self._redis.pipeline(transaction=False)
            for args, options in commands:
                pipeline.execute_command(*args, **options)
            try:
                replies = await pipeline.execute(raise_on_error=False)
            finally:
                await pipeline.reset()
        except _REDIS_ERRORS as error:
            raise _failed(error) from error
        return self._state.took(loads, list(replies))
