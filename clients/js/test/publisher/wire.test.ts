/** Pure logic beyond the vectors: naming rules, the admin fields, data, receipts, errors. */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";

import {
  InvalidChannel,
  InvalidClientType,
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
  InvalidConfiguration,
} from "../../src/publisher/errors.js";
import { RESERVED_EVENT_NAMES, namespace, userId } from "../../src/publisher/names.js";
import type { Namespaces } from "../../src/publisher/namespaces.js";
import { pipelines, slotOf } from "../../src/publisher/pipelines.js";
import { SCRIPT_SHA1 } from "../../src/publisher/script.js";
import type { RedisMode } from "../../src/publisher/topology.js";
import {
  build,
  encodeData,
  fromFields,
  namespacesKey,
  receipt,
  timestampNow,
  toChannels,
  toEveryone,
  type Message,
  type Publish,
} from "../../src/publisher/wire.js";
import { REPO_DIR } from "../harness.js";

/** Settings in which the namespaces of `history` keep 10 events, with the window `windowMs`. */
function settings(history: readonly string[], windowMs = "300000"): Namespaces {
  return { history: new Map(history.map((name) => [name, "10 0"])), windowMs };
}

function commands(publish: Publish, history: ReadonlySet<string> | null, mode: RedisMode = "standalone"): string[][] {
  return build([publish], { prefix: "gw", timestamp: "t", namespaces: history === null ? null : settings([...history]), mode })
    .flat()
    .map((m) => [...m.command]);
}

type ErrorClass = abstract new (...args: never[]) => Error;

