/**
 * Recovery that cannot be complete: a channel keeping 3 events misses 10 while the client is
 * away, so the server answers `recovered: false`; the client calls `onReload` with the
 * server's position and carries on from there. And when it can be complete, after the same
 * pause on a channel that keeps enough, every missed event is replayed once.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import type { GatewayClient, Position, SubscribedInfo } from "../../src/index.js";
import { Cluster, signToken, waitFor } from "../harness.js";
import { connected, nodeClient, range, record, sequence } from "./helpers.js";

describe("recovery", () => {
  let cluster: Cluster;
  const clients: GatewayClient[] = [];

  before(async () => {
    cluster = await Cluster.start({ replicas: 1 });
  });
  after(async () => {
    for (const client of clients) client.close();
    await cluster.stop();
  });

  it("calls onReload with the current position when history was trimmed", { timeout: 90_000 }, async () => {
    const client = nodeClient({ url: cluster.url, token: signToken("reader") });
    clients.push(client);
    const seen = record(client);
    const reloads: Position[] = [];
    const subscribed: SubscribedInfo[] = [];
    const sub = client.subscribe("short:feed", {
      onReload: (position) => reloads.push(position),
      onSubscribed: (info) => subscribed.push(info),
    });
    client.connect();
    await connected(client);
    await waitFor("subscribed", () => subscribed.length === 1);
    const first = await cluster.publish({ channel: "short:feed", event: "item", data: { i: 1 } });
    await waitFor("the first event", () => sequence(seen.events, "item").length === 1);
    assert.deepEqual(sub.position, { offset: 1, epoch: first["epoch"] });

    client.close();
    for (let i = 2; i <= 11; i++) await cluster.publish({ channel: "short:feed", event: "item", data: { i } });
    client.connect();
    await waitFor("resubscribed", () => subscribed.length === 2);

    assert.equal(subscribed[1]?.recovered, false);
    assert.deepEqual(reloads, [{ offset: 11, epoch: first["epoch"] }], "one reload, at the server's position");
    assert.deepEqual(sub.position, { offset: 11, epoch: first["epoch"] });
    assert.deepEqual(sequence(seen.events, "item"), [1], "nothing replayed");

    await cluster.publish({ channel: "short:feed", event: "item", data: { i: 12 } });
    await waitFor("the live event after the reload", () => sequence(seen.events, "item").length === 2);
    assert.deepEqual(sequence(seen.events, "item"), [1, 12]);
  });

  it("replays what it missed, once, when history holds it", { timeout: 90_000 }, async () => {
    const client = nodeClient({ url: cluster.url, token: signToken("reader2") });
    clients.push(client);
    const seen = record(client);
    const subscribed: SubscribedInfo[] = [];
    client.subscribe("long-feed", {
      onReload: () => assert.fail("no reload: history holds every missed event"),
      onSubscribed: (info) => subscribed.push(info),
    });
    client.connect();
    await waitFor("subscribed", () => subscribed.length === 1);
    for (let i = 1; i <= 3; i++) await cluster.publish({ channel: "long-feed", event: "item", data: { i } });
    await cluster.publish({ user: "reader2", event: "note", data: { i: 1 } });
    await waitFor("live events", () => seen.events.length === 4);

    client.close();
    for (let i = 4; i <= 10; i++) await cluster.publish({ channel: "long-feed", event: "item", data: { i } });
    await cluster.publish({ user: "reader2", event: "note", data: { i: 2 } });
    client.connect();
    await waitFor("all events", () => seen.events.length === 12);
    await connected(client);

    assert.equal(subscribed[1]?.recovered, true);
    assert.deepEqual(sequence(seen.events, "item", "long-feed"), range(1, 10));
    assert.deepEqual(sequence(seen.events, "note", "#reader2"), [1, 2], "the personal channel is recovered too");
  });
});
