"""Fixtures: one Redis with two gateway replicas, one bare Redis, a Redis Cluster, a Redis
watched by a Sentinel, and publishers of both kinds.

Every process started here is stopped at the end of the session (and at exit, should pytest
be interrupted).
"""

from __future__ import annotations

import asyncio
import atexit
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from gateway_publisher import AsyncPublisher, Publisher

from harness import Gateway, RedisClusterNodes, RedisSentinel, RedisServer, Subscriber

T = TypeVar("T")

_started: list[RedisServer | RedisClusterNodes | RedisSentinel | Gateway] = []


@atexit.register
def _stop_everything() -> None:
    for process in reversed(_started):
        process.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The Redis the gateways use."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    _started.append(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bare_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis no gateway talks to: what MONITOR shows there was sent by the test alone."""
    server = RedisServer(tmp_path_factory.mktemp("bare-redis"))
    _started.append(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A Redis Cluster of three masters, no gateway on it."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    _started.append(cluster)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def sentinel(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisSentinel, RedisServer]]:
    """A sentinel and the master it watches (`mymaster`), no gateway on it."""
    master = RedisServer(tmp_path_factory.mktemp("sentinel-master"))
    _started.append(master)
    try:
        watching = RedisSentinel(tmp_path_factory.mktemp("sentinel"), master.port, "mymaster")
        _started.append(watching)
        try:
            yield watching, master
        finally:
            watching.stop()
    finally:
        master.stop()


@pytest.fixture(scope="session")
def gateways(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateway replicas on `redis_server`, ready, with their namespaces announced."""
    started = []
    try:
        for node in ("py-a", "py-b"):
            gateway = Gateway(tmp_path_factory.mktemp(node), redis_server.url, node)
            _started.append(gateway)
            started.append(gateway)
        for gateway in started:
            gateway.wait_ready()
        # Publishers decide between PUBLISH and the script from this hash (namespaces that keep
        # history): wait for it.
        client = redis_server.client()
        deadline = time.monotonic() + 30
        while {b"default", b"personal"} - set(client.hgetall("gw:namespaces")):
            assert time.monotonic() < deadline, "the gateways did not announce their namespaces"
            time.sleep(0.05)
        yield started[0], started[1]
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture
def unique() -> str:
    """A fresh suffix for names, so that tests sharing the servers never see each other."""
    return secrets.token_hex(4)


@pytest.fixture
def connect() -> Iterator[Callable[[Gateway, str], Subscriber]]:
    """Opens subscribers; every one is closed after the test."""
    opened: list[Subscriber] = []

    def open_one(gateway: Gateway, user: str) -> Subscriber:
        subscriber = Subscriber(gateway, user)
        opened.append(subscriber)
        return subscriber

    yield open_one
    for subscriber in opened:
        subscriber.close()


class EventLoopThread:
    """An event loop on a thread of its own, for driving async code from a sync test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class BlockingAsyncPublisher:
    """An `AsyncPublisher`, running on its own event loop, whose coroutine methods are called
    from synchronous test code: so one test body proves both clients."""

    def __init__(self, url: str, prefix: str, **options: Any) -> None:
        self._loop = EventLoopThread()

        async def make() -> AsyncPublisher:
            return AsyncPublisher.from_url(url, prefix=prefix, **options)

        self.inner = self._loop.run(make())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(method(*args, **kwargs))

        return call

    def close(self) -> None:
        self._loop.run(self.inner.close())
        self._loop.stop()


AnyPublisher = Publisher | BlockingAsyncPublisher


def make_publisher(kind: str, url: str, prefix: str = "gw", **options: Any) -> AnyPublisher:
    """A `Publisher` (`kind` "sync") or a `BlockingAsyncPublisher` ("async"); `options` go to
    `from_url` (`mode`, `sentinel_master`, …)."""
    if kind == "sync":
        return Publisher.from_url(url, prefix=prefix, **options)
    return BlockingAsyncPublisher(url, prefix, **options)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which client a test runs with: `Publisher` or `AsyncPublisher`."""
    value: str = request.param
    return value


@pytest.fixture
def publisher(
    kind: str, redis_server: RedisServer, gateways: tuple[Gateway, Gateway]
) -> Iterator[AnyPublisher]:
    """A publisher of each kind on the gateways' Redis."""
    publisher = make_publisher(kind, redis_server.url)
    yield publisher
    publisher.close()
