"""`Publisher` (blocking, redis-py) and `AsyncPublisher` (asyncio, `redis.asyncio`).

Both do what the Rust `publisher::Publisher` does, with the same method names:

1. validate every publish of the call (nothing is sent if one is invalid);
2. read which namespaces keep history from `<prefix>:namespaces`, at most every 5 s;
3. send every message of the call in one pipelined round trip (not a transaction), with
   `SCRIPT LOAD` in front while the script is not known to be loaded;
4. if Redis lost its scripts (`NOSCRIPT`: a restart, `SCRIPT FLUSH`), load the script and send
   again exactly the script calls that failed: the plain `PUBLISH`es already went out.

Neither client retries a failed round trip: a retried pipeline could publish twice. Give
channel and user events an idempotency key if you retry them yourself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from .errors import PublishFailed
from .wire import (
    SCRIPT,
    Message,
    Publish,
    Receipt,
    build,
    history_namespaces,
    receipt,
    timestamp_now,
)

__all__ = ["AsyncPublisher", "BatchItem", "Publisher"]

#: How long the namespaces that keep history are cached, as in the Rust publisher.
POLICY_REFRESH_S = 5.0

#: What `publish_batch` takes: the admin API's publish fields, or a `Publish`.
BatchItem = Mapping[str, Any] | Publish

_LOAD = ("SCRIPT", "LOAD", SCRIPT)


def _client_options(options: dict[str, Any], retry: object) -> dict[str, Any]:
    # The Rust publisher waits up to 5 s for a connection and for each reply, and never
    # retries a pipeline; redis-py 6+ would retry three times by default.
    options.setdefault("retry", retry)
    options.setdefault("socket_timeout", 5.0)
    options.setdefault("socket_connect_timeout", 5.0)
    return options


class _State:
    """What both clients remember between calls: the prefix, whether the script is loaded,
    and the cached namespaces that keep history."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.script_loaded = False
        #: Why Redis refused the last `SCRIPT LOAD`, if it did.
        self.load_error: Exception | None = None
        self._lock = threading.Lock()
        self._history: frozenset[str] = frozenset()
        self._read_at: float | None = None

    @property
    def namespaces_key(self) -> str:
        return f"{self.prefix}:namespaces"

    def cached_history(self) -> frozenset[str] | None:
        """The namespaces that keep history if they were read less than 5 s ago."""
        with self._lock:
            if self._read_at is not None and time.monotonic() - self._read_at < POLICY_REFRESH_S:
                return self._history
        return None

    def remember_history(self, policies: Mapping[Any, Any]) -> frozenset[str]:
        names = history_namespaces(policies)
        with self._lock:
            self._history, self._read_at = names, time.monotonic()
        return names

    def plan(
        self, publishes: Sequence[Publish], history: frozenset[str] | None
    ) -> list[list[Message]]:
        # One batch is published at one moment: one timestamp for all its events.
        return build(publishes, prefix=self.prefix, timestamp=timestamp_now(), history=history)

    def pipeline(
        self, messages: Sequence[Message], indexes: Iterable[int]
    ) -> tuple[bool, list[tuple[Any, ...]]]:
        """The commands of one round trip: the messages at `indexes`, after `SCRIPT LOAD`
        while the script is not known to be loaded."""
        load = not self.script_loaded
        commands: list[tuple[Any, ...]] = [_LOAD] if load else []
        for index in indexes:
            name, *args = messages[index].command
            commands.append((name, *(arg.encode("utf-8") for arg in args)))
        return load, commands

    def took(self, load: bool, replies: list[Any]) -> list[Any]:
        """The replies of the messages, once the `SCRIPT LOAD` one is set apart."""
        if not load:
            return replies
        if isinstance(replies[0], Exception):
            self.load_error = replies[0]
        else:
            self.script_loaded, self.load_error = True, None
        return replies[1:]

    def lost_script(self, replies: Sequence[Any]) -> list[int]:
        """The messages whose script call found no script; they must be sent again."""
        lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if lost:
            self.script_loaded = False
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


