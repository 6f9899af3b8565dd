import assert from "node:assert/strict";
import { describe, it } from "node:test";

import WebSocket from "ws";

import { GatewayClient, GatewayError } from "../../src/index.js";

describe("GatewayClient without a connection", () => {
  it("needs a WebSocket implementation where there is no global one", () => {
    // Node 22 and browsers have one: hide it for this test.
    const global = globalThis as { WebSocket?: unknown };
    const saved = global.WebSocket;
    delete global.WebSocket;
    try {
      assert.throws(() => new GatewayClient({ url: "ws://127.0.0.1:1/ws", token: "t" }), /no WebSocket implementation/);
    } finally {
      if (saved !== undefined) global.WebSocket = saved;
    }
  });

  it("refuses a transport list with none built in", () => {
    assert.throws(() => new GatewayClient({ url: "ws://127.0.0.1:1/ws", token: "t", WebSocket, transports: [] }), /none of the transports/);
    const unknown = ["carrier-pigeon"] as unknown as ["poll"];
    assert.throws(() => new GatewayClient({ url: "ws://127.0.0.1:1/ws", token: "t", WebSocket, transports: unknown }), /none of the transports/);
  });

  it("takes SSE or poll alone, without a WebSocket implementation", () => {
    const global = globalThis as { WebSocket?: unknown };
    const saved = global.WebSocket;
    delete global.WebSocket;
    try {
      const client = new GatewayClient({ url: "ws://127.0.0.1:1/ws", token: "t", transports: ["sse", "poll"] });
      assert.equal(client.state, "disconnected");
    } finally {
      if (saved !== undefined) global.WebSocket = saved;
    }
  });

  it("starts disconnected, queues until connect(), and rejects what is queued on close()", async () => {
    const client = new GatewayClient({ url: "ws://127.0.0.1:1/ws", token: "t", WebSocket });
    const states: string[] = [];
    client.on("state", (state) => states.push(state));
    assert.equal(client.state, "disconnected");
    assert.equal(client.transport, undefined);
    const queued = client.publish("room:1", "typing", {});
    await assert.rejects(client.history("jobs"), { code: "disconnected" });
    client.close();
    await assert.rejects(queued, (error: unknown) => error instanceof GatewayError && error.code === "closed");
    await assert.rejects(client.publish("room:1", "typing", {}), { code: "closed" });
    assert.deepEqual(states, ["closed"]);
  });

  it("removes a listener with the function on() returns, and with off()", () => {
    const client = new GatewayClient({ url: "ws://127.0.0.1:1/ws", token: "t", WebSocket });
    const seen: string[] = [];
    const listener = (state: string) => seen.push(state);
    const stop = client.on("state", listener);
    client.on("state", (state) => seen.push(`second:${state}`));
    stop();
    client.off("state", listener);
    client.close();
    assert.deepEqual(seen, ["second:closed"]);
  });
});
