import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { decode, encode } from "@msgpack/msgpack";

import { json } from "../../src/codec.js";
import { GatewayClient as CoreClient, GatewayError as CoreError, type TransportHandlers, WebSocketTransport } from "../../src/index.js";
import { GatewayClient, GatewayError, msgpack } from "../../src/msgpack.js";

/** A WebSocket that records what the transport does with it. */
class FakeSocket {
  static opened: FakeSocket[] = [];
  readyState = 1;
  binaryType = "blob";
  readonly sent: unknown[] = [];
  onopen: unknown = null;
  onmessage: ((message: { data: unknown }) => void) | null = null;
  onclose: unknown = null;
  onerror: unknown = null;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {
    FakeSocket.opened.push(this);
  }

  send(data: string | Uint8Array): void {
    this.sent.push(data);
  }

  close(): void {
    this.readyState = 3;
  }

  receive(data: unknown): void {
    this.onmessage?.({ data });
  }
}

function open(codec = json): { socket: FakeSocket; transport: WebSocketTransport; frames: unknown[] } {
  const frames: unknown[] = [];
  const handlers: TransportHandlers = {
    onOpen: () => {},
    onFrame: (frame) => frames.push(frame),
    onAlive: () => {},
    onCursor: () => {},
    onClose: () => {},
  };
  const transport = new WebSocketTransport(FakeSocket, { url: "ws://gateway.test/ws", request: () => assert.fail("not one-way") }, handlers, codec);
  const socket = FakeSocket.opened.at(-1);
  assert.ok(socket);
  return { socket, transport, frames };
}

/** An ArrayBuffer holding exactly `bytes`, as a browser's or `ws`'s binaryType "arraybuffer" gives. */
function arrayBuffer(bytes: Uint8Array): ArrayBuffer {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return copy.buffer;
}

const EVENT = {
  type: "job_progress",
  channel: "jobs",
  offset: 42,
  epoch: "e1",
  timestamp: "2026-11-22T10:00:01.123Z",
  data: { job_id: "abc", progress: 45.5, steps: [1, -2, "x", null, true, { deep: { empty: {}, list: [] } }], note: "héllo ✓ 😀" },
};

