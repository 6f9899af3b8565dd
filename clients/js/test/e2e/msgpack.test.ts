/**
 * MessagePack against real gateways (`@gateway/client/msgpack`, `format: "msgpack"`): the
 * WebSocket asks for `gateway.msgpack` and every frame the server sends is binary, yet the
 * client's events, replies and positions are those of a JSON client beside it, nested data and
 * timestamps included; the client publishes in MessagePack; it recovers across a replica kill
 * as a JSON client does; where `/ws` is refused it falls back to SSE (JSON), and moves back to a
 * MessagePack WebSocket once `/ws` is let through.
 */

import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";

import WebSocket from "ws";

import { type GatewayClient as CoreClient, type GatewayEvent } from "../../src/index.js";
import { GatewayClient, type GatewayClientOptions } from "../../src/msgpack.js";
import { Cluster, signToken, sleep, waitFor } from "../harness.js";
import { connected, nodeClient, range, record, sequence } from "./helpers.js";

/** What the gateway sent over the WebSockets of {@link RecordingWebSocket}. */
const wire = { protocols: [] as string[], binary: 0, text: 0 };

/** `ws`, counting the frames that come in as binary or text and the subprotocol each socket got. */
class RecordingWebSocket extends WebSocket {
  constructor(url: string, protocols?: string | string[]) {
    super(url, protocols);
    this.on("open", () => wire.protocols.push(this.protocol));
    this.on("message", (_data, isBinary) => (isBinary ? wire.binary++ : wire.text++));
  }
}

function msgpackClient(options: Omit<GatewayClientOptions, "WebSocket" | "format">): GatewayClient {
  return new GatewayClient({ ...options, WebSocket: RecordingWebSocket, format: "msgpack" });
}

/** Nested data of every JSON kind. */
const DATA = {
  job: { id: "abc", progress: 45.5, steps: [1, -2, 3.25, "x", null, true, false, { deep: { list: [], empty: {} } }] },
  text: "héllo ✓ 😀",
  max_safe: Number.MAX_SAFE_INTEGER,
  negative: -129,
  zero: 0,
  none: null,
};

