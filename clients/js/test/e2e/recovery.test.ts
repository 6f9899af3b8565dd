/**
 * Recovery that cannot be complete: a channel keeping 3 events misses 10 while the client is
 * away, so the server answers `recovered: false`; the client calls `onReload` with the
 * server's position and carries on from there. And when it can be complete, after the same
 * pause on a channel that keeps enough, every missed event is replayed once.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import type { GatewayClient, Position, SubscribedInfo } from "../../src/index.js";
import { Cluster, signToken, sleep, waitFor } from "../harness.js";
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
    const personal: number[] = [];
    const personalSubscribed: SubscribedInfo[] = [];
    client.subscribe("#reader2", {
      onEvent: (event) => personal.push((event.data as { i: number }).i),
      onSubscribed: (info) => personalSubscribed.push(info),
    });
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
    assert.deepEqual(personal, [1, 2], "a subscription to the personal channel sees its events");
    assert.deepEqual(
      personalSubscribed.map((info) => info.recovered),
      [undefined, true],
      "subscribed by the server on each connection, recovered on the second",
    );
  });
});

describe("history lost under a live connection", () => {
  let cluster: Cluster | undefined;
  let client: GatewayClient | undefined;
  after(async () => {
    client?.close();
    await cluster?.stop();
  });

  it("calls onReload when the server sends reload, and takes the new epoch's events", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ replicas: 1 });
    const c = cluster;
    client = nodeClient({ url: c.url, token: signToken("survivor") });
    const seen = record(client);
    const reloads: Position[] = [];
    const items: number[] = [];
    let subscribed = 0;
    client.subscribe("lost", {
      onEvent: (event) => items.push((event.data as { i: number }).i),
      onReload: (position) => reloads.push(position),
      onSubscribed: () => subscribed++,
    });
    client.connect();
    await waitFor("subscribed", () => subscribed === 1);
    let epoch: unknown;
    for (let i = 1; i <= 3; i++) epoch = (await c.publish({ channel: "lost", event: "item", data: { i } }))["epoch"];
    await waitFor("three events", () => items.length === 3);

    // Redis comes back empty: offsets start again at 1 in a new epoch.
    await c.redis.restart();
    await waitFor("the bus back", async () => (await c.replicas[0]?.ready()) === 200, 30_000);
    const published = await c.publish({ channel: "lost", event: "item", data: { i: 4 } });
    assert.notEqual(published["epoch"], epoch);
    await sleep(500);
    await c.publish({ channel: "lost", event: "item", data: { i: 5 } });
    await waitFor("the event after the reload", () => items.includes(5), 20_000);
    await sleep(300);

    // Event 4 arrives live, or, when the node caught up after it was published, is covered by
    // the reload: the reload's position is then past it.
    const last = reloads.at(-1);
    assert.ok(last, "told to reload");
    assert.equal(last.epoch === "" || last.epoch === published["epoch"], true, JSON.stringify(reloads));
    if (items.includes(4)) assert.deepEqual(items, [1, 2, 3, 4, 5]);
    else assert.ok(items.join() === "1,2,3,5" && last.offset >= 1, `${items.join()} ${JSON.stringify(reloads)}`);
    assert.deepEqual(seen.disconnects, [], "never disconnected");
    assert.deepEqual(client.subscribe("lost").position, { offset: 2, epoch: published["epoch"] });
  });
});