describe("publisher wire", () => {
  it("reserves the Rust publisher's event names", () => {
    const wire = readFileSync(join(REPO_DIR, "publisher/src/wire/mod.rs"), "utf8");
    const listed = wire.split("RESERVED_EVENT_NAMES: &[&str] = &[")[1]?.split("];")[0] ?? "";
    const names = [...listed.matchAll(/"([^"]+)"/g)].map((m) => m[1]);
    assert.deepEqual(names.sort(), [...RESERVED_EVENT_NAMES].sort());
  });

  it("finds each channel's namespace", () => {
    const cases: [string, string][] = [
      ["#42", "personal"],
      ["room:1", "room"],
      ["room:1:x", "room"],
      ["jobs", "default"],
      ["notifications#42,43", "default"],
      [":x", ""],
      ["a#b:c", "a#b"],
    ];
    for (const [channel, expected] of cases) assert.equal(namespace(channel), expected, channel);
  });

  it("refuses in user ids what Rust calls whitespace or control, and lone surrogates", () => {
    for (const user of ["a\u2028b", "a\u3000b", "a\u0085b", "a\u200ab", "a\nb", "a\x7fb", "a\x9fb", "\ud800", "x\udc00"]) {
      assert.throws(() => userId(user), InvalidUser, JSON.stringify(user));
    }
    for (const user of ["a\u200bb", "a\ufeffb", "a\u180eb", "auth0|5f7c", "zoë", "😀", "u".repeat(255), "é".repeat(127)]) {
      assert.equal(userId(user), user);
    }
    assert.throws(() => userId("é".repeat(128)), InvalidUser, "256 bytes");
  });

  it("refuses admin fields as the admin API does", () => {
    const refused: [unknown, ErrorClass][] = [
      [{ channel: 7, event: "e" }, InvalidChannel],
      [{ user: 42, event: "e" }, InvalidUser],
      [{ client_type: null, event: "e" }, InvalidClientType],
      [{ channel: "jobs", event: 5 }, InvalidEvent],
      [{ channel: "jobs" }, InvalidPublish],
      [{ channel: "jobs", event: "e", extra: 1 }, InvalidPublish],
      [{ channels: "jobs", event: "e" }, InvalidTarget],
      [{ channels: [], event: "e" }, InvalidTarget],
      [{ broadcast: "yes", event: "e" }, InvalidTarget],
      [{ broadcast: false, event: "e" }, InvalidTarget],
      [{ client_type: "gui", event: "e", idempotency_key: "k" }, InvalidIdempotencyKey],
      [{ broadcast: true, event: "e", idempotency_key: "k" }, InvalidIdempotencyKey],
      [{ channel: "jobs", event: "e", idempotency_key: "" }, InvalidIdempotencyKey],
      [{ channel: "jobs", event: "e", idempotency_key: "é".repeat(65) }, InvalidIdempotencyKey],
      [{ channel: "jobs", event: "e", idempotency_key: 1 }, InvalidIdempotencyKey],
      [{ channel: "jobs", event: "e", exclude_client: 1 }, InvalidPublish],
      [{ channel: "jobs", event: "e", exclude_client: "\ud800" }, InvalidData],
      [{ channel: "jobs", event: "e", data: Infinity }, InvalidData],
      [{ channel: "jobs", event: "e", data: { x: [NaN] } }, InvalidData],
      [{ channel: "jobs", event: "e", data: 1n }, InvalidData],
      [{ channel: "jobs", event: "e", data: "\udc80" }, InvalidData],
      [{ channel: "jobs", event: "e", data: { "\ud800": 1 } }, InvalidData],
      [{ channel: "jobs", event: "e", data: new Map([["a", 1]]) }, InvalidData],
      [{ channel: "jobs", event: "e", data: () => 1 }, InvalidData],
      [null, InvalidPublish],
      [[{ channel: "jobs", event: "e" }], InvalidPublish],
      ["jobs", InvalidPublish],
    ];
    for (const [fields, error] of refused) {
      assert.throws(() => fromFields(fields), error, JSON.stringify(fields, (_, v: unknown) => (typeof v === "bigint" ? "1n" : v)));
    }
    const cyclic: Record<string, unknown> = {};
    cyclic["self"] = cyclic;
    assert.throws(() => encodeData(cyclic), InvalidData);
  });

  it("takes fields set to undefined as absent, and accepts the longest idempotency key", () => {
    const publish = fromFields({ channel: "jobs", user: undefined, event: "e", data: undefined, idempotency_key: "k".repeat(128) });
    const [command] = commands(publish, new Set());
    assert.equal(command?.[6], "gw:{jobs}:idem:" + "k".repeat(128));
    assert.match(command[8] ?? "", /"data":null,/);
  });

  it("keeps the caller's key order, and what JSON.stringify makes of dates and nested undefined", () => {
    const when = new Date(Date.UTC(2026, 10, 22, 10, 0, 1, 123));
    const publish = fromFields({ channel: "room:1", event: "e", data: { b: 1, a: [1, undefined], c: { z: null, y: 1.5, u: undefined }, when } });
    const envelope = JSON.parse(commands(publish, new Set())[0]?.[2] ?? "") as Record<string, unknown>;
    assert.deepEqual(Object.keys(envelope), ["channel", "event", "data", "timestamp"]);
    assert.equal(publish.data, '{"b":1,"a":[1,null],"c":{"z":null,"y":1.5},"when":"2026-11-22T10:00:01.123Z"}');
  });

  it("sends every channel event through the script when the namespaces are unknown", () => {
    const publish = toChannels(["room:1", "jobs"], "e", null);
    assert.deepEqual(
      commands(publish, null).map((c) => c[0]),
      ["EVALSHA", "EVALSHA"],
    );
    assert.deepEqual(
      commands(publish, new Set(["default"])).map((c) => c[0]),
      ["PUBLISH", "EVALSHA"],
    );
    assert.deepEqual(
      commands(toEveryone("e", null), null).map((c) => c[0]),
      ["PUBLISH"],
    );
  });

  it("on a cluster hash-tags the topics and passes the script what it cannot read", () => {
    const history = new Set(["default"]);
    const windowed = (publish: Publish) =>
      build([publish], { prefix: "gw", timestamp: "t", namespaces: settings(["default"], "2000"), mode: "cluster" })
        .flat()
        .map((m) => [...m.command]);
    const [scripted] = windowed(toChannels(["jobs"], "e", null, { idempotencyKey: "k" }));
    assert.ok(scripted !== undefined);
    assert.deepEqual(scripted.slice(0, 6), ["EVALSHA", SCRIPT_SHA1, "3", "gw:{jobs}:stream", "gw:{jobs}:meta", "gw:{jobs}:idem:k"]);
    assert.deepEqual(scripted.slice(6, 7), ["gw:ch:{jobs}"]);
    assert.deepEqual(scripted.slice(8), ["default", "2000", "10 0", "SPUBLISH"]);
    // A user id with braces: the topic and the keys still share the channel's slot.
    const user = commands(fromFields({ user: "{x}", event: "e" }), history, "cluster");
    assert.deepEqual(user.map((c) => c[0]), ["SPUBLISH"]);
    assert.equal(user[0]?.[1], "gw:ch:{#{x}}");
    assert.equal(slotOf("gw:ch:{#{x}}"), slotOf("gw:{#{x}}:stream"));
    assert.deepEqual(
      commands(fromFields({ client_type: "gui", event: "e" }), history, "cluster").map((c) => c.slice(0, 2)),
      [["PUBLISH", "gw:ct:gui"]],
    );
    assert.deepEqual(
      commands(fromFields({ channel: "jobs", event: "e" }), history, "sentinel"),
      commands(fromFields({ channel: "jobs", event: "e" }), history, "standalone"),
      "sentinel writes what standalone writes",
    );
    assert.throws(() => commands(fromFields({ channel: "jobs", event: "e" }), null, "cluster"), /must be known/);
    assert.equal(namespacesKey("gw", "cluster"), "{gw}:namespaces");
    assert.equal(namespacesKey("gw", "sentinel"), "gw:namespaces");
  });

  it("groups a cluster batch by slot, in the order of each group's first message", () => {
    const publishes = ["a", "b", "a", "c", "b"].map((channel, i) => toChannels([channel], "e", i));
    const messages = build(publishes, { prefix: "gw", timestamp: "t", namespaces: settings([]), mode: "cluster" }).flat();
    assert.deepEqual(pipelines(messages, "cluster"), [
      [0, 2],
      [1, 4],
      [3],
    ]);
    assert.deepEqual(pipelines(messages, "standalone"), [[0, 1, 2, 3, 4]]);
    assert.deepEqual(pipelines([], "cluster"), []);
    // Channels of one slot share a pipeline: "{a}x" and "a" hash alike.
    const same = build([toChannels(["a", "b"], "e", null)], { prefix: "gw", timestamp: "t", namespaces: settings([]), mode: "cluster" }).flat();
    const relabelled = same.map((m, i) => ({ ...m, topic: i === 0 ? "gw:ch:{a}" : "{a}:other" }));
    assert.deepEqual(pipelines(relabelled, "cluster"), [[0, 1]]);
    // Redis's own reference value (CLUSTER KEYSLOT foo = 12182).
    assert.equal(slotOf("foo"), 12182);
  });

  it("writes timestamps in RFC 3339, UTC, with milliseconds", () => {
    assert.match(timestampNow(), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  });

  it("reads receipts from the script's replies", () => {
    const scripted: Message = { channel: "jobs", topic: "gw:ch:jobs", scripted: true, command: ["EVALSHA"] };
    assert.deepEqual(receipt(scripted, [3, "1790000000123456", 0]), { channel: "jobs", offset: 3, epoch: "1790000000123456", duplicate: false });
    assert.deepEqual(receipt(scripted, [3, Buffer.from("e"), 1]), { channel: "jobs", offset: 3, epoch: "e", duplicate: true });
    assert.deepEqual(receipt(scripted, [0, "", 1]), { channel: "jobs", offset: null, epoch: null, duplicate: true });
    const plain: Message = { channel: null, topic: "gw:broadcast", scripted: false, command: ["PUBLISH"] };
    assert.deepEqual(receipt(plain, 2), { channel: null, offset: null, epoch: null, duplicate: false });
    assert.throws(() => receipt(scripted, "OK"), /unexpected reply/);
  });

  it("has the Python publisher's error hierarchy and codes", () => {
    assert.ok(ReservedEvent.prototype instanceof InvalidEvent);
    for (const nameError of [InvalidChannel, InvalidEvent, InvalidUser, InvalidClientType]) {
      assert.ok(nameError.prototype instanceof InvalidName, nameError.name);
    }
    for (const beforeRedis of [InvalidName, InvalidTarget, InvalidIdempotencyKey, InvalidData]) {
      assert.ok(beforeRedis.prototype instanceof InvalidPublish, beforeRedis.name);
    }
    assert.ok(InvalidPublish.prototype instanceof PublisherError);
    assert.ok(PublishFailed.prototype instanceof PublisherError);
    assert.ok(InvalidConfiguration.prototype instanceof PublisherError);
    assert.ok(!(InvalidConfiguration.prototype instanceof InvalidPublish));
    assert.equal(new InvalidConfiguration("x").code, "invalid_configuration");
    assert.ok(!(PublishFailed.prototype instanceof InvalidPublish));
    assert.throws(
      () => toEveryone("pong", null),
      (error: unknown) => {
        assert.ok(error instanceof ReservedEvent);
        assert.deepEqual([error.name, error.code, error.value], ["ReservedEvent", "reserved_event", "pong"]);
        return true;
      },
    );
    const failed = new PublishFailed("x", { cause: new Error("why") });
    assert.deepEqual([failed.name, failed.code, (failed.cause as Error).message], ["PublishFailed", "publish_failed", "why"]);
  });
});
