import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { afterAttempt } from "../../src/fallback.js";
import { httpCloseCode } from "../../src/policy.js";
import { siblingUrl } from "../../src/transport.js";

describe("falling back to the next transport", () => {
  it("moves on after two failures in a row to get to connection_established", () => {
    const first = afterAttempt(0, { established: false, code: 1006 });
    assert.deepEqual(first, { failures: 1, fallBack: false });
    assert.deepEqual(afterAttempt(first.failures, { established: false, code: 1006 }), { failures: 0, fallBack: true });
  });

  it("moves on at once when an HTTP status refused the transport", () => {
    for (const status of [400, 403, 404, 405, 426]) {
      assert.deepEqual(afterAttempt(0, { established: false, code: 1006, httpStatus: status }), { failures: 0, fallBack: true }, String(status));
    }
  });

  it("forgets the failures once a connection is established", () => {
    assert.deepEqual(afterAttempt(1, { established: true, code: 1006 }), { failures: 0, fallBack: false });
  });

  it("does not count what says nothing about the transport", () => {
    // Closes the server chose (a refused token, a drain, the user's connection cap) …
    for (const code of [4001, 4002, 4102, 4200, 1011]) {
      assert.deepEqual(afterAttempt(1, { established: false, code }), { failures: 1, fallBack: false }, String(code));
    }
    // … a busy, draining or rate-limiting server, a token refused over HTTP …
    for (const status of [401, 408, 429, 503]) {
      assert.deepEqual(afterAttempt(1, { established: false, code: 1006, httpStatus: status }), { failures: 1, fallBack: false }, String(status));
    }
    // … and a browser that is offline.
    assert.deepEqual(afterAttempt(1, { established: false, code: 1006, offline: true }), { failures: 1, fallBack: false });
  });

  it("counts a gateway error or a lost connection as a failure", () => {
    assert.deepEqual(afterAttempt(0, { established: false, code: 1006, httpStatus: 502 }), { failures: 1, fallBack: false });
  });
});

describe("the HTTP transports' URLs", () => {
  it("are beside the WebSocket URL", () => {
    assert.equal(siblingUrl("wss://app.example.com/ws", "sse"), "https://app.example.com/sse");
    assert.equal(siblingUrl("ws://127.0.0.1:8080/ws", "poll"), "http://127.0.0.1:8080/poll");
    assert.equal(siblingUrl("WSS://host/ws", "sse"), "https://host/sse");
    assert.equal(siblingUrl("https://host/ws", "sse"), "https://host/sse");
    assert.equal(siblingUrl("wss://host/realtime/ws?format=json#x", "poll"), "https://host/realtime/poll");
    assert.equal(siblingUrl("wss://host", "sse"), "https://host/sse");
    assert.equal(siblingUrl("wss://host/", "sse"), "https://host/sse");
  });

  it("stay relative for a relative WebSocket URL (the page's origin)", () => {
    assert.equal(siblingUrl("/ws", "sse"), "/sse");
    assert.equal(siblingUrl("/gateway/ws", "poll"), "/gateway/poll");
  });
});

describe("HTTP refusals as closes", () => {
  it("maps a refused token to 4001, an expired one on an established connection to 4002", () => {
    assert.equal(httpCloseCode(401, "signature", false), 4001);
    assert.equal(httpCloseCode(401, "expired", false), 4001, "a first request with an expired token: as the WebSocket's auth frame");
    assert.equal(httpCloseCode(401, "expired", true), 4002);
    assert.equal(httpCloseCode(401, undefined, true), 4001);
  });

  it("maps the user's connection cap to 4102 and the rest to 1006", () => {
    assert.equal(httpCloseCode(429, "too_many_connections", false), 4102);
    for (const status of [400, 403, 404, 500, 502, 503]) assert.equal(httpCloseCode(status, undefined, true), 1006, String(status));
  });
});