describe("the WebSocket's encoding", () => {
  it("JSON: asks for no subprotocol, sends and reads text frames", () => {
    const { socket, transport, frames } = open();
    assert.equal(socket.protocols, undefined);
    assert.equal(socket.binaryType, "blob", "left as it is");
    transport.send({ type: "ping", id: 1 });
    assert.deepEqual(socket.sent, ['{"type":"ping","id":1}']);
    socket.receive(JSON.stringify(EVENT));
    socket.receive("{not json");
    assert.deepEqual(frames, [EVENT]);
  });

  it("MessagePack: asks for gateway.msgpack, sends binary maps, reads binary frames and JSON text ones", () => {
    const { socket, transport, frames } = open(msgpack);
    assert.equal(socket.protocols, "gateway.msgpack");
    assert.equal(socket.binaryType, "arraybuffer");
    transport.send({ type: "subscribe", id: 2, channels: ["jobs"], since: { jobs: { offset: 41, epoch: "e1" } } });
    const sent = socket.sent[0];
    assert.ok(sent instanceof Uint8Array, "a binary frame");
    assert.deepEqual(decode(sent), { type: "subscribe", id: 2, channels: ["jobs"], since: { jobs: { offset: 41, epoch: "e1" } } });

    socket.receive(arrayBuffer(encode(EVENT)));
    socket.receive(Buffer.from(encode({ type: "pong", id: 3 }))); // a Uint8Array view, as ws's nodebuffer
    socket.receive(JSON.stringify({ type: "pong", id: 4 })); // text frames are JSON in every format
    socket.receive(arrayBuffer(new Uint8Array([0xc1]))); // never used in MessagePack: dropped
    socket.receive(arrayBuffer(encode(EVENT).subarray(0, 20))); // truncated: dropped
    assert.deepEqual(frames, [EVENT, { type: "pong", id: 3 }, { type: "pong", id: 4 }]);
  });

  it("reads what the gateway writes as JSON.parse reads its JSON form, big integers included", () => {
    // As rmp_serde writes {"n":-129,"big":18446744073709551615,"f":45.5,"ok":true,"none":null,"list":[1,"é"]}:
    // a map of 6, negative int16, uint64, float64, true, nil, an array of a fixint and a 2-byte string.
    const bytes = new Uint8Array([
      0x86,
      0xa1, 0x6e, 0xd1, 0xff, 0x7f,
      0xa3, 0x62, 0x69, 0x67, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
      0xa1, 0x66, 0xcb, 0x40, 0x46, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00,
      0xa2, 0x6f, 0x6b, 0xc3,
      0xa4, 0x6e, 0x6f, 0x6e, 0x65, 0xc0,
      0xa4, 0x6c, 0x69, 0x73, 0x74, 0x92, 0x01, 0xa2, 0xc3, 0xa9,
    ]);
    assert.deepEqual(
      msgpack.decode(bytes),
      JSON.parse('{"n":-129,"big":18446744073709551615,"f":45.5,"ok":true,"none":null,"list":[1,"é"]}'),
    );
  });

  it("sends a frame as its JSON form: Dates as strings, undefined left out, NaN as null", () => {
    const data = { at: new Date(0), gone: undefined, nan: Number.NaN, list: [undefined, 1], nested: { toJSON: () => "custom" } };
    const frame = { type: "publish" as const, id: 5, channel: "room:1", event: "typing", data };
    const sent = msgpack.encode(frame);
    assert.ok(sent instanceof Uint8Array);
    assert.deepEqual(decode(sent), JSON.parse(JSON.stringify(frame)));
    assert.deepEqual(decode(sent), {
      type: "publish",
      id: 5,
      channel: "room:1",
      event: "typing",
      data: { at: "1970-01-01T00:00:00.000Z", nan: null, list: [null, 1], nested: "custom" },
    });
    // What JSON cannot send, MessagePack does not either.
    assert.throws(() => msgpack.encode({ type: "publish", channel: "room:1", event: "big", data: 1n }), TypeError);
  });
});

describe("format", () => {
  it("the core refuses \"msgpack\" by name and says where it is", () => {
    const format = "msgpack" as unknown as "json";
    assert.throws(() => new CoreClient({ url: "ws://127.0.0.1:1/ws", token: "t", WebSocket: FakeSocket, format }), /@gateway\/client\/msgpack/);
  });

  it("the msgpack entry's client takes \"msgpack\", and is the core's client", async () => {
    const client = new GatewayClient({ url: "ws://127.0.0.1:1/ws", token: "t", WebSocket: FakeSocket, format: "msgpack" });
    assert.ok(client instanceof CoreClient);
    assert.equal(GatewayError, CoreError, "the entry re-exports the core");
    client.connect();
    await new Promise((resolve) => setTimeout(resolve, 0)); // the token is fetched first
    const socket = FakeSocket.opened.at(-1);
    assert.ok(socket, "a socket opened");
    assert.equal(socket.protocols, "gateway.msgpack");
    assert.equal(socket.binaryType, "arraybuffer");
    client.close();
  });

  it("the core takes the msgpack codec as format, and JSON by default", async () => {
    FakeSocket.opened = [];
    for (const format of [msgpack, "json" as const, undefined]) {
      const client = new CoreClient({ url: "ws://127.0.0.1:1/ws", token: "t", WebSocket: FakeSocket, format });
      client.connect();
      await new Promise((resolve) => setTimeout(resolve, 0));
      client.close();
    }
    assert.deepEqual(
      FakeSocket.opened.map((socket) => socket.protocols),
      ["gateway.msgpack", undefined, undefined],
    );
  });
});
