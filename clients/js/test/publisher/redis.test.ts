/**
 * What the publisher sends to a real Redis, read back with MONITOR on a Redis no gateway uses:
 * exactly the vectors' commands, in one round trip, the script loaded once and again after
 * SCRIPT FLUSH, the namespaces cached; and how it fails.
 */

import assert from "node:assert/strict";
import { connect, createServer, type Server, type Socket } from "node:net";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";

import { createClient } from "redis";

import { InvalidChannel, InvalidData, InvalidIdempotencyKey, InvalidTarget, InvalidUser, PublishFailed, ReservedEvent } from "../../src/publisher/errors.js";
import { SCRIPT, SCRIPT_SHA1 } from "../../src/publisher/script.js";
import { Publisher, type Receipt } from "../../src/publisher.js";
import { freePort, sleep, TestRedis } from "../harness.js";
import { Monitor } from "./monitor.js";
import { CASES, VECTORS, itemsOf, withFixedTimestamp } from "./vectors.js";

type Control = ReturnType<typeof createClient>;

const LOAD = ["SCRIPT", "LOAD", SCRIPT];
const POLICIES = { default: "100 600000", personal: "50 300000" };
const NONE: Receipt = { channel: null, offset: null, epoch: null, duplicate: false };

/** A TCP proxy in front of Redis that counts the chunks each client connection writes. */
class CountingProxy {
  readonly writes: number[] = [];
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(target: number): Promise<CountingProxy> {
    const port = await freePort();
    const server = createServer();
    const proxy = new CountingProxy(server, port);
    server.on("connection", (client) => {
      const index = proxy.writes.push(0) - 1;
      const upstream = connect(target, "127.0.0.1");
      for (const socket of [client, upstream]) {
        proxy.sockets.add(socket);
        socket.on("error", () => undefined);
        socket.on("close", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.on("data", (chunk: Buffer) => {
        proxy.writes[index] = (proxy.writes[index] ?? 0) + 1;
        upstream.write(chunk);
      });
      upstream.on("data", (chunk: Buffer) => client.write(chunk));
    });
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
    return proxy;
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

describe("publisher and a real Redis", () => {
  let redis: TestRedis;
  let control: Control;
  const publishers: Publisher[] = [];
  const monitors: Monitor[] = [];

  const make = (prefix = "gw", options: Partial<ConstructorParameters<typeof Publisher>[0]> = {}) => {
    const publisher = new Publisher({ url: redis.url, prefix, ...options });
    publishers.push(publisher);
    return publisher;
  };
  const watch = async () => {
    const monitor = await Monitor.start(redis.port);
    monitors.push(monitor);
    return monitor;
  };

  before(async () => {
    redis = await TestRedis.start();
    control = createClient({ url: redis.url });
    control.on("error", () => undefined);
    await control.connect();
  });

  after(async () => {
    await control.close();
    await redis.stop();
  });

  beforeEach(async () => {
    await control.flushAll();
    await control.scriptFlush();
  });

  afterEach(async () => {
    for (const monitor of monitors.splice(0)) monitor.close();
    await Promise.all(publishers.splice(0).map((p) => p.close()));
  });

  for (const c of CASES.filter((c) => c.commands !== undefined)) {
    it(`sends exactly the commands of ${c.name}`, async () => {
      const prefix = c.prefix ?? VECTORS.prefix;
      await control.hSet(`${prefix}:namespaces`, VECTORS.namespaces);
      const publisher = make(prefix);
      const monitor = await watch();

      const results = await publisher.publishBatch(itemsOf(c) as Parameters<Publisher["publishBatch"]>[0]);

      const expected = c.commands ?? [];
      const sent = await monitor.waitFor(2 + expected.length);
      assert.deepEqual(sent.slice(0, 2), [["HGETALL", `${prefix}:namespaces`], LOAD]);
      assert.deepEqual(withFixedTimestamp(sent.slice(2)), expected);
      const receipts = results.flat();
      assert.equal(receipts.length, expected.length);
      receipts.forEach((r, i) => {
        const command = expected[i] ?? [];
        const kept = command[0] === "EVALSHA" && ["default", "personal"].includes(command[9] ?? "");
        assert.equal(r.offset !== null, kept, `receipt ${i}: ${JSON.stringify(r)}`);
        assert.equal(r.offset === null, r.epoch === null);
      });
    });
  }

  it("reuses the loaded script and the namespaces read", async () => {
    await control.hSet("gw:namespaces", POLICIES);
    const publisher = make();
    const monitor = await watch();

    const first = await publisher.publishChannel("jobs", "e", 1);
    const [[second]] = (await publisher.publishBatch([{ channel: "jobs", event: "e", data: 2 }])) as [[Receipt]];

    const sent = await monitor.waitFor(4);
    assert.deepEqual(
      sent.map((c) => c[0]),
      ["HGETALL", "SCRIPT", "EVALSHA", "EVALSHA"],
    );
    assert.deepEqual([first.offset, second.offset], [1, 2]);
    assert.equal(first.epoch, second.epoch);
  });

  it("sends a whole batch in one write: one round trip", async () => {
    await control.hSet("gw:namespaces", POLICIES);
    const proxy = await CountingProxy.start(redis.port);
    try {
      const publisher = new Publisher({ url: `redis://127.0.0.1:${proxy.port}` });
      publishers.push(publisher);
      await publisher.broadcast("warm", null); // connects, reads the namespaces, loads the script
      const before = proxy.writes[0] ?? 0;
      const items = Array.from({ length: 10 }, (_, i) => ({ channels: ["jobs", "room:1"], event: "e", data: { i } }));
      const results = await publisher.publishBatch([...items, { user: "42", event: "e", data: null }, { broadcast: true, event: "e", data: null }]);
      assert.equal(proxy.writes.length, 1, "one connection");
      assert.equal((proxy.writes[0] ?? 0) - before, 1, "22 commands in one write");
      assert.deepEqual(
        results.slice(0, 10).map((r) => r.map((x) => x.offset)),
        items.map((_, i) => [i + 1, null]),
      );
    } finally {
      await proxy.stop();
    }
  });

  it("reads the namespaces again once they are older than the refresh", async () => {
    const publisher = make("gw", { namespacesRefreshMs: 300 });
    const monitor = await watch();
    assert.deepEqual(await publisher.publishChannel("jobs", "e", 1), { ...NONE, channel: "jobs" });

    await control.hSet("gw:namespaces", POLICIES); // a gateway announced history
    assert.deepEqual(await publisher.publishChannel("jobs", "e", 2), { ...NONE, channel: "jobs" }, "still cached");
    await sleep(400);
    const third = await publisher.publishChannel("jobs", "e", 3);

    assert.equal(third.offset, 1);
    await monitor.waitFor(7);
    assert.deepEqual(
      monitor
        .sent()
        .map((c) => c[0])
        .filter((name) => name !== "HSET"),
      ["HGETALL", "SCRIPT", "PUBLISH", "PUBLISH", "HGETALL", "EVALSHA"],
    );
  });

  it("after SCRIPT FLUSH loads the script again and re-sends only the script calls", async () => {
    await control.hSet("gw:namespaces", POLICIES);
    const publisher = make();
    await publisher.publishChannel("jobs", "e", 1);
    await control.scriptFlush();
    const monitor = await watch();

    const results = await publisher.publishBatch([
      { client_type: "gui", event: "e", data: 2 },
      { channel: "jobs", event: "e", data: 3 },
      { channel: "room:1", event: "e", data: 4 },
      { user: "42", event: "e", data: 5 },
    ]);

    const sent = (await monitor.waitFor(7)).map((c) => [c[0], c[0] === "PUBLISH" || c[0] === "SCRIPT" ? c.at(-1) : c[3]]);
    assert.deepEqual(sent, [
      ["PUBLISH", sent[0]?.[1]],
      ["EVALSHA", "gw:{jobs}:stream"],
      ["PUBLISH", sent[2]?.[1]],
      ["EVALSHA", "gw:{#42}:stream"],
      ["SCRIPT", SCRIPT],
      ["EVALSHA", "gw:{jobs}:stream"],
      ["EVALSHA", "gw:{#42}:stream"],
    ]);
    assert.match(sent[0]?.[1] ?? "", /"data":2/);
    assert.match(sent[2]?.[1] ?? "", /"data":4/);
    assert.deepEqual(
      results.map((r) => r.map((x) => x.offset)),
      [[null], [2], [null], [1]],
    );
    assert.deepEqual(await control.scriptExists(SCRIPT_SHA1), [1]);
  });

  it("sends nothing for an invalid publish", async () => {
    const publisher = make();
    const monitor = await watch();
    const refused: [() => Promise<unknown>, abstract new (...args: never[]) => Error][] = [
      [() => publisher.publishChannel("bad name", "e", 1), InvalidChannel],
      [() => publisher.publishChannels(["jobs", "a b"], "e", 1), InvalidChannel],
      [() => publisher.publishChannels([], "e", 1), InvalidTarget],
      [() => publisher.publishUser("a,b", "e", 1), InvalidUser],
      [() => publisher.broadcast("subscribed", 1), ReservedEvent],
      [() => publisher.publishChannel("jobs", "e", NaN), InvalidData],
      [() => publisher.publishChannel("jobs", "e", 1, { idempotencyKey: "" }), InvalidIdempotencyKey],
      [
        () =>
          publisher.publishBatch([
            { channel: "jobs", event: "e" },
            { client_type: "gui", event: "pong" },
          ]),
        ReservedEvent,
      ],
    ];
    for (const [call, error] of refused) await assert.rejects(call(), error);

    await publisher.broadcast("e", null);

    const sent = await monitor.waitFor(3);
    assert.deepEqual(
      sent.map((c) => c[0]),
      ["HGETALL", "SCRIPT", "PUBLISH"],
    );
  });

  it("leaves the idempotency window to the namespaces hash", async () => {
    await control.hSet("short:namespaces", { ...POLICIES, ":idempotency_window_ms": "2000" });
    await control.hSet("long:namespaces", POLICIES);

    await make("short").publishChannel("jobs", "e", 1, { idempotencyKey: "k" });
    await make("long").publishChannel("jobs", "e", 1, { idempotencyKey: "k" });

    const short = await control.pTTL("short:{jobs}:idem:k");
    const long = await control.pTTL("long:{jobs}:idem:k");
    assert.ok(short > 0 && short <= 2000, `short ${short}`);
    assert.ok(long > 2000 && long <= 300_000, `long ${long}`);
  });

  it("rejects with PublishFailed and Redis' error as its cause", async () => {
    await control.set("broken:namespaces", "not a hash");
    const publisher = make("broken");

    await assert.rejects(publisher.publishChannel("jobs", "e", 1), (error: unknown) => {
      assert.ok(error instanceof PublishFailed);
      assert.equal(error.code, "publish_failed");
      assert.match((error.cause as Error).message, /WRONGTYPE/);
      return true;
    });
    assert.deepEqual(await publisher.publishClientType("gui", "e", 1), NONE);
  });

  it("rejects with PublishFailed when Redis cannot be reached, and asks nothing for an empty batch", async () => {
    const publisher = new Publisher({ url: `redis://127.0.0.1:${await freePort()}` });
    publishers.push(publisher);
    assert.deepEqual(await publisher.publishBatch([]), []);
    for (let attempt = 0; attempt < 2; attempt++) {
      await assert.rejects(publisher.publishChannel("jobs", "e", 1), (error: unknown) => {
        assert.ok(error instanceof PublishFailed);
        assert.match(error.message, /cannot connect to Redis/);
        assert.ok(error.cause instanceof Error);
        return true;
      });
    }
  });

  it("gives up on a Redis that does not answer after timeoutMs, and connects again next time", async () => {
    const silent = createServer((socket) => socket.on("error", () => undefined));
    const port = await freePort();
    await new Promise<void>((resolve) => silent.listen(port, "127.0.0.1", resolve));
    try {
      const publisher = new Publisher({ url: `redis://127.0.0.1:${port}`, timeoutMs: 300 });
      publishers.push(publisher);
      const started = performance.now();
      await assert.rejects(publisher.broadcast("e", null), /cannot connect to Redis: timed out/);
      assert.ok(performance.now() - started < 3000);
      await assert.rejects(publisher.broadcast("e", null), /cannot connect to Redis: timed out/);
    } finally {
      silent.close();
    }
  });

  it("connects again after Redis restarted, and reloads the script there", async () => {
    await control.hSet("gw:namespaces", POLICIES);
    const publisher = make();
    const first = await publisher.publishChannel("jobs", "e", 1);
    assert.equal(first.offset, 1);

    await redis.restart(); // empty: no script, no history, no namespaces
    let again: Receipt | undefined;
    for (let attempt = 0; attempt < 50 && again === undefined; attempt++) {
      try {
        again = await publisher.publishChannel("jobs", "e", 2);
      } catch (error) {
        assert.ok(error instanceof PublishFailed, String(error));
        await sleep(100);
      }
    }
    // The cached namespaces still say history: the script runs, and finds none configured.
    assert.deepEqual(again, { ...NONE, channel: "jobs" });
    // The control client reconnects by itself (node-redis' default), its command queued meanwhile.
    assert.deepEqual(await control.scriptExists(SCRIPT_SHA1), [1]);
  });

  it("publishes through a client of the app's (RESP3 here), and leaves it open", async () => {
    await control.hSet("gw:namespaces", POLICIES);
    const client = createClient({ url: redis.url, RESP: 3 });
    await client.connect();
    const publisher = new Publisher({ client, prefix: "gw" });
    const receipt = await publisher.publishUser("42", "e", { x: "✓" });
    await publisher.close();
    assert.equal(receipt.offset, 1);
    assert.equal(typeof receipt.epoch, "string");
    assert.equal(await client.ping(), "PONG", "not closed by the publisher");
    await assert.rejects(publisher.broadcast("e", null), /closed/);
    await client.close();
  });

  it("gives overlapping publishes distinct offsets", async () => {
    await control.hSet("gw:namespaces", POLICIES);
    const publisher = make();
    const receipts = await Promise.all(Array.from({ length: 50 }, (_, i) => publisher.publishChannel("jobs", "e", i)));
    const batch = await publisher.publishBatch([{ channels: ["jobs", "room:1"], event: "e", data: null }]);
    assert.deepEqual(
      receipts.map((r) => r.offset ?? 0).sort((a, b) => a - b),
      Array.from({ length: 50 }, (_, i) => i + 1),
    );
    assert.deepEqual(
      batch.map((r) => r.map((x) => x.offset)),
      [[51, null]],
    );
  });

  it("names a refused SCRIPT LOAD as the cause", async () => {
    await control.hSet("gw:namespaces", POLICIES);
    await control.sendCommand(["ACL", "SETUSER", "noload", "reset", "on", ">pw", "~*", "&*", "+@all", "-script|load"]);
    try {
      const publisher = new Publisher({ url: `redis://noload:pw@127.0.0.1:${redis.port}` });
      publishers.push(publisher);
      assert.deepEqual(await publisher.publishClientType("gui", "e", 1), NONE);
      await assert.rejects(publisher.publishChannel("jobs", "e", 1), (error: unknown) => {
        assert.ok(error instanceof PublishFailed);
        assert.match(error.message, /load the script/);
        assert.match((error.cause as Error).message, /NOPERM/);
        return true;
      });
    } finally {
      await control.sendCommand(["ACL", "DELUSER", "noload"]);
    }
  });
});
