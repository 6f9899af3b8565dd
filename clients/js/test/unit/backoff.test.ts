import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Backoff, backoffDelay } from "../../src/backoff.js";

describe("backoff", () => {
  it("grows exponentially from 0.5 s and never passes 20 s", () => {
    const highest = (attempt: number) => backoffDelay(attempt, {}, () => 0.999999);
    const lowest = (attempt: number) => backoffDelay(attempt, {}, () => 0);
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map(highest), [1000, 1500, 2500, 4500, 8500, 16500, 20000, 20000]);
    for (let attempt = 0; attempt < 100; attempt++) assert.equal(lowest(attempt), 500);
    assert.equal(highest(1000), 20000, "huge attempt counts do not overflow");
  });

  it("spreads clients over the whole window (full jitter)", () => {
    const delays = Array.from({ length: 2000 }, () => backoffDelay(5));
    const min = Math.min(...delays);
    const max = Math.max(...delays);
    assert.ok(min >= 500 && min < 1500, `min ${min}`);
    assert.ok(max <= 16500 && max > 15000, `max ${max}`);
    const buckets = new Array<number>(4).fill(0);
    for (const delay of delays) {
      const bucket = Math.min(3, Math.floor(((delay - 500) / 16000) * 4));
      buckets[bucket] = (buckets[bucket] ?? 0) + 1;
    }
    for (const count of buckets) assert.ok(count > 350, `uniform enough: ${buckets.join(",")}`);
  });

  it("takes its bounds from options", () => {
    assert.equal(backoffDelay(10, { minDelayMs: 100, maxDelayMs: 300 }, () => 0.999999), 300);
    assert.equal(backoffDelay(0, { minDelayMs: 100, maxDelayMs: 300 }, () => 0), 100);
  });

  it("counts attempts until reset", () => {
    const backoff = new Backoff({}, () => 0.999999);
    assert.deepEqual([backoff.next(), backoff.next(), backoff.next()], [1000, 1500, 2500]);
    assert.equal(backoff.attempts, 3);
    backoff.reset();
    assert.equal(backoff.next(), 1000);
  });
});
