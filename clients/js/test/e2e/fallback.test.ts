/**
 * The HTTP transports, through nginx in front of two replicas: SSE and long-poll forced, a
 * replica killed or drained mid-stream (every event once, in order); the fallback from
 * WebSocket when nginx refuses `/ws` (to SSE) and `/ws` and `/sse` (to poll); the way back to
 * WebSocket once nginx lets it through again, with nothing lost or repeated across the switch,
 * and after an outage of every transport (nginx killed); subscriptions, tokens and requests on a
 * one-way transport.
 */

import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";

import type { GatewayClient, TransportName } from "../../src/index.js";
import { Cluster, signToken, sleep, waitFor } from "../harness.js";
import { connected, nodeClient, range, record, sequence } from "./helpers.js";

/** Publishes `tick` `from`..`to` on `channel`, one every `everyMs`, with idempotency keys. */
async function ticks(cluster: Cluster, channel: string, from: number, to: number, everyMs = 15, each?: (i: number) => void | Promise<void>): Promise<void> {
  for (let i = from; i <= to; i++) {
    await cluster.publish({ channel, event: "tick", data: { i }, idempotency_key: `${channel}-${i}` });
    await each?.(i);
    await sleep(everyMs);
  }
}

describe("SSE and long-poll", () => {
  let cluster: Cluster | undefined;
  const clients: GatewayClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await cluster?.stop();
    cluster = undefined;
  });

  for (const transport of ["sse", "poll"] as const) {
    it(`${transport}: gets every event exactly once, in order, when its replica is killed mid-stream`, { timeout: 90_000 }, async () => {
      cluster = await Cluster.start();
      const c = cluster;
      const client = nodeClient({ url: c.url, token: () => signToken("42"), transports: [transport] });
      clients.push(client);
      const seen = record(client);
      let subscribed = 0;
      client.subscribe("jobs", { onSubscribed: () => subscribed++, onReload: () => assert.fail("recovered, not reloaded") });
      client.connect();
      await waitFor("jobs subscribed", () => subscribed === 1);
      assert.equal(client.transport, transport);
      const victim = c.replica(client.connection?.nodeId);

      await ticks(c, "jobs", 1, 100, 15, async (i) => {
        if (i % 5 === 0) await c.publish({ user: "42", event: "note", data: { i }, idempotency_key: `note-${i}` });
        if (i === 30) await victim.kill();
      });
      await waitFor("100 ticks and 20 notes", () => sequence(seen.events, "tick").length >= 100 && sequence(seen.events, "note").length >= 20, 30_000);
      await sleep(300);

      assert.deepEqual(sequence(seen.events, "tick", "jobs"), range(1, 100), "each event once, in order");
      assert.deepEqual(
        seen.events.filter((e) => e.channel === "jobs").map((e) => e.offset),
        range(1, 100),
      );
      assert.deepEqual(
        sequence(seen.events, "note", "#42"),
        range(1, 20).map((k) => k * 5),
        "the personal channel too",
      );
      assert.equal(client.state, "connected");
      assert.equal(client.transport, transport);
      assert.ok(seen.transports.every((t) => t === transport), seen.transports.join());
      if (transport === "sse") {
        // The stream of the dead replica ended: a reconnect; a poll usually just goes on elsewhere.
        assert.ok(seen.disconnects.length >= 1 && seen.disconnects.every((d) => d.code === 1006), JSON.stringify(seen.disconnects));
        assert.notEqual(client.connection?.nodeId, victim.nodeId);
      }
    });

    it(`${transport}: drains: the disconnect frame's advice is waited, nothing is lost`, { timeout: 90_000 }, async () => {
      cluster = await Cluster.start({ env: { GATEWAY_DRAIN_RECONNECT_MAX: "2s" } });
      const c = cluster;
      const client = nodeClient({ url: c.url, token: signToken("7"), transports: [transport] });
      clients.push(client);
      const seen = record(client);
      let subscribed = false;
      client.subscribe("drain", { onSubscribed: () => (subscribed = true) });
      client.connect();
      await waitFor("subscribed", () => subscribed);
      // A poll hops between replicas: drain the one that served the first.
      const draining = c.replica(client.connection?.nodeId);

      await ticks(c, "drain", 1, 50, 30, (i) => {
        if (i === 15) draining.signal("SIGTERM");
      });
      await waitFor("50 ticks", () => sequence(seen.events, "tick").length >= 50, 30_000);
      await sleep(300);

      assert.deepEqual(sequence(seen.events, "tick", "drain"), range(1, 50));
      const drained = seen.disconnects.find((d) => d.code === 4200);
      if (transport === "sse" || drained) {
        assert.ok(drained, `closed with 4200: ${JSON.stringify(seen.disconnects)}`);
        assert.ok(drained.reconnectAfterMs !== undefined && drained.reconnectAfterMs <= 2000, JSON.stringify(drained));
        assert.equal(drained.reconnectInMs, drained.reconnectAfterMs, "waits what the server advised");
      }
      assert.equal(client.transport, transport);
      assert.equal(await draining.exited(25_000), 0, "the drained replica exits 0");
    });
  }

  it("subscribes and unsubscribes by asking again; publish and register need a WebSocket", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ replicas: 1 });
    const c = cluster;
    for (const transport of ["sse", "poll"] as const) {
      const user = `asker-${transport}`;
      const client = nodeClient({ url: c.url, token: signToken(user), transports: [transport] });
      clients.push(client);
      const seen = record(client);
      client.connect();
      await connected(client);

      const subscribed: (boolean | undefined)[] = [];
      const sub = client.subscribe("later", { onSubscribed: (info) => subscribed.push(info.recovered) });
      const other = client.subscribe("other");
      await waitFor(`${transport}: later subscribed`, () => sub.state === "subscribed" && other.state === "subscribed", 10_000);
      assert.equal(subscribed.length, 1);
      await c.publish({ channel: "later", event: "tick", data: { i: 1 } });
      await c.publish({ channel: "other", event: "tock", data: { i: 1 } });
      await waitFor("both events", () => seen.events.length >= 2);

      sub.unsubscribe();
      await sleep(300); // the request without the channel is under way
      await c.publish({ channel: "later", event: "tick", data: { i: 2 } });
      await c.publish({ channel: "other", event: "tock", data: { i: 2 } });
      await waitFor("the second tock", () => sequence(seen.events, "tock").length === 2);
      await sleep(200);
      assert.deepEqual(sequence(seen.events, "tick"), [1], `${transport}: nothing after unsubscribe`);

      const errors: string[] = [];
      const refused = client.subscribe("nope:2", { onError: (error) => errors.push(error.code) });
      await waitFor(`${transport}: the refusal`, () => refused.state === "rejected", 30_000);
      assert.deepEqual(errors, ["unknown_namespace"]);

      await assert.rejects(client.publish("room:1", "typing", {}), { code: "not_supported_on_transport" });
      await assert.rejects(client.register("gui"), { code: "not_supported_on_transport" });
      await assert.rejects(client.history("jobs"), { code: "not_supported_on_transport" });
      assert.equal(client.transport, transport);
      assert.deepEqual(seen.disconnects, [], "asked again without disconnecting");
      client.close();
    }
  });

  it("keeps SSE and poll connections across token expiries with new tokens", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ replicas: 1, env: { GATEWAY_JWT_LEEWAY: "0s" } });
    const c = cluster;
    const runs = (["sse", "poll"] as const).map((transport) => {
      let issued = 0;
      const client = nodeClient({
        url: c.url,
        transports: [transport],
        token: () => {
          issued++;
          return signToken(`short-${transport}`, 3);
        },
      });
      clients.push(client);
      const seen = record(client);
      client.subscribe("kept");
      client.connect();
      return { transport, client, seen, issued: () => issued };
    });
    for (const run of runs) await connected(run.client);
    await sleep(7_000); // two lifetimes of a 3 s token
    await c.publish({ channel: "kept", event: "tick", data: { i: 1 } });
    for (const run of runs) {
      await waitFor(`${run.transport}: the event`, () => sequence(run.seen.events, "tick").length === 1);
      assert.equal(run.client.state, "connected");
      assert.ok(run.issued() >= 3, `${run.transport}: a new token before each expiry (${run.issued()})`);
      assert.deepEqual(run.seen.disconnects, [], `${run.transport}: never disconnected`);
    }
  });
});

