import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { fetchToken, readClaims, refreshDelayMs } from "../../src/token.js";
import { signToken } from "../harness.js";

describe("tokens", () => {
  it("reads exp and the user without verifying", () => {
    const token = signToken("42", 60, "any-secret");
    const claims = readClaims(token);
    assert.equal(claims.userId, "42");
    assert.ok(claims.expiresAtMs !== undefined && Math.abs(claims.expiresAtMs - (Date.now() + 60_000)) < 2000);
  });

  it("reads user_id when there is no sub, numbers as strings", () => {
    const payload = Buffer.from(JSON.stringify({ user_id: 7, exp: 10 })).toString("base64url");
    assert.deepEqual(readClaims(`h.${payload}.s`), { userId: "7", expiresAtMs: 10_000 });
    const utf8 = Buffer.from(JSON.stringify({ sub: "zoë" })).toString("base64url");
    assert.deepEqual(readClaims(`h.${utf8}.s`), { userId: "zoë" });
  });

  it("gives nothing for what is not a JWT", () => {
    assert.deepEqual(readClaims("opaque"), {});
    assert.deepEqual(readClaims("a.b!!.c"), {});
    assert.deepEqual(readClaims(`a.${Buffer.from("[1]").toString("base64url")}.c`), {});
  });

  it("refreshes a quarter of the remaining life before expiry, at least a second and at most a minute before", () => {
    const now = 1_000_000;
    assert.equal(refreshDelayMs(now + 3000, now), 2000);
    assert.equal(refreshDelayMs(now + 8000, now), 6000);
    assert.equal(refreshDelayMs(now + 1000, now), 500);
    assert.equal(refreshDelayMs(now + 3_600_000, now), 3_540_000);
    assert.equal(refreshDelayMs(now + 240_000, now), 180_000);
    assert.equal(refreshDelayMs(now - 1, now), 0);
  });

  it("calls a getter each time, takes a string as it is", async () => {
    let calls = 0;
    const getter = () => Promise.resolve(`t${++calls}`);
    assert.equal(await fetchToken(getter), "t1");
    assert.equal(await fetchToken(getter), "t2");
    assert.equal(await fetchToken(() => "sync"), "sync");
    assert.equal(await fetchToken("fixed"), "fixed");
  });
});
