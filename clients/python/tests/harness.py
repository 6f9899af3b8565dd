"""Real processes for the tests: a Redis server, a Redis Cluster, a Redis Sentinel, gateway
replicas, WebSocket subscribers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jwt
import redis
import redis.cluster
from websockets.sync.client import ClientConnection, connect

#: The repository root (clients/python/tests/ → three levels up).
REPO = Path(__file__).resolve().parents[3]
JWT_SECRET = "python-publisher-tests-secret-0123456789"
API_KEY = "python-publisher-tests-api-key"

#: The gateways' namespaces: history on `default` and `personal`, none on `room`.
GATEWAY_CONFIG = """\
[namespaces.default]
history_size = 1000
history_ttl = "10m"

[namespaces.personal]
history_size = 1000
history_ttl = "10m"

[namespaces.room]
subscribe = "public"
"""


#: Where a Redis may already run on the test machine: never used here.
_TAKEN = frozenset({6379, 16379, 26379})


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _TAKEN:
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and port + 10000 not in _TAKEN and _is_free(port + 10000):
            return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _answers(process: subprocess.Popen[bytes], port: int) -> bool:
    """Whether the Redis `process` started answers on `port` (False if it exited)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # most likely the port was taken meanwhile
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                if client.ping():
                    return True
        except redis.RedisError:
            time.sleep(0.05)
    return False


def _start_redis(
    workdir: Path,
    log: Path,
    pick_port: Callable[[], int] = free_port,
    args_for: Callable[[int], list[str]] = lambda port: [],
) -> tuple[int, subprocess.Popen[bytes]]:
    """`redis-server <args_for(port)> --port <port>` on a free loopback port (`pick_port()`),
    without persistence: the port and the process, once it answers."""
    for _ in range(5):
        port = pick_port()
        with log.open("ab") as output:
            process = subprocess.Popen(
                [
                    "redis-server",
                    *args_for(port),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        if _answers(process, port):
            return port, process
        _stop(process)
    raise RuntimeError(f"redis-server did not start:\n{_tail(log)}")


class RedisServer:
    """`redis-server` on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        self.port, self.process = _start_redis(workdir, self.log)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10)

    def stop(self) -> None:
        _stop(self.process)


class RedisClusterNodes:
    """A Redis Cluster of `masters` masters and no replicas, each a `redis-server
    --cluster-enabled yes` on free loopback ports, joined with `redis-cli --cluster create`,
    without persistence."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "cluster.log"
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            for index in range(masters):
                port, process = _start_redis(
                    workdir,
                    workdir / f"redis-{index}.log",
                    free_cluster_port,
                    lambda port: [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(workdir / f"nodes-{port}.conf"),
                    ],
                )
                self.ports.append(port)
                self.processes.append(process)
            self._create()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        self.log.write_bytes(created.stdout + created.stderr)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{_tail(self.log)}")
        deadline = time.monotonic() + 60
        for port in self.ports:
            with self.node(port) as node:
                # redis-py reads CLUSTER INFO into a dict of its lines' fields.
                while node.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the cluster is not ok on port {port}")
                    time.sleep(0.05)

    @property
    def url(self) -> str:
        """The seed nodes, as the gateways' `GATEWAY_REDIS_URL` lists them."""
        return ",".join(f"redis://127.0.0.1:{port}" for port in self.ports)

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode("127.0.0.1", p) for p in self.ports],
            socket_timeout=10,
        )

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node."""
        return redis.Redis(port=port, socket_timeout=10)

    def port_of(self, key: str) -> int:
        """The port of the master that serves `key`'s slot: the one node that does not answer
        a command on it with MOVED."""
        for port in self.ports:
            with self.node(port) as node:
                try:
                    node.exists(key)
                except redis.exceptions.MovedError:
                    continue
                return port
        raise AssertionError(f"no master serves {key}")

    def stop(self) -> None:
        for process in self.processes:
            _stop(process)


class RedisSentinel:
    """`redis-server <sentinel.conf> --sentinel` on a free loopback port, watching the master
    on `master_port` as `name` (quorum 1)."""

    def __init__(self, workdir: Path, master_port: int, name: str = "mymaster") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "sentinel.log"
        self.name = name
        for _ in range(5):
            self.port = free_port()
            # A sentinel rewrites its configuration file: one of its own, in its directory.
            config = workdir / "sentinel.conf"
            config.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {workdir}\n"
                f"sentinel monitor {name} 127.0.0.1 {master_port} 1\n"
            )
            with self.log.open("ab") as output:
                self.process = subprocess.Popen(
                    ["redis-server", str(config), "--sentinel"],
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            if _answers(self.process, self.port) and self._names(master_port):
                return
            _stop(self.process)
        raise RuntimeError(f"redis-server --sentinel did not start:\n{_tail(self.log)}")

    def _names(self, master_port: int) -> bool:
        """Waits until the sentinel names the master."""
        deadline = time.monotonic() + 15
        with redis.Redis(port=self.port, socket_timeout=2) as sentinel:
            while time.monotonic() < deadline:
                address = sentinel.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.name)
                if address and int(address[1]) == master_port:
                    return True
                time.sleep(0.05)
        return False

    @property
    def url(self) -> str:
        """The sentinel, as the gateways' `GATEWAY_REDIS_URL` lists sentinels."""
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        _stop(self.process)


