"""Real processes for the tests: a Redis server, gateway replicas, WebSocket subscribers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jwt
import redis
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
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


class RedisServer:
    """`redis-server` on a free loopback port, without persistence."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"
        for _ in range(5):
            self.port = free_port()
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdout=self.log.open("ab"),
                stderr=subprocess.STDOUT,
            )
            if self._ready():
                return
            _stop(self.process)
        raise RuntimeError(f"redis-server did not start:\n{_tail(self.log)}")

    def _ready(self) -> bool:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # most likely the port was taken meanwhile
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return True
            except redis.RedisError:
                time.sleep(0.05)
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10)

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
