/**
 * End to end: events published with the Node publisher reach WebSocket clients of two real
 * gateway replicas through a real Redis: offsets, a user's tabs, idempotency, batches, SCRIPT
 * FLUSH, client types, broadcasts, exclude_client, and bad names refused before Redis.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";

import { createClient } from "redis";

import { InvalidChannel } from "../../src/publisher/errors.js";
import { SCRIPT_SHA1 } from "../../src/publisher/script.js";
import { Publisher, type Receipt } from "../../src/publisher.js";
import { TestGateway, TestRedis, waitFor } from "../harness.js";
import { Subscriber } from "./subscriber.js";

/** History on `default` and `personal`, none on `room`. */
const TOML = `
[namespaces.default]
subscribe = "public"
history_size = 1000
history_ttl = "10m"
[namespaces.personal]
history_size = 1000
history_ttl = "10m"
[namespaces.room]
subscribe = "public"
`;

const NONE: Receipt = { channel: null, offset: null, epoch: null, duplicate: false };

describe("publisher and real gateways", () => {
  let redis: TestRedis;
  let gateways: [TestGateway, TestGateway];
  let control: ReturnType<typeof createClient>;
  let publisher: Publisher;
  const subscribers: Subscriber[] = [];
  let unique = "";

  /** A subscriber on replica 0 or 1, connected as `user`. */
  const connect = async (replica: 0 | 1, user: string) => {
    const subscriber = await Subscriber.connect(gateways[replica].port, user);
    subscribers.push(subscriber);
    return subscriber;
  };

  before(async () => {
    redis = await TestRedis.start();
    const started: TestGateway[] = [];
    try {
      for (const nodeId of ["js-pub-a", "js-pub-b"]) started.push(await TestGateway.start({ redisUrl: redis.url, nodeId, toml: TOML }));
    } catch (error) {
      await Promise.all(started.map((g) => g.stop()));
      await redis.stop();
      throw error;
    }
    gateways = started as [TestGateway, TestGateway];
    control = createClient({ url: redis.url });
    control.on("error", () => undefined);
    await control.connect();
    // The publisher picks PUBLISH or the script from this hash: wait until the gateways wrote it.
    await waitFor("the gateways' namespaces", async () => {
      const fields = await control.hGetAll("gw:namespaces");
      return "default" in fields && "personal" in fields;
    });
    publisher = new Publisher({ url: redis.url, prefix: "gw" });
  });

  after(async () => {
    await publisher.close();
    await control.close();
    await Promise.all(gateways.map((g) => g.stop()));
    await redis.stop();
  });

  beforeEach(() => {
    // A fresh suffix for names, so that tests sharing the gateways never see each other.
    unique = randomBytes(4).toString("hex");
  });

  afterEach(() => {
    for (const subscriber of subscribers.splice(0)) subscriber.close();
  });

  it("gives channel events contiguous offsets, the ones delivered", { timeout: 60_000 }, async () => {
    const channel = `jobs-${unique}`;
    const subscriber = await connect(0, `u-${unique}`);
    await subscriber.subscribe(channel);

    const receipts: Receipt[] = [];
    for (let step = 0; step < 20; step++) receipts.push(await publisher.publishChannel(channel, "job_progress", { job_id: unique, step }));

    assert.deepEqual(
      receipts.map((r) => r.offset),
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    const epochs = new Set(receipts.map((r) => r.epoch));
    assert.equal(epochs.size, 1);
    assert.ok(!epochs.has(null));
    assert.ok(receipts.every((r) => r.channel === channel && !r.duplicate));
    const events = await subscriber.events(20);
    assert.deepEqual(
      events.map((e) => [e.type, e["channel"]]),
      receipts.map(() => ["job_progress", channel]),
    );
    assert.deepEqual(
      events.map((e) => e["data"]),
      receipts.map((_, step) => ({ job_id: unique, step })),
    );
    assert.deepEqual(
      events.map((e) => [e["offset"], e["epoch"]]),
      receipts.map((r) => [r.offset, r.epoch]),
    );
    assert.ok(events.every((e) => String(e["timestamp"]).endsWith("Z")));
  });

  it("delivers channel events without an offset where no history is kept", { timeout: 60_000 }, async () => {
    const channel = `room:${unique}`;
    const subscriber = await connect(1, `u-${unique}`);
    await subscriber.subscribe(channel);

    const receipt = await publisher.publishChannel(channel, "typing", { on: true, text: "héllo ✓\n" });

    assert.deepEqual(receipt, { ...NONE, channel });
    const event = await subscriber.event();
    assert.deepEqual([event.type, event["channel"], event["data"]], ["typing", channel, { on: true, text: "héllo ✓\n" }]);
    assert.ok(!("offset" in event) && !("epoch" in event));
  });

  it("reaches both tabs of a user, on both replicas, and nobody else", { timeout: 60_000 }, async () => {
    const user = `auth0|${unique}`;
    const tabs = [await connect(0, user), await connect(1, user)];
    const stranger = await connect(0, `other-${unique}`);

    const receipt = await publisher.publishUser(user, "photo_ready", { photo: "p1" });

    assert.equal(receipt.channel, `#${user}`);
    assert.equal(receipt.offset, 1);
    for (const tab of tabs) {
      const event = await tab.event();
      assert.deepEqual([event.type, event["channel"], event["data"]], ["photo_ready", `#${user}`, { photo: "p1" }]);
      assert.deepEqual([event["offset"], event["epoch"]], [receipt.offset, receipt.epoch]);
    }
    await stranger.nothingWithin(500);
  });

  it("delivers a repeated idempotency key once, answering the first position", { timeout: 60_000 }, async () => {
    const channel = `jobs-${unique}`;
    const subscriber = await connect(0, `u-${unique}`);
    await subscriber.subscribe(channel);

    const first = await publisher.publishChannel(channel, "job_done", { n: 1 }, { idempotencyKey: "done" });
    const second = await publisher.publishChannel(channel, "job_done", { n: 2 }, { idempotencyKey: "done" });
    const next = await publisher.publishChannel(channel, "next", null);

    assert.deepEqual([first.offset, first.duplicate], [1, false]);
    assert.deepEqual(second, { channel, offset: first.offset, epoch: first.epoch, duplicate: true });
    assert.equal(next.offset, 2);
    // The repeat published nothing: the next event on the channel is the one after it.
    assert.deepEqual(
      (await subscriber.events(2)).map((e) => [e.type, e["data"]]),
      [
        ["job_done", { n: 1 }],
        ["next", null],
      ],
    );
  });

  it("honours idempotency keys where no history is kept", { timeout: 60_000 }, async () => {
    const channel = `room:${unique}`;
    const subscriber = await connect(1, `u-${unique}`);
    await subscriber.subscribe(channel);

    const first = await publisher.publishChannel(channel, "job_done", 1, { idempotencyKey: `k-${unique}` });
    const second = await publisher.publishChannel(channel, "job_done", 2, { idempotencyKey: `k-${unique}` });
    await publisher.publishChannel(channel, "next", 3);

    assert.deepEqual(first, { ...NONE, channel });
    assert.deepEqual(second, { ...NONE, channel, duplicate: true });
    assert.deepEqual(
      (await subscriber.events(2)).map((e) => e["data"]),
      [1, 3],
    );
  });

  it("publishes a batch mixing every target in one call", { timeout: 60_000 }, async () => {
    const [jobs, room, clientType, user] = [`jobs-${unique}`, `room:${unique}`, `gui-${unique}`, `u-${unique}`];
    const near = await connect(0, user);
    await near.subscribe(jobs, room);
    await near.register(clientType);
    const far = await connect(1, `far-${unique}`);

    const results = await publisher.publishBatch([
      { channel: jobs, event: "a", data: 1 },
      { user, event: "b", data: 2 },
      { client_type: clientType, event: "c", data: 3 },
      { channels: [room, jobs], event: "d", data: 4 },
      { broadcast: true, event: "e", data: unique },
    ]);

    const epoch = results[0]?.[0]?.epoch ?? null;
    assert.deepEqual(results, [
      [{ channel: jobs, offset: 1, epoch, duplicate: false }],
      [{ channel: `#${user}`, offset: 1, epoch: results[1]?.[0]?.epoch ?? null, duplicate: false }],
      [NONE],
      [
        { ...NONE, channel: room },
        { channel: jobs, offset: 2, epoch, duplicate: false },
      ],
      [NONE],
    ]);
    // Topics are separate Redis channels: only each channel's own order is guaranteed.
    const seen = await near.events(6);
    assert.deepEqual(seen.map((e) => JSON.stringify([e.type, e["channel"] ?? null, e["data"]])).sort(), [
      JSON.stringify(["a", jobs, 1]),
      JSON.stringify(["b", `#${user}`, 2]),
      JSON.stringify(["c", null, 3]),
      JSON.stringify(["d", jobs, 4]),
      JSON.stringify(["d", room, 4]),
      JSON.stringify(["e", null, unique]),
    ]);
    assert.deepEqual(
      seen.filter((e) => e["channel"] === jobs).map((e) => e["offset"]),
      [1, 2],
    );
    const event = await far.event();
    assert.deepEqual([event.type, event["data"], "channel" in event], ["e", unique, false]);
  });

  it("survives SCRIPT FLUSH: the history goes on", { timeout: 60_000 }, async () => {
    const channel = `jobs-${unique}`;
    const subscriber = await connect(0, `u-${unique}`);
    await subscriber.subscribe(channel);
    const first = await publisher.publishChannel(channel, "step", 1);

    await control.scriptFlush();
    assert.deepEqual(await control.scriptExists(SCRIPT_SHA1), [0]);
    const second = await publisher.publishChannel(channel, "step", 2);

    assert.deepEqual([first.offset, second.offset], [1, 2]);
    assert.equal(second.epoch, first.epoch);
    assert.deepEqual(await control.scriptExists(SCRIPT_SHA1), [1]);
    assert.deepEqual(
      (await subscriber.events(2)).map((e) => [e["data"], e["offset"]]),
      [
        [1, 1],
        [2, 2],
      ],
    );
    await subscriber.nothingWithin(500);
  });

  it("reaches only the connections of a client type", { timeout: 60_000 }, async () => {
    const gui = [await connect(0, `a-${unique}`), await connect(1, `b-${unique}`)];
    for (const subscriber of gui) await subscriber.register(`gui-${unique}`);
    const mobile = await connect(0, `c-${unique}`);
    await mobile.register(`mobile-${unique}`);

    assert.deepEqual(await publisher.publishClientType(`gui-${unique}`, "config_changed", { theme: "dark" }), NONE);

    for (const subscriber of gui) {
      const event = await subscriber.event();
      assert.deepEqual([event.type, event["data"], "channel" in event], ["config_changed", { theme: "dark" }, false]);
    }
    await mobile.nothingWithin(500);
  });

  it("broadcasts to every connection on every replica", { timeout: 60_000 }, async () => {
    const everyone = [await connect(0, `0-${unique}`), await connect(1, `1-${unique}`), await connect(0, `2-${unique}`), await connect(1, `3-${unique}`)];

    assert.deepEqual(await publisher.broadcast("maintenance", { id: unique }), NONE);

    for (const subscriber of everyone) {
      const event = await subscriber.event();
      assert.deepEqual([event.type, event["data"], "channel" in event], ["maintenance", { id: unique }, false]);
    }
  });

  it("leaves out the excluded connection on a channel, and only it", { timeout: 60_000 }, async () => {
    const channel = `jobs-${unique}`;
    const sender = await connect(0, `s-${unique}`);
    const other = await connect(1, `o-${unique}`);
    for (const subscriber of [sender, other]) await subscriber.subscribe(channel);

    await publisher.publishChannel(channel, "moved", 1, { excludeClient: sender.clientId });
    await publisher.publishChannel(channel, "moved", 2);

    assert.deepEqual(
      (await other.events(2)).map((e) => e["data"]),
      [1, 2],
    );
    assert.deepEqual(
      (await sender.events(1)).map((e) => e["data"]),
      [2],
    );
  });

  it("leaves out the excluded connection of a user, and of a broadcast", { timeout: 60_000 }, async () => {
    const user = `u-${unique}`;
    const sender = await connect(0, user);
    const otherTab = await connect(1, user);

    await publisher.publishUser(user, "saved", 1, { excludeClient: sender.clientId });
    await publisher.publishUser(user, "saved", 2);

    assert.deepEqual(
      (await otherTab.events(2)).map((e) => e["data"]),
      [1, 2],
    );
    assert.deepEqual(
      (await sender.events(1)).map((e) => e["data"]),
      [2],
    );

    await publisher.broadcast("hello", unique, { excludeClient: sender.clientId });
    assert.equal((await otherTab.event())["data"], unique);
    await sender.nothingWithin(500);
  });

  it("refuses bad names before anything reaches Redis", { timeout: 60_000 }, async () => {
    const channel = `jobs-${unique}`;
    const subscriber = await connect(0, `u-${unique}`);
    await subscriber.subscribe(channel);

    await assert.rejects(
      publisher.publishBatch([
        { channel, event: "first", data: null },
        { channel: "bad name", event: "e", data: null },
      ]),
      InvalidChannel,
    );
    const receipt = await publisher.publishChannel(channel, "second", null);

    assert.equal(receipt.offset, 1);
    assert.equal((await subscriber.event()).type, "second");
  });
});