class Publisher:
    """Publishes events to the gateways' Redis bus; blocking, thread-safe. Share one per
    process.

    ```python
    with Publisher.from_url("redis://localhost:6379", prefix="gw") as publisher:
        receipt = publisher.publish_channel("jobs", "job_progress", {"job_id": "abc"})
    ```
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "gw") -> None:
        """A publisher over an existing redis-py client, which it does not close. Its
        `decode_responses` and `encoding` settings do not matter."""
        self._redis = client
        self._state = _State(prefix)
        self._owns_client = False

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "gw", **options: Any) -> Publisher:
        """A publisher for the Redis at `url` (`redis://`, `rediss://`, `unix://`) under the
        gateways' `GATEWAY_REDIS_PREFIX`. `options` go to `redis.Redis.from_url`; by default
        connecting and each reply may take 5 s, and nothing is retried."""
        # Typed as Any here and below: redis-py's annotations differ between its versions.
        client: Any = redis.Redis.from_url(url, **_client_options(options, Retry(NoBackoff(), 0)))
        publisher = cls(client, prefix=prefix)
        publisher._owns_client = True
        return publisher

    @property
    def prefix(self) -> str:
        """The key and channel prefix."""
        return self._state.prefix

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
        """Closes the Redis client if this publisher made it (`from_url`)."""
        if self._owns_client:
            self._redis.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _publish(self, publishes: Sequence[Publish]) -> list[list[Receipt]]:
        if not publishes:
            return []
        state = self._state
        history = state.cached_history()
        if history is None:
            history = self._read_history()
        batch = state.plan(publishes, history)
        messages = [message for messages in batch for message in messages]
        replies = self._run(messages, range(len(messages)))
        lost = state.lost_script(replies)
        if lost:
            for index, reply in zip(lost, self._run(messages, lost), strict=True):
                replies[index] = reply
        return state.receipts(batch, replies)

    def _read_history(self) -> frozenset[str] | None:
        # If Redis will not say, every channel event goes through the script: always correct.
        try:
            policies: Any = self._redis.hgetall(self._state.namespaces_key)
        except RedisError:
            return None
        return self._state.remember_history(policies)

    def _run(self, messages: Sequence[Message], indexes: Iterable[int]) -> list[Any]:
        load, commands = self._state.pipeline(messages, indexes)
        pipeline: Any = self._redis.pipeline(transaction=False)
        for command in commands:
            pipeline.execute_command(*command)
        try:
            replies = pipeline.execute(raise_on_error=False)
        except RedisError as error:
            raise PublishFailed(f"publishing through Redis failed: {error}") from error
        finally:
            pipeline.reset()
        return self._state.took(load, list(replies))


class AsyncPublisher:
    """Publishes events to the gateways' Redis bus from asyncio code. Share one per event
    loop.

    ```python
    async with AsyncPublisher.from_url("redis://localhost:6379") as publisher:
        receipt = await publisher.publish_user("42", "photo_ready", {"photo": "p1"})
    ```
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "gw") -> None:
        """A publisher over an existing `redis.asyncio` client, which it does not close."""
        self._redis = client
        self._state = _State(prefix)
        self._owns_client = False

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "gw", **options: Any) -> AsyncPublisher:
        """As `Publisher.from_url`, with `redis.asyncio.Redis.from_url`."""
        options = _client_options(options, AsyncRetry(NoBackoff(), 0))
        publisher = cls(redis.asyncio.Redis.from_url(url, **options), prefix=prefix)
        publisher._owns_client = True
        return publisher

    @property
    def prefix(self) -> str:
        """The key and channel prefix."""
        return self._state.prefix

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
        """Closes the Redis client if this publisher made it (`from_url`)."""
        if self._owns_client:
            await self._redis.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _publish(self, publishes: Sequence[Publish]) -> list[list[Receipt]]:
        if not publishes:
            return []
        state = self._state
        history = state.cached_history()
        if history is None:
            history = await self._read_history()
        batch = state.plan(publishes, history)
        messages = [message for messages in batch for message in messages]
        replies = await self._run(messages, range(len(messages)))
        lost = state.lost_script(replies)
        if lost:
            for index, reply in zip(lost, await self._run(messages, lost), strict=True):
                replies[index] = reply
        return state.receipts(batch, replies)

    async def _read_history(self) -> frozenset[str] | None:
        try:
            reply: Any = self._redis.hgetall(self._state.namespaces_key)
            policies = await reply
        except RedisError:
            return None
        return self._state.remember_history(policies)

    async def _run(self, messages: Sequence[Message], indexes: Iterable[int]) -> list[Any]:
        load, commands = self._state.pipeline(messages, indexes)
        pipeline: Any = self._redis.pipeline(transaction=False)
        for command in commands:
            pipeline.execute_command(*command)
        try:
            replies = await pipeline.execute(raise_on_error=False)
        except RedisError as error:
            raise PublishFailed(f"publishing through Redis failed: {error}") from error
        finally:
            await pipeline.reset()
        return self._state.took(load, list(replies))
