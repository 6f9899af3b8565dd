/**
 * Two gateway replicas behind nginx. The replica holding the client dies (SIGKILL) or drains
 * (SIGTERM: `disconnect`, then 4200) while events are being published; the client reconnects
 * through nginx to the other one and recovers every channel, its personal one included, from
 * its positions: each event arrives exactly once, in order.
 */

import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";

import type { GatewayClient } from "../../src/index.js";
import { Cluster, signToken, sleep, waitFor } from "../harness.js";
import { connected, nodeClient, range, record, sequence } from "./helpers.js";

describe("failover", () => {
  let cluster: Cluster | undefined;
  let client: GatewayClient | undefined;

  afterEach(async () => {
    client?.close();
    client = undefined;
    await cluster?.stop();
    cluster = undefined;
  });

  it("gets every event exactly once, in order, when its replica is killed mid-stream", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start();
    const c = cluster;
    client = nodeClient({ url: c.url, token: () => Promise.resolve(signToken("42")) });
    const seen = record(client);
    const jobs: number[] = [];
    let subscribedCount = 0;
    client.subscribe("jobs", {
      onEvent: (event) => jobs.push((event.data as { i: number }).i),
      onSubscribed: () => subscribedCount++,
      onReload: () => assert.fail("jobs must be recovered, not reloaded"),
    });
    client.connect();
    await connected(client);
    await waitFor("jobs subscribed", () => subscribedCount === 1);
    const first = client.connection?.nodeId;
    const victim = c.replica(first);

    for (let i = 1; i <= 100; i++) {
      await c.publish({ channel: "jobs", event: "job_progress", data: { i }, idempotency_key: `jobs-${i}` });
      if (i % 5 === 0) {
        await c.publish({ user: "42", event: "photo:updated", data: { i }, idempotency_key: `user-${i}` });
      }
      if (i === 30) await victim.kill();
      await sleep(15);
    }

    await waitFor("100 jobs and 20 personal events", () => jobs.length >= 100 && sequence(seen.events, "photo:updated").length >= 20, 30_000);
    await sleep(300); // anything extra would arrive now
    assert.deepEqual(jobs, range(1, 100), "each job event once, in order");
    assert.deepEqual(sequence(seen.events, "job_progress", "jobs"), range(1, 100));
    assert.deepEqual(
      sequence(seen.events, "photo:updated", "#42"),
      range(1, 20).map((k) => k * 5),
      "each personal event once, in order",
    );
    const offsets = seen.events.filter((e) => e.channel === "jobs").map((e) => e.offset);
    assert.deepEqual(offsets, range(1, 100), "offsets 1..100 without gap or repeat");
    assert.equal(seen.nodes.length, 2, `connected twice: ${seen.nodes.join(", ")}`);
    assert.notEqual(seen.nodes[1], first, "the second connection is on the other replica");
    assert.ok(seen.disconnects.length === 1 && seen.disconnects[0]?.code === 1006, JSON.stringify(seen.disconnects));
    assert.equal(subscribedCount, 2, "resubscribed after the reconnect");
    assert.equal(client.state, "connected");
  });

  it("drains: 4200 after the disconnect frame, reconnects after the advised delay and loses nothing", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ env: { GATEWAY_DRAIN_RECONNECT_MAX: "3s" } });
    const c = cluster;
    client = nodeClient({ url: c.url, token: signToken("7") });
    const seen = record(client);
    let subscribed = false;
    client.subscribe("drain", { onSubscribed: () => (subscribed = true) });
    client.connect();
    await connected(client);
    await waitFor("subscribed", () => subscribed);
    const draining = c.replica(client.connection?.nodeId);

    for (let i = 1; i <= 60; i++) {
      await c.publish({ channel: "drain", event: "tick", data: { i }, idempotency_key: `drain-${i}` });
      if (i === 20) draining.signal("SIGTERM");
      await sleep(30);
    }
    await waitFor("60 events", () => sequence(seen.events, "tick").length >= 60, 30_000);
    await sleep(300);

    assert.deepEqual(sequence(seen.events, "tick", "drain"), range(1, 60));
    const drained = seen.disconnects[0];
    assert.ok(drained, "disconnected once");
    assert.equal(drained.code, 4200);
    assert.ok(drained.reconnectAfterMs !== undefined, "the disconnect frame's advice came before the close");
    assert.ok(drained.reconnectAfterMs >= 0 && drained.reconnectAfterMs <= 3000, `advised delay ${drained.reconnectAfterMs}`);
    assert.equal(drained.reconnectInMs, drained.reconnectAfterMs, "the client waits what the server advised");
    const reconnecting = seen.stateTimes.find((s) => s.state === "connecting" && s.at >= drained.at);
    assert.ok(reconnecting, "reconnected");
    assert.ok(
      reconnecting.at - drained.at >= drained.reconnectAfterMs - 20,
      `waited ${reconnecting.at - drained.at} ms of the advised ${drained.reconnectInMs} ms`,
    );
    assert.equal(seen.nodes.length, 2);
    assert.notEqual(seen.nodes[1], draining.nodeId);
    assert.equal(await draining.exited(25_000), 0, "the drained replica exits 0 once its client left");
  });

  it("finds a silent connection dead within two heartbeats and recovers once the node is back", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ env: { GATEWAY_HEARTBEAT_INTERVAL: "1s" } });
    const c = cluster;
    const [frozen, other] = c.replicas;
    assert.ok(frozen && other);
    // Straight to one replica (no balancer), so the reconnect has to wait for that node.
    client = nodeClient({ url: `ws://127.0.0.1:${frozen.port}/ws`, token: signToken("9") });
    const seen = record(client);
    let subscribed = 0;
    client.subscribe("frozen", { onSubscribed: () => subscribed++ });
    client.connect();
    await waitFor("subscribed", () => subscribed === 1);
    await c.publish({ channel: "frozen", event: "tick", data: { i: 1 } });
    await waitFor("the first event", () => seen.events.length === 1);

    // The node stops answering, its socket stays open: only the heartbeat can tell.
    frozen.signal("SIGSTOP");
    const stoppedAt = Date.now();
    try {
      await waitFor("the client to give the connection up", () => client?.state !== "connected", 10_000);
      const noticedAfter = Date.now() - stoppedAt;
      // Two silent intervals from the last frame, which came up to an interval before the stop.
      assert.ok(noticedAfter >= 1000 && noticedAfter <= 6000, `noticed after ${noticedAfter} ms (heartbeat 1000 ms)`);
      const lost = seen.disconnects[0];
      assert.ok(lost);
      assert.equal(lost.code, 1006);
      assert.match(lost.reason, /no frame/);
      for (let i = 2; i <= 5; i++) {
        await c.publish({ channel: "frozen", event: "tick", data: { i }, idempotency_key: `frozen-${i}` }, [other]);
      }
    } finally {
      frozen.signal("SIGCONT");
    }
    await waitFor("resubscribed", () => subscribed === 2, 30_000);
    await c.publish({ channel: "frozen", event: "tick", data: { i: 6 } });
    await waitFor("six events", () => sequence(seen.events, "tick").length >= 6, 20_000);
    await sleep(300);
    assert.deepEqual(sequence(seen.events, "tick", "frozen"), range(1, 6));
  });
});
