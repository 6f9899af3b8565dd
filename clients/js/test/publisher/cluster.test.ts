/**
 * The publisher on a real Redis Cluster of three masters (`redis-server --cluster-enabled yes`,
 * `redis-cli --cluster create`): a batch over channels on every master gets its offsets and
 * streams; exactly the vectors' pipelines reach the nodes, read back with MONITOR; an SSUBSCRIBE
 * subscriber gets what is SPUBLISHed; a node that lost the script gets it again; idempotency
 * keys; and how it fails.
 */

import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";

import { createCluster } from "redis";

import { slotOf } from "../../src/publisher/pipelines.js";
import { SCRIPT, SCRIPT_SHA1 } from "../../src/publisher/script.js";
import { Publisher, PublishFailed, type PublishFields } from "../../src/publisher.js";
import { freePort, redisCli, TestRedisCluster, waitFor } from "../harness.js";
import { Monitor } from "./monitor.js";
import { CASES, VECTORS, itemsOf, withFixedTimestamp } from "./vectors.js";

type Control = ReturnType<typeof createCluster>;

const HISTORY = { default: "100 600000" };
const PUBLISHING = new Set(["EVALSHA", "SPUBLISH", "PUBLISH"]);

interface Stored {
  event: string;
  data: { round: number };
  offset: number;
  epoch: string;
}

