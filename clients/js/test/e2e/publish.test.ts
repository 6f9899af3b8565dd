/**
 * Client publishing and the offline queue: `publish` resolves on `published` with the
 * event's position, rejects with the server's error where the namespace refuses it, waits in
 * the queue while the client is offline (here: its replica was killed) and is sent once it is
 * back; a full queue drops its oldest entry and says so.
 */

import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";

import type { GatewayClient } from "../../src/index.js";
import { API_KEY, Cluster, signToken, sleep, waitFor } from "../harness.js";
import { connected, nodeClient, record, sequence } from "./helpers.js";

describe("publish", () => {
  let cluster: Cluster | undefined;
  const clients: GatewayClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await cluster?.stop();
    cluster = undefined;
  });

  it("resolves on published, rejects with the server's error", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ replicas: 1 });
    const client = nodeClient({ url: cluster.url, token: signToken("writer") });
    clients.push(client);
    const seen = record(client);
    let subscribed = false;
    client.subscribe("room:1", { onSubscribed: () => (subscribed = true) });
    client.connect();
    await waitFor("subscribed", () => subscribed);

    const result = await client.publish("room:1", "typing", { i: 1 });
    assert.equal(result.offset, 1);
    assert.equal(typeof result.epoch, "string");
    await waitFor("its own event", () => sequence(seen.events, "typing").length === 1);

    await assert.rejects(client.publish("jobs", "typing", { i: 2 }), (error: Error & { code?: string }) => {
      assert.equal(error.name, "GatewayError");
      assert.equal(error.code, "forbidden");
      assert.match(error.message, /./);
      return true;
    });
    await assert.rejects(client.publish("room:1", "subscribe", {}), { code: "invalid_event" });
    await client.register("gui", "Desktop GUI v2.0");
  });

  it("queues publishes while offline and sends them after the reconnect", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start();
    const c = cluster;
    const client = nodeClient({ url: c.url, token: signToken("offline-writer") });
    clients.push(client);
    const seen = record(client);
    let subscribed = 0;
    client.subscribe("room:queue", { onSubscribed: () => subscribed++ });
    const registered = client.register("gui"); // queued until connected
    client.connect();
    await registered;
    await waitFor("subscribed", () => subscribed === 1);
    await connected(client);
    const first = client.connection?.clientId;

    await c.replica(client.connection?.nodeId).kill();
    await waitFor("disconnected", () => client.state !== "connected");
    const queued = [1, 2, 3].map((i) => client.publish("room:queue", "queued", { i }));
    const results = await Promise.all(queued);

    assert.notEqual(client.connection?.clientId, first, "sent on the new connection");
    assert.deepEqual(
      results.map((r) => r.offset),
      [1, 2, 3],
      "published in order",
    );
    await waitFor("the three events", () => sequence(seen.events, "queued").length === 3);
    assert.deepEqual(sequence(seen.events, "queued"), [1, 2, 3]);
    assert.ok(seen.disconnects.length >= 1);
    // The client type is set again on the new connection.
    const response = await fetch(`${c.replicas.find((r) => r.alive)?.adminUrl}/api/clients?client_type=gui`, {
      headers: { Authorization: `Bearer ${API_KEY}` },
    });
    const listed = (await response.json()) as { clients: { client_id: string }[] };
    assert.deepEqual(
      listed.clients.map((entry) => entry.client_id),
      [client.connection?.clientId],
    );
  });

  it("drops the oldest queued request when the queue is full", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ replicas: 1 });
    const client = nodeClient({ url: cluster.url, token: signToken("bounded"), queue: { maxEntries: 2, maxBytes: 4096 } });
    clients.push(client);
    const outcomes: string[] = [];
    const publish = (i: number, size = 10) =>
      client.publish("room:bounded", "queued", { i, pad: "x".repeat(size) }).then(
        (r) => outcomes.push(`${i}:ok@${r.offset}`),
        (e: unknown) => outcomes.push(`${i}:${(e as { code?: string }).code ?? "?"}`),
      );
    const all = [publish(1), publish(2), publish(3), publish(4, 5000)];
    await sleep(50);
    assert.deepEqual(outcomes, ["1:queue_overflow", "4:too_large"], "the oldest dropped, the oversized refused");
    client.connect();
    await Promise.all(all);
    assert.deepEqual(outcomes, ["1:queue_overflow", "4:too_large", "2:ok@1", "3:ok@2"]);
  });
});
