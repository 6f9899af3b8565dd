import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { byteLength, OfflineQueue } from "../../src/queue.js";

describe("offline queue", () => {
  it("keeps entries in order", () => {
    const queue = new OfflineQueue<string>();
    for (const item of ["a", "b", "c"]) assert.deepEqual(queue.offer(item, 1), { accepted: true, dropped: [] });
    assert.equal(queue.size, 3);
    assert.equal(queue.bytes, 3);
    assert.deepEqual(queue.drain(), ["a", "b", "c"]);
    assert.equal(queue.size, 0);
    assert.equal(queue.bytes, 0);
  });

  it("drops the oldest when over its count", () => {
    const queue = new OfflineQueue<number>({ maxEntries: 3 });
    for (const item of [1, 2, 3]) queue.offer(item, 10);
    assert.deepEqual(queue.offer(4, 10), { accepted: true, dropped: [1] });
    assert.deepEqual(queue.drain(), [2, 3, 4]);
  });

  it("drops as many of the oldest as the bytes need", () => {
    const queue = new OfflineQueue<string>({ maxEntries: 100, maxBytes: 100 });
    queue.offer("a", 40);
    queue.offer("b", 40);
    queue.offer("c", 10);
    assert.deepEqual(queue.offer("d", 90), { accepted: true, dropped: ["a", "b"] });
    assert.equal(queue.bytes, 100);
    assert.deepEqual(queue.offer("e", 10), { accepted: true, dropped: ["c"] });
    assert.deepEqual(queue.drain(), ["d", "e"]);
  });

  it("refuses an entry larger than the whole queue, keeping the others", () => {
    const queue = new OfflineQueue<string>({ maxBytes: 50 });
    queue.offer("small", 10);
    assert.deepEqual(queue.offer("huge", 51), { accepted: false, dropped: [] });
    assert.deepEqual(queue.drain(), ["small"]);
  });

  it("is off with maxEntries 0", () => {
    const queue = new OfflineQueue<string>({ maxEntries: 0 });
    assert.equal(queue.offer("x", 1).accepted, false);
    assert.equal(queue.size, 0);
  });

  it("removes matching entries", () => {
    const queue = new OfflineQueue<number>();
    for (const item of [1, 2, 3, 4]) queue.offer(item, 5);
    assert.deepEqual(queue.remove((n) => n % 2 === 0), [2, 4]);
    assert.equal(queue.bytes, 10);
    assert.deepEqual(queue.drain(), [1, 3]);
  });

  it("counts bytes as UTF-8", () => {
    assert.equal(byteLength("abc"), 3);
    assert.equal(byteLength("é"), 2);
    assert.equal(byteLength("📷"), 4);
  });
});
