import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { advance, Positions } from "../../src/positions.js";

describe("positions", () => {
  it("drops events at or below the last offset of the same epoch", () => {
    const positions = new Positions();
    positions.set("jobs", { offset: 41, epoch: "e1" });
    const delivered = [40, 41, 42, 42, 43, 41, 44].filter((offset) => positions.accept("jobs", { offset, epoch: "e1" }));
    assert.deepEqual(delivered, [42, 43, 44]);
    assert.deepEqual(positions.get("jobs"), { offset: 44, epoch: "e1" });
  });

  it("takes the first event of a channel without a position", () => {
    const positions = new Positions();
    assert.equal(positions.accept("jobs", { offset: 7, epoch: "e" }), true);
    assert.deepEqual(positions.get("jobs"), { offset: 7, epoch: "e" });
  });

  it("starts over in a new epoch", () => {
    const positions = new Positions();
    positions.set("jobs", { offset: 100, epoch: "old" });
    assert.equal(positions.accept("jobs", { offset: 1, epoch: "new" }), true);
    assert.deepEqual(positions.get("jobs"), { offset: 1, epoch: "new" });
    assert.equal(positions.accept("jobs", { offset: 1, epoch: "new" }), false);
  });

  it("passes events of channels without history, and keeps no position for them", () => {
    assert.deepEqual(advance(undefined, {}), { fresh: true, position: undefined });
    const positions = new Positions();
    assert.equal(positions.accept("chat", {}), true);
    assert.equal(positions.accept("chat", {}), true);
    assert.equal(positions.get("chat"), undefined);
  });

  it("keeps channels apart", () => {
    const positions = new Positions();
    assert.equal(positions.accept("a", { offset: 5, epoch: "x" }), true);
    assert.equal(positions.accept("b", { offset: 5, epoch: "x" }), true);
    assert.equal(positions.accept("a", { offset: 5, epoch: "x" }), false);
  });

  it("gives since for the channels that have a position, copied", () => {
    const positions = new Positions();
    positions.set("a", { offset: 3, epoch: "x" });
    positions.set("c", { offset: 9, epoch: "y" });
    const since = positions.since(["a", "b", "c"]);
    assert.deepEqual(since, { a: { offset: 3, epoch: "x" }, c: { offset: 9, epoch: "y" } });
    const copied = since["a"];
    assert.ok(copied);
    copied.offset = 99;
    assert.deepEqual(positions.get("a"), { offset: 3, epoch: "x" });
    assert.equal(positions.since(["b"]), undefined);
    positions.delete("a");
    assert.equal(positions.get("a"), undefined);
  });
});
