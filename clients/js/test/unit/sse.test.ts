import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { SseParser } from "../../src/sse.js";

describe("the event-stream parser", () => {
  it("gives messages with their id, and comments", () => {
    const parser = new SseParser();
    assert.deepEqual(parser.push('retry: 2000\nid: 1.abc\ndata: {"type":"connection_established"}\n\n: ping\n\n'), [
      { data: '{"type":"connection_established"}', id: "1.abc" },
      { comment: "ping" },
    ]);
  });

  it("joins messages split across chunks anywhere", () => {
    const text = 'id: c1\ndata: {"a":1}\n\nid: c2\ndata: {"b":2}\n\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const parser = new SseParser();
      const items = [...parser.push(text.slice(0, cut)), ...parser.push(text.slice(cut))];
      assert.deepEqual(
        items,
        [
          { data: '{"a":1}', id: "c1" },
          { data: '{"b":2}', id: "c2" },
        ],
        `cut at ${cut}`,
      );
    }
  });

  it("takes CRLF, several data lines, a field without a space and ignores other fields", () => {
    const parser = new SseParser();
    assert.deepEqual(parser.push("event: x\r\ndata:one\r\ndata: two\r\n\r\ndata\n\n"), [
      { data: "one\ntwo", id: undefined },
      { data: "", id: undefined },
    ]);
  });

  it("keeps the last id for the messages that follow, and dispatches nothing without data", () => {
    const parser = new SseParser();
    assert.deepEqual(parser.push("id: 7\n\ndata: x\n\n"), [{ data: "x", id: "7" }]);
  });
});
