/** The modes and their urls (`publisher/src/topology.rs`'s rules), and the node-redis options made of them. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { createClient } from "redis";

import { clusterOptions, sentinelOptions, standaloneOptions } from "../../src/publisher/connection.js";
import { parseTopology } from "../../src/publisher/topology.js";
import { InvalidConfiguration, Publisher, REDIS_MODES } from "../../src/publisher.js";

const CONNECT = { timeoutMs: 1234, clientOptions: {} };

describe("publisher topology", () => {
  it("reads one url, seed nodes, or sentinels with their master", () => {
    assert.deepEqual(parseTopology(undefined, "redis://localhost:6379"), { mode: "standalone", urls: ["redis://localhost:6379"], sentinelMaster: null });
    assert.deepEqual(parseTopology("cluster", "redis://10.0.0.1:6379, redis://10.0.0.2:6379,"), {
      mode: "cluster",
      urls: ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"],
      sentinelMaster: null,
    });
    assert.deepEqual(parseTopology("sentinel", "redis://s1:26379,rediss://s2:26379", " mymaster "), {
      mode: "sentinel",
      urls: ["redis://s1:26379", "rediss://s2:26379"],
      sentinelMaster: "mymaster",
    });
    assert.equal(parseTopology("standalone", "redis://a", "").sentinelMaster, null, "an empty master is none");
    assert.deepEqual(REDIS_MODES, ["standalone", "cluster", "sentinel"]);
  });

  it("refuses settings that do not fit together, with a clear InvalidConfiguration", () => {
    const refused: [unknown, unknown, unknown, RegExp][] = [
      ["standalone", "redis://a,redis://b", undefined, /several Redis urls need mode "cluster".*or "sentinel"/],
      [undefined, "redis://a,redis://b", undefined, /several Redis urls/],
      ["sentinel", "redis://s1:26379", undefined, /needs the name of the master.*sentinelMaster/],
      ["sentinel", "redis://s1:26379", "  ", /needs the name of the master/],
      ["cluster", "redis://a", "main", /sentinelMaster is for mode "sentinel" only/],
      ["standalone", "redis://a", "main", /sentinelMaster is for mode "sentinel" only/],
      ["clustered", "redis://a", undefined, /unknown Redis mode "clustered": standalone, cluster or sentinel/],
      ["cluster", " , ", undefined, /empty/],
      ["cluster", "http://a", undefined, /must start with redis:\/\/ or rediss:\/\/, got "http:\/\/a"/],
      ["sentinel", "redis://s1", 7, /sentinelMaster must be a string/],
    ];
    for (const [mode, url, master, message] of refused) {
      assert.throws(
        () => parseTopology(mode, url, master),
        (error: unknown) => {
          assert.ok(error instanceof InvalidConfiguration, String(error));
          assert.equal(error.code, "invalid_configuration");
          assert.match(error.message, message);
          return true;
        },
        `${String(mode)} ${String(url)} ${String(master)}`,
      );
    }
  });

  it("checks the options when the publisher is made, before connecting", () => {
    const cluster = new Publisher({ url: "redis://127.0.0.1:1,redis://127.0.0.1:2", mode: "cluster" });
    assert.equal(cluster.mode, "cluster");
    assert.equal(new Publisher({ url: "redis://127.0.0.1:1" }).mode, "standalone");
    assert.equal(new Publisher({ url: "redis://127.0.0.1:1", mode: "sentinel", sentinelMaster: "m" }).mode, "sentinel");
    assert.throws(() => new Publisher({ url: "redis://a,redis://b" }), InvalidConfiguration);
    assert.throws(() => new Publisher({ url: "redis://a", mode: "sentinel" }), InvalidConfiguration);
    assert.throws(() => new Publisher({ url: "redis://a", sentinelMaster: "m" }), InvalidConfiguration);
    assert.throws(() => new Publisher({ url: "redis://a", mode: "shard" as never }), InvalidConfiguration);
    const client = createClient();
    assert.throws(() => new Publisher({ client, mode: "cluster" }), /standalone mode only/);
    assert.throws(() => new Publisher({ client, sentinelMaster: "m" }), InvalidConfiguration);
    assert.equal(new Publisher({ client }).mode, "standalone");
    assert.throws(() => new Publisher({}), TypeError);
  });

  it("makes node-redis's options: a cluster's nodes get the seeds' credentials and TLS", () => {
    const options = clusterOptions(["redis://10.0.0.1:6379", "rediss://u%40x:p%3Aw@10.0.0.2:6380"], {
      timeoutMs: 1234,
      clientOptions: { socket: { ca: "CA" }, name: "worker", url: "ignored", commandOptions: { abortSignal: null } },
    });
    assert.deepEqual(options, {
      rootNodes: [{ url: "redis://10.0.0.1:6379" }, { url: "rediss://u%40x:p%3Aw@10.0.0.2:6380" }],
      defaults: {
        username: "u@x",
        password: "p:w",
        name: "worker",
        disableOfflineQueue: true,
        socket: { connectTimeout: 1234, reconnectStrategy: false, tls: true, ca: "CA" },
      },
      RESP: 2,
      commandOptions: { timeout: 1234, abortSignal: null },
    });
  });

  it("makes node-redis's options: the sentinels with their urls' credentials, the master with clientOptions", () => {
    const options = sentinelOptions(["redis://:secret@s1:26379", "redis://[::1]"], "mymaster", {
      timeoutMs: 1234,
      clientOptions: { password: "master-secret", database: 2 },
    });
    assert.deepEqual(options, {
      name: "mymaster",
      sentinelRootNodes: [
        { host: "s1", port: 26379 },
        { host: "::1", port: 6379 },
      ],
      sentinelClientOptions: { password: "secret", socket: { connectTimeout: 1234 } },
      nodeClientOptions: { password: "master-secret", database: 2, socket: { connectTimeout: 1234 } },
      RESP: 2,
      reserveClient: true,
      commandOptions: { timeout: 1234 },
    });
    assert.equal(standaloneOptions("redis://a", CONNECT)["url"], "redis://a");
  });
});