describe("MessagePack", () => {
  let cluster: Cluster | undefined;
  const clients: CoreClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await cluster?.stop();
    cluster = undefined;
    wire.protocols = [];
    wire.binary = 0;
    wire.text = 0;
  });

  it("gets the events and replies a JSON client gets, in binary frames, and publishes", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ replicas: 1 });
    const c = cluster;
    const packed = msgpackClient({ url: c.url, token: signToken("mp") });
    const plain = nodeClient({ url: c.url, token: signToken("mp") });
    clients.push(packed, plain);
    const events = new Map<CoreClient, GatewayEvent[]>();
    let subscribed = 0;
    for (const client of [packed, plain]) {
      const seen = record(client);
      events.set(client, seen.events);
      client.subscribe("room:mp", { onSubscribed: () => subscribed++ });
      client.connect();
    }
    await waitFor("both subscribed", () => subscribed === 2);

    await c.publish({ channel: "room:mp", event: "job_progress", data: DATA });
    await c.publish({ user: "mp", event: "photo:updated", data: { photo_id: "p1", sizes: [320, 640] } });
    await waitFor("both events on both clients", () => [...events.values()].every((list) => list.length === 2));
    const mine = events.get(packed) ?? [];
    assert.deepEqual(mine, events.get(plain), "the same events, field for field");
    const [channelEvent, personalEvent] = mine;
    assert.deepEqual(channelEvent?.data, DATA);
    assert.equal(channelEvent.channel, "room:mp");
    assert.equal(channelEvent.offset, 1);
    assert.match(channelEvent.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, "a timestamp stays a string");
    assert.equal(personalEvent?.channel, "#mp");

    const result = await packed.publish("room:mp", "typing", { on: true, at: new Date(0), list: [1, { a: null }] });
    assert.equal(result.offset, 2);
    assert.equal(typeof result.epoch, "string");
    await waitFor("the client's own event on both", () => [...events.values()].every((list) => list.length === 3));
    assert.deepEqual(mine[2]?.data, { on: true, at: "1970-01-01T00:00:00.000Z", list: [1, { a: null }] });
    assert.deepEqual(mine, events.get(plain));

    assert.deepEqual(await packed.history("room:mp"), await plain.history("room:mp"), "the same history reply");
    await assert.rejects(packed.publish("jobs", "typing", {}), { name: "GatewayError", code: "forbidden" });
    await assert.rejects(packed.publish("room:mp", "subscribe", {}), { code: "invalid_event" });
    await packed.register("gui", "Desktop GUI v2.0");

    assert.deepEqual(wire.protocols, ["gateway.msgpack"], "the server took the subprotocol");
    assert.ok(wire.binary >= 10, `${wire.binary} binary frames`);
    assert.equal(wire.text, 0, "no text frame");
  });

  it("gets every event exactly once, in order, when its replica is killed mid-stream", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start();
    const c = cluster;
    const client = msgpackClient({ url: c.url, token: () => signToken("43") });
    clients.push(client);
    const seen = record(client);
    let subscribed = 0;
    client.subscribe("jobs", { onSubscribed: () => subscribed++, onReload: () => assert.fail("recovered, not reloaded") });
    client.connect();
    await waitFor("jobs subscribed", () => subscribed === 1);
    const victim = c.replica(client.connection?.nodeId);

    for (let i = 1; i <= 60; i++) {
      await c.publish({ channel: "jobs", event: "job_progress", data: { i, nested: { at: [i, String(i)] } }, idempotency_key: `jobs-${i}` });
      if (i % 5 === 0) await c.publish({ user: "43", event: "note", data: { i }, idempotency_key: `note-${i}` });
      if (i === 20) await victim.kill();
      await sleep(15);
    }
    await waitFor("60 jobs and 12 notes", () => sequence(seen.events, "job_progress").length >= 60 && sequence(seen.events, "note").length >= 12, 30_000);
    await sleep(300);

    assert.deepEqual(sequence(seen.events, "job_progress", "jobs"), range(1, 60), "each event once, in order");
    assert.deepEqual(
      seen.events.filter((e) => e.channel === "jobs").map((e) => e.offset),
      range(1, 60),
    );
    assert.deepEqual(
      sequence(seen.events, "note", "#43"),
      range(1, 12).map((k) => k * 5),
    );
    assert.equal(seen.nodes.length, 2);
    assert.notEqual(seen.nodes[1], victim.nodeId);
    assert.equal(subscribed, 2, "resubscribed with its positions");
    assert.deepEqual(wire.protocols, ["gateway.msgpack", "gateway.msgpack"]);
    assert.equal(wire.text, 0);
  });

  it("falls back to SSE, in JSON, where /ws is refused, and moves back to a MessagePack WebSocket", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ refuse: ["ws"] });
    const c = cluster;
    const client = new GatewayClient({
      url: c.url,
      token: signToken("44"),
      WebSocket: RecordingWebSocket,
      format: "msgpack",
      upgradeBackoff: { minDelayMs: 1000, maxDelayMs: 1000 },
    });
    clients.push(client);
    const seen = record(client);
    client.subscribe("jobs");
    client.connect();
    await connected(client);
    assert.equal(client.transport, "sse");
    await c.publish({ channel: "jobs", event: "tick", data: { i: 1, nested: { ok: true } } });
    await waitFor("the event over SSE", () => sequence(seen.events, "tick").length === 1);

    await c.nginx.reconfigure([]);
    await waitFor("back on WebSocket", () => client.transport === "websocket", 30_000);
    await c.publish({ channel: "jobs", event: "tick", data: { i: 2, nested: { ok: true } } });
    await waitFor("the event over WebSocket", () => sequence(seen.events, "tick").length === 2);
    await sleep(300);

    assert.deepEqual(sequence(seen.events, "tick", "jobs"), [1, 2]);
    assert.deepEqual(
      seen.events.map((e) => e.data),
      [
        { i: 1, nested: { ok: true } },
        { i: 2, nested: { ok: true } },
      ],
    );
    assert.deepEqual(seen.transports, ["sse", "websocket"]);
    assert.deepEqual(wire.protocols, ["gateway.msgpack"]);
    assert.equal(wire.text, 0);
  });
});
