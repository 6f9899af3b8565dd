"""The shared test vectors (`publisher/vectors/publish.json`): every case through the pure
command builder, in its mode, gives exactly the vector's commands (on a cluster: its pipelines,
through the same slot grouping the publishers use), or its error."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from redis.crc import key_slot

from gateway_publisher import InvalidPublish, Publish
from gateway_publisher.wire import (
    SCRIPT,
    SCRIPT_SHA1,
    Message,
    Namespaces,
    build,
    history_namespaces,
    pipelines,
    read_namespaces,
)

from harness import REPO

VECTORS_PATH = REPO / "publisher" / "vectors" / "publish.json"
REPO_SCRIPT = REPO / "publisher" / "src" / "publish.lua"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = VECTORS["cases"]


def messages_of(case: dict[str, Any]) -> list[Message]:
    """The case's messages, in its mode, in the order of its publishes."""
    items = case["batch"] if "batch" in case else [case["publish"]]
    publishes = [Publish.from_fields(item) for item in items]
    batch = build(
        publishes,
        prefix=case.get("prefix", VECTORS["prefix"]),
        timestamp=VECTORS["timestamp"],
        mode=case.get("mode", "standalone"),
        namespaces=read_namespaces(VECTORS["namespaces"]),
    )
    return [message for messages in batch for message in messages]


def commands_of(case: dict[str, Any]) -> list[list[str]]:
    return [list(message.command) for message in messages_of(case)]


def pipelines_of(case: dict[str, Any]) -> list[list[list[str]]]:
    """The case's pipelines, as a cluster publisher sends them: one per hash slot."""
    messages = messages_of(case)
    groups = pipelines(messages, case.get("mode", "standalone"))
    return [[list(messages[index].command) for index in group] for group in groups]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(InvalidPublish) as refused:
            commands_of(case)
        assert refused.value.code == case["error"]
    elif "pipelines" in case:
        assert pipelines_of(case) == case["pipelines"]
    else:
        assert commands_of(case) == case["commands"]
        # Outside a cluster every message of a call goes in one pipeline, in order.
        assert pipelines_of(case) == [case["commands"]]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector_with_only_the_history_set(case: dict[str, Any]) -> None:
    """Outside a cluster, the set of namespaces that keep history says as much as the
    namespaces: `build(history=...)` as the publisher used to call it."""
    if "commands" not in case:
        return
    items = case["batch"] if "batch" in case else [case["publish"]]
    batch = build(
        [Publish.from_fields(item) for item in items],
        prefix=case.get("prefix", VECTORS["prefix"]),
        timestamp=VECTORS["timestamp"],
        history=history_namespaces(VECTORS["namespaces"]),
    )
    assert [list(m.command) for messages in batch for m in messages] == case["commands"]


def test_every_case_has_one_outcome_and_a_unique_name() -> None:
    names = [case["name"] for case in CASES]
    assert len(set(names)) == len(names)
    for case in CASES:
        outcomes = [field for field in ("commands", "pipelines", "error") if field in case]
        assert len(outcomes) == 1, case["name"]
        assert ("publish" in case) != ("batch" in case), case["name"]
        assert case.get("mode", "standalone") in ("standalone", "cluster"), case["name"]
        # Pipelines are a cluster's, commands one server's.
        assert ("pipelines" in case) == (case.get("mode") == "cluster"), case["name"]


def test_cluster_pipelines_keep_one_slot_each_and_the_batchs_order() -> None:
    cluster = [case for case in CASES if case.get("mode") == "cluster"]
    assert any(len(case["pipelines"]) > 1 for case in cluster)
    for case in cluster:
        messages = messages_of(case)
        groups = pipelines(messages, "cluster")
        assert sorted(i for group in groups for i in group) == list(range(len(messages)))
        assert [group[0] for group in groups] == sorted(group[0] for group in groups)
        for group in groups:
            assert group == sorted(group)
            assert len({key_slot(messages[i].topic.encode()) for i in group}) == 1


def test_vectors_cover_every_kind_of_publish_and_error() -> None:
    published = [item for case in CASES for item in case.get("batch", [case.get("publish")])]
    for field in ("channel", "channels", "user", "client_type", "broadcast"):
        assert any(field in item for item in published), field
    for option in ("exclude_client", "idempotency_key"):
        assert any(option in item for item in published), option
    commands = [command[0] for case in CASES for command in case.get("commands", [])]
    assert {"EVALSHA", "PUBLISH"} == set(commands)
    sharded = [
        command for case in CASES for pipeline in case.get("pipelines", []) for command in pipeline
    ]
    assert {"EVALSHA", "PUBLISH", "SPUBLISH"} == {command[0] for command in sharded}
    # The script's call on a cluster, with an idempotency key and without.
    assert {command[2] for command in sharded if command[0] == "EVALSHA"} == {"2", "3"}
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
    namespaces = read_namespaces(VECTORS["namespaces"])
    assert namespaces.history == {"default": "100 600000", "personal": "50 300000"}
    assert namespaces.window_ms == VECTORS["namespaces"][":idempotency_window_ms"]
    assert (namespaces.policy("default"), namespaces.policy("room")) == ("100 600000", "0 0")


@pytest.mark.parametrize(
    ("window", "read"),
    [
        (b"2000", "2000"),
        ("+2000", "2000"),
        ("0", "0"),
        ("007", "7"),
        (str(2**64 - 1), str(2**64 - 1)),
        (str(2**64), "300000"),
        ("-1", "300000"),
        ("1_000", "300000"),
        (" 1", "300000"),
        ("", "300000"),
        ("²", "300000"),
    ],
)
def test_the_window_is_read_as_the_rust_crate_reads_it(window: str | bytes, read: str) -> None:
    assert read_namespaces({":idempotency_window_ms": window}).window_ms == read
    assert read_namespaces({}) == Namespaces({}, "300000")
