"""The shared test vectors (`publisher/vectors/publish.json`): every case through the pure
command builder gives exactly the vector's commands, or its error."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from gateway_publisher import InvalidPublish, Publish
from gateway_publisher.wire import SCRIPT, SCRIPT_SHA1, build, history_namespaces

from harness import REPO

VECTORS_PATH = REPO / "publisher" / "vectors" / "publish.json"
REPO_SCRIPT = REPO / "publisher" / "src" / "publish.lua"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = VECTORS["cases"]


def commands_of(case: dict[str, Any]) -> list[list[str]]:
    items = case["batch"] if "batch" in case else [case["publish"]]
    publishes = [Publish.from_fields(item) for item in items]
    batch = build(
        publishes,
        prefix=case.get("prefix", VECTORS["prefix"]),
        timestamp=VECTORS["timestamp"],
        history=history_namespaces(VECTORS["namespaces"]),
    )
    return [list(message.command) for messages in batch for message in messages]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(InvalidPublish) as refused:
            commands_of(case)
        assert refused.value.code == case["error"]
    else:
        assert commands_of(case) == case["commands"]


def test_every_case_has_one_outcome_and_a_unique_name() -> None:
    names = [case["name"] for case in CASES]
    assert len(set(names)) == len(names)
    for case in CASES:
        assert ("commands" in case) != ("error" in case), case["name"]
        assert ("publish" in case) != ("batch" in case), case["name"]


def test_vectors_cover_every_kind_of_publish_and_error() -> None:
    published = [item for case in CASES for item in case.get("batch", [case.get("publish")])]
    for field in ("channel", "channels", "user", "client_type", "broadcast"):
        assert any(field in item for item in published), field
    for option in ("exclude_client", "idempotency_key"):
        assert any(option in item for item in published), option
    commands = [command[0] for case in CASES for command in case.get("commands", [])]
    assert {"EVALSHA", "PUBLISH"} == set(commands)
    errors = {case["error"] for case in CASES if "error" in case}
    assert errors == {
        "invalid_channel",
        "invalid_event",
        "reserved_event",
        "invalid_user",
        "invalid_client_type",
        "invalid_target",
    }
    assert any("prefix" in case for case in CASES)


def test_the_script_is_the_one_the_vectors_name() -> None:
    assert hashlib.sha1(SCRIPT).hexdigest() == SCRIPT_SHA1 == VECTORS["script_sha1"]


def test_the_shipped_script_is_the_rust_publishers_byte_for_byte() -> None:
    assert REPO_SCRIPT.read_bytes() == SCRIPT


def test_namespaces_of_the_vectors() -> None:
    assert history_namespaces(VECTORS["namespaces"]) == {"default", "personal"}
    assert history_namespaces({b"jobs": b"10 0", b"room": b"0 0"}) == {"jobs"}
