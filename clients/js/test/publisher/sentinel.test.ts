/**
 * The publisher behind Sentinel: a master `redis-server` and a `redis-server --sentinel`
 * watching it (`sentinel monitor mymaster 127.0.0.1 <port> 1`). The master is found through the
 * sentinel, is sent exactly what a standalone Redis is sent (read back with MONITOR), and holds
 * the history; an unknown master or an unreachable sentinel fails clearly.
 */

import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";

import { createClient } from "redis";

import { SCRIPT } from "../../src/publisher/script.js";
import { Publisher, PublishFailed, type PublishFields } from "../../src/publisher.js";
import { freePort, TestSentinel, waitFor } from "../harness.js";
import { Monitor } from "./monitor.js";
import { CASES, VECTORS, itemsOf, withFixedTimestamp } from "./vectors.js";

type Control = ReturnType<typeof createClient>;

/**
 * What the publisher sent the master: without the sentinel's own PINGs and hello messages, and
 * node-redis's ROLE (its sentinel client asks the master who it is).
 */
function ours(monitor: Monitor): string[][] {
  return monitor.sent().filter(([name = "", topic = ""]) => !["PING", "ROLE"].includes(name) && !(name === "PUBLISH" && topic.startsWith("__sentinel__:")));
}

describe("publisher behind Sentinel", () => {
  let sentinel: TestSentinel;
  let control: Control;
  const publishers: Publisher[] = [];
  const monitors: Monitor[] = [];

  const make = (prefix = "gw", sentinelMaster = sentinel.name, url = sentinel.url) => {
    const publisher = new Publisher({ url, prefix, mode: "sentinel", sentinelMaster, timeoutMs: 3000 });
    publishers.push(publisher);
    return publisher;
  };

  before(async () => {
    sentinel = await TestSentinel.start("mymaster");
    control = createClient({ url: sentinel.master.url });
    control.on("error", () => undefined);
    await control.connect();
  });

  after(async () => {
    await control.close();
    await sentinel.stop();
  });

  beforeEach(async () => {
    await control.flushAll();
    await control.scriptFlush();
  });

  afterEach(async () => {
    for (const monitor of monitors.splice(0)) monitor.close();
    await Promise.all(publishers.splice(0).map((p) => p.close()));
  });

  it("publishes to the master the sentinel names, and reads the stream back", async () => {
    await control.hSet("gw:namespaces", { default: "100 600000" });
    const publisher = make();
    const items: PublishFields[] = Array.from({ length: 5 }, (_, i) => ({ channel: "jobs", event: "progress", data: { i } }));

    const results = await publisher.publishBatch([...items, { broadcast: true, event: "tick", data: null }]);

    assert.deepEqual(
      results.map(([r]) => r?.offset ?? null),
      [1, 2, 3, 4, 5, null],
    );
    const stream = (await control.xRange("gw:{jobs}:stream", "-", "+")) ?? [];
    assert.deepEqual(
      stream.map((entry) => (JSON.parse(entry.message["m"] ?? "") as { data: { i: number }; offset: number }).data.i),
      [0, 1, 2, 3, 4],
    );
    assert.deepEqual(
      stream.map((entry) => entry.id),
      ["0-1", "0-2", "0-3", "0-4", "0-5"],
    );
  });

  for (const c of CASES.filter((c) => c.commands !== undefined)) {
    it(`sends the master exactly the commands of ${c.name}`, async () => {
      const prefix = c.prefix ?? VECTORS.prefix;
      await control.hSet(`${prefix}:namespaces`, VECTORS.namespaces);
      const monitor = await Monitor.start(sentinel.master.port);
      monitors.push(monitor);

      await make(prefix).publishBatch(itemsOf(c) as PublishFields[]);

      const expected = c.commands ?? [];
      const sent = await waitFor(`${2 + expected.length} commands of the publisher`, () => ours(monitor).length >= 2 + expected.length, 10_000).then(() => ours(monitor));
      assert.deepEqual(sent.slice(0, 2), [["HGETALL", `${prefix}:namespaces`], ["SCRIPT", "LOAD", SCRIPT]]);
      assert.deepEqual(withFixedTimestamp(sent.slice(2, 2 + expected.length)), expected);
    });
  }

  it("rejects with PublishFailed for a master the sentinel does not know, or a sentinel that is not there", async () => {
    await assert.rejects(make("gw", "nosuchmaster").publishChannel("jobs", "e", 1), (error: unknown) => {
      assert.ok(error instanceof PublishFailed, String(error));
      assert.match(error.message, /cannot connect to the master "nosuchmaster" through the sentinels/);
      return true;
    });
    await assert.rejects(make("gw", "mymaster", `redis://127.0.0.1:${await freePort()}`).broadcast("e", 1), /cannot connect to the master "mymaster"/);
  });
});
