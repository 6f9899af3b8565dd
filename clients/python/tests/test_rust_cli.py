"""The vectors are what the Rust publisher really writes: its CLI (`gateway-publish`),
run against a Redis watched with MONITOR, for every vector the CLI can express."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from test_redis_commands import LOAD, with_fixed_timestamp

from harness import RedisServer, publish_cli
from monitor import Monitor
from test_vectors import CASES, VECTORS

CLI = publish_cli()
# scripts/ci.sh builds the CLI: its absence is a broken setup, not a reason to skip.
assert CLI is not None, "no gateway-publish binary: run `cargo build -p publisher`"


def cli_arguments(publish: dict[str, Any], prefix: str, url: str) -> list[str]:
    data = json.dumps(publish.get("data"), ensure_ascii=False)
    args = [str(CLI), "--redis-url", url, "--prefix", prefix, "--event", publish["event"]]
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
