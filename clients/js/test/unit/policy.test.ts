import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { closeAction } from "../../src/policy.js";

describe("close-code policy", () => {
  it("stops on 1000, 4001, 4003 and 4004", () => {
    for (const code of [1000, 4001, 4003, 4004]) assert.deepEqual(closeAction(code), { kind: "stop" }, String(code));
  });

  it("reconnects at once with a new token on 4002", () => {
    assert.deepEqual(closeAction(4002), { kind: "wait", delayMs: 0 });
  });

  it("waits the advised delay on 4200, backs off without advice", () => {
    assert.deepEqual(closeAction(4200, 1234), { kind: "wait", delayMs: 1234 });
    assert.deepEqual(closeAction(4200, 0), { kind: "wait", delayMs: 0 });
    assert.deepEqual(closeAction(4200), { kind: "backoff" });
    assert.deepEqual(closeAction(4200, Number.NaN), { kind: "backoff" });
    assert.deepEqual(closeAction(4200, -5), { kind: "backoff" });
  });

  it("backs off on lost connections, server errors and limits", () => {
    for (const code of [1001, 1005, 1006, 1009, 1011, 4100, 4101, 4102, 4999, 3000]) {
      assert.deepEqual(closeAction(code), { kind: "backoff" }, String(code));
    }
  });

  it("ignores advice that came before another code", () => {
    assert.deepEqual(closeAction(4004, 500), { kind: "stop" });
    assert.deepEqual(closeAction(1006, 500), { kind: "backoff" });
  });
});
