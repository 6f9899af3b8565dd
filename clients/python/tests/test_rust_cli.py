"""The vectors are what the Rust publisher really writes: its CLI (`gateway-publish`),
run against a Redis watched with MONITOR (on a cluster, every node), for every vector the CLI
can express."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest
from test_cluster import publishing, topic_of
from test_redis_commands import LOAD, with_fixed_timestamp

from harness import RedisClusterNodes, RedisServer, publish_cli
from monitor import Monitor
from test_vectors import CASES, VECTORS

CLI = publish_cli()
# scripts/ci.sh builds the CLI: its absence is a broken setup, not a reason to skip.
assert CLI is not None, "no gateway-publish binary: run `cargo build -p publisher`"


def cli_arguments(
    publish: dict[str, Any], prefix: str, url: str, mode: str = "standalone"
) -> list[str]:
    data = json.dumps(publish.get("data"), ensure_ascii=False)
    args = [str(CLI), "--redis-url", url, "--redis-mode", mode, "--prefix", prefix]
    args += ["--event", publish["event"]]
    args += ["--data", data]
    channels = [publish["channel"]] if "channel" in publish else publish.get("channels", [])
    for channel in channels:
        args += ["--channel", channel]
    for field in ("user", "client_type", "exclude_client", "idempotency_key"):
        if field in publish:
            args += ["--" + field.replace("_", "-"), publish[field]]
    if publish.get("broadcast"):
        args.append("--broadcast")
    return args


EXPRESSIBLE = [case for case in CASES if "commands" in case and "publish" in case]
ON_A_CLUSTER = [case for case in CASES if "pipelines" in case and "publish" in case]


@pytest.mark.parametrize("case", EXPRESSIBLE, ids=[case["name"] for case in EXPRESSIBLE])
def test_the_rust_cli_writes_the_vectors_commands(
    case: dict[str, Any], bare_redis: RedisServer
) -> None:
    prefix = case.get("prefix", VECTORS["prefix"])
    client = bare_redis.client()
    client.flushall()
    client.script_flush()
    client.hset(f"{prefix}:namespaces", mapping=VECTORS["namespaces"])
    monitor = Monitor(bare_redis.port)
    try:
        subprocess.run(
            cli_arguments(case["publish"], prefix, bare_redis.url),
            check=True,
            capture_output=True,
            timeout=60,
            env={"RUST_BACKTRACE": "0", "PATH": "/usr/bin:/bin"},
        )
        expected = case["commands"]
        monitor.wait_for(2 + len(expected))
        sent = monitor.sent()
    finally:
        monitor.close()
        client.close()
    assert sent[:2] == [("HGETALL", f"{prefix}:namespaces"), LOAD]
    assert with_fixed_timestamp(sent[2:]) == expected


@pytest.mark.parametrize("case", ON_A_CLUSTER, ids=[case["name"] for case in ON_A_CLUSTER])
def test_the_rust_cli_writes_the_vectors_pipelines_on_a_cluster(
    case: dict[str, Any], redis_cluster: RedisClusterNodes
) -> None:
    prefix = case.get("prefix", VECTORS["prefix"])
    for port in redis_cluster.ports:
        with redis_cluster.node(port) as node:
            node.flushall()
            node.script_flush()
    with redis_cluster.client() as client:
        client.hset(f"{{{prefix}}}:namespaces", mapping=VECTORS["namespaces"])
    [pipeline] = case["pipelines"]  # one publish: one message, one slot
    [command] = pipeline
    monitors = {port: Monitor(port) for port in redis_cluster.ports}
    try:
        subprocess.run(
            cli_arguments(case["publish"], prefix, redis_cluster.url, "cluster"),
            check=True,
            capture_output=True,
            timeout=60,
            env={"RUST_BACKTRACE": "0", "PATH": "/usr/bin:/bin"},
        )
        deadline = time.monotonic() + 10
        while True:
            sent = {port: published(monitor) for port, monitor in monitors.items()}
            if any(sent.values()):
                break
            assert time.monotonic() < deadline, "MONITOR saw no publish"
            time.sleep(0.02)
    finally:
        for monitor in monitors.values():
            monitor.close()
    # A sharded command goes to the master of its slot; a plain PUBLISH to any one node.
    [(port, commands)] = [(port, commands) for port, commands in sent.items() if commands]
    assert with_fixed_timestamp(commands) == pipeline
    if command[0] != "PUBLISH":
        assert port == redis_cluster.port_of(topic_of(command))


def published(monitor: Monitor) -> list[tuple[str, ...]]:
    """The publishing commands a node was sent (not the script load or the settings' read)."""
    return [c for c in publishing(monitor) if c[0] in ("EVALSHA", "SPUBLISH", "PUBLISH")]