describe("falling back and moving back", () => {
  let cluster: Cluster | undefined;
  const clients: GatewayClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await cluster?.stop();
    cluster = undefined;
  });

  it("falls back to SSE when nginx refuses /ws, and to poll when it refuses /sse too", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ refuse: ["ws"] });
    const c = cluster;
    const expectations: [TransportName, () => Promise<void>][] = [
      ["sse", async () => {}],
      ["poll", () => c.nginx.reconfigure(["ws", "sse"])],
    ];
    for (const [transport, setUp] of expectations) {
      await setUp();
      const client = nodeClient({ url: c.url, token: signToken(`falling-${transport}`) });
      clients.push(client);
      const seen = record(client);
      let subscribed = false;
      client.subscribe(`fall-${transport}`, { onSubscribed: () => (subscribed = true) });
      client.connect();
      await waitFor(`subscribed over ${transport}`, () => subscribed, 20_000);
      assert.equal(client.transport, transport);
      assert.deepEqual(seen.transports, [transport]);
      assert.ok(seen.disconnects.every((d) => d.code === 1006), JSON.stringify(seen.disconnects));
      await ticks(c, `fall-${transport}`, 1, 5, 0);
      await waitFor("five ticks", () => sequence(seen.events, "tick").length === 5);
      assert.deepEqual(sequence(seen.events, "tick"), range(1, 5));
    }
  });

  for (const from of ["sse", "poll"] as const) {
    it(`moves back from ${from} to WebSocket once nginx lets it through, losing and repeating nothing`, { timeout: 90_000 }, async () => {
      const refused: ("ws" | "sse")[] = from === "sse" ? ["ws"] : ["ws", "sse"];
      cluster = await Cluster.start({ refuse: refused });
      const c = cluster;
      const client = nodeClient({
        url: c.url,
        token: () => signToken("mover"),
        upgradeBackoff: { minDelayMs: 1000, maxDelayMs: 1000 },
      });
      clients.push(client);
      const seen = record(client);
      const onChannel: number[] = [];
      client.subscribe("moving", { onEvent: (e) => onChannel.push((e.data as { i: number }).i), onReload: () => assert.fail("no reload") });
      client.connect();
      await waitFor(`connected over ${from}`, () => client.transport === from, 20_000);

      let switchedAt = 0;
      client.on("connected", (info) => {
        if (info.transport === "websocket") switchedAt = onChannel.length;
      });
      // Events keep coming (about 4 s of them) while nginx is reloaded and the client moves.
      await ticks(c, "moving", 1, 120, 25, async (i) => {
        if (i % 10 === 0) await c.publish({ user: "mover", event: "note", data: { i }, idempotency_key: `mover-${i}` });
        if (i === 20) await c.nginx.reconfigure([]);
      });
      await waitFor("120 ticks", () => sequence(seen.events, "tick").length >= 120 && sequence(seen.events, "note").length >= 12, 20_000);
      await sleep(300);

      assert.deepEqual(onChannel, range(1, 120), "each event once, in order, across the switch");
      assert.deepEqual(sequence(seen.events, "note", "#mover"), range(1, 12).map((k) => k * 10));
      assert.deepEqual(seen.transports, [from, "websocket"]);
      assert.ok(switchedAt > 20 && switchedAt < 120, `moved while events were flowing (after ${switchedAt})`);
      const firstConnected = seen.states.indexOf("connected");
      assert.deepEqual(seen.states.slice(firstConnected), ["connected"], "connected throughout the switch");
      assert.equal(client.transport, "websocket");
      assert.equal(client.state, "connected");
      // A publish works again.
      await client.publish("room:back", "typing", {});
    });
  }

  it("after an outage of every transport, ends up back on WebSocket within seconds, losing nothing", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ replicas: 1 });
    const c = cluster;
    // Attempts exactly 1.5 s apart, so the test can tell which transport the next one uses.
    const client = nodeClient({ url: c.url, token: () => signToken("outage"), transports: ["websocket", "sse"], backoff: { minDelayMs: 1500, maxDelayMs: 1500 } });
    clients.push(client);
    const seen = record(client);
    const got: number[] = [];
    client.subscribe("outage", { onEvent: (e) => got.push((e.data as { i: number }).i) });
    client.connect();
    await waitFor("connected over websocket", () => client.transport === "websocket");
    await ticks(c, "outage", 1, 10, 0);

    // Nothing gets through: two WebSocket attempts fail, then the client falls back to SSE.
    await c.nginx.kill();
    await ticks(c, "outage", 11, 20, 0);
    await waitFor("the loss, two WebSocket attempts and one SSE attempt", () => seen.disconnects.length === 4, 20_000);
    await c.nginx.restart();
    await waitFor("connected over sse", () => client.transport === "sse", 10_000);
    const onSse = Date.now();
    await waitFor("back on websocket", () => client.transport === "websocket", 10_000);
    const after = Date.now() - onSse;
    assert.ok(after < 6000, `tried WebSocket again ${after} ms after the fallback, not after upgradeBackoff`);
    await ticks(c, "outage", 21, 30, 0);
    await waitFor("30 ticks", () => got.length >= 30);
    await sleep(300);

    assert.deepEqual(got, range(1, 30), "each event once, in order");
    assert.deepEqual(seen.transports, ["websocket", "sse", "websocket"]);
    assert.ok(seen.disconnects.every((d) => d.code === 1006), JSON.stringify(seen.disconnects));
  });
});
