/**
 * Tokens: sent in the `auth` frame; a getter's tokens replaced with `refresh` before they
 * expire, so the connection outlives many of them; a fixed token that expires is closed with
 * 4002, and the reconnect with it refused (4001), after which the client stops for good.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import type { GatewayClient } from "../../src/index.js";
import { Cluster, signToken, sleep, waitFor } from "../harness.js";
import { connected, nodeClient, record, sequence } from "./helpers.js";

describe("tokens", () => {
  let cluster: Cluster;
  const clients: GatewayClient[] = [];

  before(async () => {
    // No leeway: a token is refused the second it expires.
    cluster = await Cluster.start({ replicas: 1, env: { GATEWAY_JWT_LEEWAY: "0s" } });
  });
  after(async () => {
    for (const client of clients) client.close();
    await cluster.stop();
  });

  it("keeps one connection across several token expiries by refreshing", { timeout: 90_000 }, async () => {
    let issued = 0;
    const client = nodeClient({
      url: cluster.url,
      token: () => {
        issued++;
        return Promise.resolve(signToken("refresher", 3));
      },
    });
    clients.push(client);
    const seen = record(client);
    let subscribed = false;
    client.subscribe("after-refresh", { onSubscribed: () => (subscribed = true) });
    client.connect();
    await connected(client);
    await waitFor("subscribed", () => subscribed);
    const clientId = client.connection?.clientId;

    await sleep(10_000); // three to five lifetimes of a 3 s token

    assert.equal(client.state, "connected");
    assert.equal(client.connection?.clientId, clientId, "still the first connection");
    assert.deepEqual(seen.disconnects, [], "never disconnected");
    assert.ok(issued >= 4, `the getter ran before each expiry (${issued} tokens)`);
    await cluster.publish({ channel: "after-refresh", event: "still_here", data: { i: 1 } });
    await waitFor("the event", () => sequence(seen.events, "still_here").length === 1);
  });

  it("without a way to refresh, expires with 4002, is refused with 4001 and stops", { timeout: 90_000 }, async () => {
    const client = nodeClient({ url: cluster.url, token: signToken("fixed", 2) });
    clients.push(client);
    const seen = record(client);
    client.connect();
    await connected(client);
    await waitFor("closed", () => client.state === "closed", 15_000);
    const codes = seen.disconnects.map((d) => d.code);
    // The gateway still accepts a token during the second of its `exp` (and then expires it at
    // once), so a reconnect within that second is closed with 4002 again: those back off.
    assert.equal(codes[0], 4002, `expired first: ${codes.join(",")}`);
    assert.equal(codes.at(-1), 4001, `then the same token refused: ${codes.join(",")}`);
    assert.ok(codes.length <= 4, `no reconnect storm: ${codes.join(",")}`);
    assert.ok(codes.slice(0, -1).every((code) => code === 4002));
    assert.equal(seen.disconnects[0]?.reconnectInMs, 0, "4002 reconnects at once");
    for (const repeat of seen.disconnects.slice(1, -1)) {
      assert.ok((repeat.reconnectInMs ?? 0) >= 500, "a repeated 4002 backs off");
    }
    assert.equal(seen.disconnects.at(-1)?.reconnectInMs, undefined, "4001 stops");
  });

  it("stops on a bad token (4001) without reconnecting", { timeout: 90_000 }, async () => {
    const client = nodeClient({ url: cluster.url, token: signToken("mallory", 3600, "not-the-secret") });
    clients.push(client);
    const seen = record(client);
    let tokenCalls = 0;
    const counting = nodeClient({
      url: cluster.url,
      token: () => {
        tokenCalls++;
        return signToken("mallory", 3600, "not-the-secret");
      },
    });
    clients.push(counting);
    const queuedPublish = assert.rejects(client.publish("room:1", "typing", { on: true }), { name: "GatewayError", code: "closed" });
    client.connect();
    counting.connect();
    await waitFor("closed", () => client.state === "closed" && counting.state === "closed", 15_000);
    await queuedPublish;
    await sleep(3000); // a reconnect attempt would have started by now
    assert.deepEqual(seen.states, ["connecting", "closed"]);
    assert.equal(seen.disconnects.length, 1);
    assert.equal(seen.disconnects[0]?.code, 4001);
    assert.equal(tokenCalls, 1, "one attempt only");
    assert.equal(counting.state, "closed");
  });
});
