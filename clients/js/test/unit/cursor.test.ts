import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { decodeCursor, encodeCursor } from "../../src/cursor.js";

const base64url = (text: string) => Buffer.from(text).toString("base64url");

describe("the HTTP transports' cursor", () => {
  it("is 1. and the base64url of channel → [offset, epoch], as the gateway writes it", () => {
    const cursor = encodeCursor({ "#42": { offset: 3, epoch: "e-1" }, jobs: { offset: 41, epoch: "1732" } });
    assert.equal(cursor, `1.${base64url('{"#42":[3,"e-1"],"jobs":[41,"1732"]}')}`);
    assert.doesNotMatch(cursor, /[+/=]/, "url-safe, no padding");
    assert.equal(encodeCursor({}), `1.${base64url("{}")}`);
  });

  it("decodes what it encodes, and the gateway's cursors", () => {
    const positions = { "notifications#42,43": { offset: 0, epoch: "x" }, "room:1": { offset: 9007199254740991, epoch: "e" } };
    assert.deepEqual(decodeCursor(encodeCursor(positions)), positions);
    // Written by the gateway (gateway/src/fallback/cursor.rs): a BTreeMap, so sorted.
    assert.deepEqual(decodeCursor(`1.${base64url('{"a":[1,"e"],"b":[2,"e"]}')}`), {
      a: { offset: 1, epoch: "e" },
      b: { offset: 2, epoch: "e" },
    });
  });

  it("gives nothing for what is not a cursor", () => {
    for (const bad of ["", "2.e30", "1.***", `1.${base64url("[1,2]")}`, `1.${base64url('{"a":[-1,"e"]}')}`, `1.${base64url('{"a":{"offset":1}}')}`, `1.${base64url('{"a":[1]}')}`, `1.${base64url('{"a":[1.5,"e"]}')}`]) {
      assert.equal(decodeCursor(bad), undefined, bad);
    }
  });
});