describe("publisher and a real Redis Cluster", () => {
  let cluster: TestRedisCluster;
  let control: Control;
  const publishers: Publisher[] = [];
  const monitors: Monitor[] = [];

  const make = (prefix = "gw") => {
    const publisher = new Publisher({ url: cluster.url, prefix, mode: "cluster" });
    publishers.push(publisher);
    return publisher;
  };
  /** MONITOR on every node, by port. */
  const watchAll = async () => {
    const started = await Promise.all(cluster.ports.map(async (port) => [port, await Monitor.start(port)] as const));
    monitors.push(...started.map(([, monitor]) => monitor));
    return new Map(started);
  };
  /** The port of the master that serves `key`'s slot. */
  const masterOf = (key: string): number => {
    const master = control.slots[slotOf(key)]?.master;
    assert.ok(master !== undefined, `a master for ${key}`);
    return master.port;
  };
  const onEveryNode = (...args: string[]) => Promise.all(cluster.ports.map((port) => redisCli(["-p", String(port), ...args])));

  before(async () => {
    cluster = await TestRedisCluster.start(3);
    control = createCluster({ rootNodes: cluster.ports.map((port) => ({ url: `redis://127.0.0.1:${port}` })) });
    control.on("error", () => undefined);
    await control.connect();
  });

  after(async () => {
    await control.close();
    await cluster.stop();
  });

  beforeEach(async () => {
    await onEveryNode("FLUSHALL");
    await onEveryNode("SCRIPT", "FLUSH");
  });

  afterEach(async () => {
    for (const monitor of monitors.splice(0)) monitor.close();
    await Promise.all(publishers.splice(0).map((p) => p.close()));
  });

  it("publishes a batch over channels on every master: offsets 1..n per channel, each stream holding its events", async () => {
    await control.hSet("{gw}:namespaces", HISTORY);
    const channels = Array.from({ length: 24 }, (_, i) => `job-${i}`);
    assert.equal(new Set(channels.map((channel) => masterOf(`gw:ch:{${channel}}`))).size, 3, "the channels are on all three masters");
    const rounds = 4;
    const items: PublishFields[] = [];
    for (let round = 0; round < rounds; round++) {
      for (const channel of channels) items.push({ channel, event: "progress", data: { round } });
      items.push({ broadcast: true, event: "tick", data: { round } }, { client_type: "gui", event: "tick", data: null });
    }

    const results = await make().publishBatch(items);

    assert.equal(results.length, items.length);
    const offsets = new Map<string, number[]>();
    const epochs = new Map<string, Set<string>>();
    results.forEach(([receipt], i) => {
      const item = items[i];
      assert.ok(receipt !== undefined && item !== undefined);
      if (item.channel === undefined) {
        assert.deepEqual(receipt, { channel: null, offset: null, epoch: null, duplicate: false });
        return;
      }
      assert.equal(receipt.channel, item.channel);
      offsets.set(item.channel, [...(offsets.get(item.channel) ?? []), receipt.offset ?? 0]);
      epochs.set(item.channel, (epochs.get(item.channel) ?? new Set()).add(receipt.epoch ?? ""));
    });
    for (const channel of channels) {
      assert.deepEqual(offsets.get(channel), [1, 2, 3, 4], channel);
      assert.equal(epochs.get(channel)?.size, 1, channel);
      const stream = (await control.xRange(`gw:{${channel}}:stream`, "-", "+")) ?? [];
      assert.deepEqual(
        stream.map((entry) => entry.id),
        ["0-1", "0-2", "0-3", "0-4"],
      );
      const stored = stream.map((entry) => JSON.parse(entry.message["m"] ?? "") as Stored);
      assert.deepEqual(
        stored.map((m) => [m.event, m.data.round, m.offset, m.epoch]),
        Array.from({ length: rounds }, (_, round) => ["progress", round, round + 1, [...(epochs.get(channel) ?? [])][0]]),
      );
    }
    // Every master got the script.
    assert.deepEqual(await onEveryNode("SCRIPT", "EXISTS", SCRIPT_SHA1), ["1\n", "1\n", "1\n"]);
  });

  for (const c of CASES.filter((c) => c.pipelines !== undefined)) {
    it(`sends exactly the pipelines of ${c.name}, each to its slot's node`, async () => {
      const prefix = c.prefix ?? VECTORS.prefix;
      await control.hSet(`{${prefix}}:namespaces`, VECTORS.namespaces);
      const publisher = make(prefix);
      const monitors = await watchAll();

      await publisher.publishBatch(itemsOf(c) as PublishFields[]);

      const expected = c.pipelines ?? [];
      const count = expected.flat().length;
      const publishing = () => [...monitors.values()].flatMap((m) => m.sent().filter((command) => PUBLISHING.has(command[0] ?? "")));
      await waitFor(`${count} publishing commands`, () => publishing().length >= count, 10_000);
      // What each node was sent, the timestamps fixed.
      const byNode = new Map([...monitors].map(([port, m]) => [port, withFixedTimestamp(m.sent())]));
      assert.deepEqual(
        [...byNode.values()].flat().filter((command) => command[0] === "HGETALL"),
        [["HGETALL", `{${prefix}}:namespaces`]],
      );
      assert.deepEqual(withFixedTimestamp(publishing()).map(String).sort(), expected.flat().map(String).sort(), "every command, once");
      for (const pipeline of expected) {
        const [first = []] = pipeline;
        if (first[0] === "PUBLISH") continue; // a classic PUBLISH may go to any node: it reaches all
        // The slot's node: of the script's first key, or of SPUBLISH's topic.
        const port = masterOf((first[0] === "EVALSHA" ? first[3] : first[1]) ?? "");
        const sent = (byNode.get(port) ?? []).filter((command) => PUBLISHING.has(command[0] ?? ""));
        const positions = pipeline.map((command) => sent.findIndex((s) => String(s) === String(command)));
        assert.ok(
          positions.every((p, i) => p >= 0 && (i === 0 || p > (positions[i - 1] ?? 0))),
          `${c.name}: the pipeline in order on port ${port}: ${JSON.stringify(positions)}`,
        );
        if (pipeline.some((command) => command[0] === "EVALSHA")) {
          const loads = (byNode.get(port) ?? []).filter((command) => command[0] === "SCRIPT");
          assert.deepEqual(loads[0], ["SCRIPT", "LOAD", SCRIPT], `${c.name}: the script loaded on port ${port}`);
        }
      }
    });
  }

  it("delivers SPUBLISHed messages to an SSUBSCRIBE subscriber, and broadcasts to a SUBSCRIBE one", async () => {
    await control.hSet("{gw}:namespaces", HISTORY);
    const subscriber = control.duplicate();
    subscriber.on("error", () => undefined);
    await subscriber.connect();
    const got: [string, string][] = [];
    try {
      const listener = (message: string, topic: string) => got.push([topic, message]);
      await subscriber.sSubscribe(["gw:ch:{room:1}"], listener);
      await subscriber.sSubscribe(["gw:ch:{jobs}"], listener);
      await subscriber.subscribe("gw:broadcast", listener);
      const publisher = make();

      const plain = await publisher.publishChannel("room:1", "typing", { on: true });
      const kept = await publisher.publishChannel("jobs", "job_progress", { progress: 45.5 });
      await publisher.broadcast("maintenance", { in_minutes: 5 });

      await waitFor("three messages", () => got.length >= 3, 10_000);
      assert.deepEqual(plain, { channel: "room:1", offset: null, epoch: null, duplicate: false });
      assert.equal(kept.offset, 1);
      const stamp = (JSON.parse(got[0]?.[1] ?? "") as { timestamp: string }).timestamp;
      assert.deepEqual(got.slice(0, 2), [
        ["gw:ch:{room:1}", `{"channel":"room:1","event":"typing","data":{"on":true},"timestamp":"${stamp}"}`],
        ["gw:ch:{jobs}", `{"channel":"jobs","event":"job_progress","data":{"progress":45.5},"timestamp":"${(JSON.parse(got[1]?.[1] ?? "") as { timestamp: string }).timestamp}","offset":1,"epoch":"${kept.epoch ?? ""}"}`],
      ]);
      assert.equal(got[2]?.[0], "gw:broadcast");
      assert.match(got[2][1], /^\{"broadcast":true,"event":"maintenance","data":\{"in_minutes":5\},"timestamp":/);
    } finally {
      await subscriber.close();
    }
  });

  it("loads the script again on the node that lost it, and sends only the script calls there again", async () => {
    await control.hSet("{gw}:namespaces", HISTORY);
    const channels = Array.from({ length: 12 }, (_, i) => `job-${i}`);
    const publisher = make();
    await publisher.publishBatch(channels.map((channel) => ({ channel, event: "e", data: 1 })));
    const lost = masterOf("gw:ch:{job-0}");
    await redisCli(["-p", String(lost), "SCRIPT", "FLUSH"]);
    const monitors = await watchAll();

    const results = await publisher.publishBatch([
      ...channels.map((channel) => ({ channel, event: "e", data: 2 })),
      { channel: "room:1", event: "e", data: 3 },
    ]);

    assert.deepEqual(
      results.map(([r]) => r?.offset ?? null),
      [...channels.map(() => 2), null],
    );
    const onLost = channels.filter((channel) => masterOf(`gw:ch:{${channel}}`) === lost);
    const scripting = () => (monitors.get(lost)?.sent() ?? []).filter((c) => ["EVALSHA", "SCRIPT"].includes(c[0] ?? ""));
    await waitFor(`${2 * onLost.length + 1} script commands on port ${lost}`, () => scripting().length >= 2 * onLost.length + 1, 10_000);
    const sent = scripting();
    const names = sent.map((c) => (c[0] === "SCRIPT" ? "LOAD" : (c[3] ?? "")));
    const streams = onLost.map((channel) => `gw:{${channel}}:stream`);
    // Each of that node's calls met NOSCRIPT; then LOAD, and each again (per slot pipeline).
    assert.deepEqual(names.filter((n) => n !== "LOAD").sort(), [...streams, ...streams].sort());
    assert.ok(names.includes("LOAD"), JSON.stringify(names));
    for (const port of cluster.ports.filter((p) => p !== lost)) {
      const evalshas = () => (monitors.get(port)?.sent() ?? []).filter((c) => c[0] === "EVALSHA").map((c) => c[3]);
      const mine = channels.filter((channel) => masterOf(`gw:ch:{${channel}}`) === port).length;
      await waitFor(`${mine} script calls on port ${port}`, () => evalshas().length >= mine, 10_000);
      const elsewhere = evalshas();
      assert.equal(elsewhere.length, mine, `port ${port}: nothing sent twice`);
    }
    assert.deepEqual(await onEveryNode("SCRIPT", "EXISTS", SCRIPT_SHA1), ["1\n", "1\n", "1\n"]);
  });

  it("applies idempotency keys in the channel's slot, for the gateways' window", async () => {
    await control.hSet("{gw}:namespaces", { ...HISTORY, ":idempotency_window_ms": "2000" });
    const publisher = make();
    const first = await publisher.publishChannel("jobs", "e", 1, { idempotencyKey: "k" });
    const again = await publisher.publishChannel("jobs", "e", 1, { idempotencyKey: "k" });
    assert.deepEqual(again, { ...first, duplicate: true });
    assert.equal(first.offset, 1);
    const ttl = await control.pTTL("gw:{jobs}:idem:k");
    assert.ok(ttl > 0 && ttl <= 2000, `ttl ${ttl}`);
    const plain = await publisher.publishUser("42", "e", 1, { idempotencyKey: "k" });
    assert.deepEqual(await publisher.publishUser("42", "e", 1, { idempotencyKey: "k" }), { ...plain, duplicate: true });
    assert.equal(plain.offset, null, "no history for personal channels here");
    assert.equal(await control.xLen("gw:{jobs}:stream"), 1);
  });

  it("publishes without history where no gateway wrote settings, and fails clearly where they cannot be read", async () => {
    assert.deepEqual(await make().publishChannel("jobs", "e", 1), { channel: "jobs", offset: null, epoch: null, duplicate: false });
    await control.set("{broken}:namespaces", "not a hash");
    await assert.rejects(make("broken").broadcast("e", 1), (error: unknown) => {
      assert.ok(error instanceof PublishFailed, String(error));
      assert.match(error.message, /cannot read the gateways' settings from \{broken\}:namespaces/);
      assert.match((error.cause as Error).message, /WRONGTYPE/);
      return true;
    });
  });

  it("rejects with PublishFailed when the cluster cannot be reached", async () => {
    const publisher = new Publisher({ url: `redis://127.0.0.1:${await freePort()}`, mode: "cluster", timeoutMs: 2000 });
    publishers.push(publisher);
    await assert.rejects(publisher.publishChannel("jobs", "e", 1), (error: unknown) => {
      assert.ok(error instanceof PublishFailed, String(error));
      assert.match(error.message, /cannot connect to the Redis Cluster/);
      return true;
    });
  });
});