def gateway_binary() -> Path:
    """`$GATEWAY_BIN`, or the workspace's debug build."""
    binary = Path(os.environ.get("GATEWAY_BIN") or REPO / "target" / "debug" / "gateway")
    if not binary.is_file():
        raise RuntimeError(
            f"no gateway binary at {binary}: run `cargo build -p gateway` or set GATEWAY_BIN"
        )
    return binary


def publish_cli() -> Path | None:
    """The Rust publisher's CLI: `$GATEWAY_PUBLISH_BIN`, or beside the gateway binary."""
    configured = os.environ.get("GATEWAY_PUBLISH_BIN")
    if configured:
        return Path(configured)
    beside = Path(os.environ.get("GATEWAY_BIN") or REPO / "target" / "debug" / "gateway")
    cli = beside.with_name("gateway-publish")
    return cli if cli.is_file() else None


class Gateway:
    """One gateway replica on free loopback ports, with the test namespaces."""

    def __init__(self, workdir: Path, redis_url: str, node_id: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "gateway.toml"
        config.write_text(GATEWAY_CONFIG)
        self.log = workdir / "gateway.log"
        self.node_id = node_id
        self.port, self.admin_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            GATEWAY_LISTEN=f"127.0.0.1:{self.port}",
            GATEWAY_ADMIN_LISTEN=f"127.0.0.1:{self.admin_port}",
            GATEWAY_REDIS_URL=redis_url,
            GATEWAY_JWT_SECRET=JWT_SECRET,
            GATEWAY_API_KEY=API_KEY,
            GATEWAY_NODE_ID=node_id,
            GATEWAY_CONFIG=str(config),
            GATEWAY_DRAIN_TIMEOUT="1s",
            GATEWAY_LOG=os.environ.get("E2E_GATEWAY_LOG", "info"),
        )
        self.process = subprocess.Popen(
            [str(gateway_binary())], env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gateway {self.node_id} exited with {self.process.returncode}:\n"
                    + _tail(self.log)
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway {self.node_id} not ready in {timeout} s:\n{_tail(self.log)}")

    def stop(self) -> None:
        _stop(self.process)


def token(user: str) -> str:
    """An HS256 token for `user`, valid for an hour."""
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256")


class Subscriber:
    """A WebSocket client of one gateway, connected as `user`."""

    def __init__(self, gateway: Gateway, user: str) -> None:
        self.user = user
        self._closing = ExitStack()
        self.ws: ClientConnection = self._closing.enter_context(
            connect(
                f"ws://127.0.0.1:{gateway.port}/ws?token={token(user)}",
                open_timeout=20,
                proxy=None,
            )
        )
        hello = self.frame()
        assert hello["type"] == "connection_established", hello
        self.client_id: str = hello["client_id"]
        self._ids = 0

    def frame(self, timeout: float = 10) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        return frame

    def _request(self, frame: dict[str, Any], reply_type: str) -> dict[str, Any]:
        self._ids += 1
        self.ws.send(json.dumps({**frame, "id": self._ids}))
        reply = self.frame()
        assert reply.get("id") == self._ids and reply["type"] == reply_type, reply
        return reply

    def subscribe(self, *channels: str) -> dict[str, Any]:
        reply = self._request({"type": "subscribe", "channels": list(channels)}, "subscribed")
        assert reply["channels"] == list(channels) and reply["rejected"] == [], reply
        return reply

    def register(self, client_type: str) -> None:
        self._request({"type": "register", "client_type": client_type}, "registered")

    def event(self, timeout: float = 10) -> dict[str, Any]:
        """The next frame, which must be an event."""
        frame = self.frame(timeout)
        assert frame["type"] not in ("error", "reload", "disconnect"), frame
        return frame

    def events(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        return [self.event(timeout) for _ in range(count)]

    def nothing_within(self, seconds: float) -> None:
        """Asserts that no frame arrives for `seconds`."""
        try:
            frame = self.frame(timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame: {frame}")

    def close(self) -> None:
        self._closing.close()


class Listener:
    """A pub/sub client of one Redis node: `SSUBSCRIBE` (sharded) or `SUBSCRIBE`s to topics,
    confirmed before the constructor returns."""

    def __init__(self, port: int, *topics: str, sharded: bool) -> None:
        self._client = redis.Redis(port=port, socket_timeout=10)
        self._pubsub = self._client.pubsub()
        if sharded:
            self._pubsub.ssubscribe(*topics)
        else:
            self._pubsub.subscribe(*topics)
        confirmed = 0
        deadline = time.monotonic() + 10
        while confirmed < len(topics):
            assert time.monotonic() < deadline, "the subscription was not confirmed"
            message = self._pubsub.get_message(timeout=1)
            if message is not None and message["type"] in ("subscribe", "ssubscribe"):
                confirmed += 1

    def messages(self, count: int, timeout: float = 10) -> list[tuple[str, bytes]]:
        """The next `count` messages: their topic and data."""
        received: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(received) < count:
            assert time.monotonic() < deadline, f"only {len(received)} of {count} messages came"
            message = self._pubsub.get_message(timeout=1)
            if message is not None and message["type"] in ("message", "smessage"):
                received.append((message["channel"].decode(), message["data"]))
        return received

    def nothing_within(self, seconds: float) -> None:
        """Asserts that no message arrives for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=0.1)
            assert message is None or message["type"] not in ("message", "smessage"), message

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()
