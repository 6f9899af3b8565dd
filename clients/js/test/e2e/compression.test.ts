/**
 * permessage-deflate against a real gateway with `GATEWAY_WS_COMPRESSION=on`, behind nginx, with
 * a tap on the wire that reads every frame's header. `ws`, the WebSocket the SDK uses on Node,
 * offers the extension by itself: the server agrees (no context takeover either way), sends its
 * large frames compressed and its small ones plain, and the SDK's events arrive intact and in
 * order, in JSON and in MessagePack. A large publish from the SDK goes compressed; so does a
 * message in continuation frames with a ping between them; one that inflates past the message
 * limit is closed with 1009. A client that offers nothing, or a gateway with compression off,
 * gets plain frames only.
 */

import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";

import WebSocket from "ws";

import { GatewayClient as CoreClient, type GatewayEvent } from "../../src/index.js";
import { GatewayClient } from "../../src/msgpack.js";
import { Cluster, signToken, waitFor } from "../harness.js";
import { type TappedUpgrade, WireTap } from "../wiretap.js";
import { range, record, sequence } from "./helpers.js";

const AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/** `GATEWAY_WS_COMPRESSION_MIN_BYTES`' default: shorter server frames go plain. */
const MIN_BYTES = 256;

/** The `extensions` each socket the SDK opened was given by the server, in order. */
let negotiated: string[] = [];

/** `ws`, as the SDK uses it, noting what each socket negotiated. */
class RecordingWebSocket extends WebSocket {
  constructor(url: string, protocols?: string | string[]) {
    super(url, protocols);
    this.on("open", () => negotiated.push(this.extensions));
  }
}

/** About 4 KB of JSON that compresses as real payloads do: repeated keys, varied values, non-ASCII text. */
function largeData(i: number): { i: number; rows: { k: number; label: string; score: number; tags: string[] }[] } {
  return {
    i,
    rows: Array.from({ length: 48 }, (_, k) => ({
      k,
      label: `photo ${i}-${k} ✓ über`,
      score: Math.round(Math.sin(i * 48 + k) * 1e6) / 1e6,
      tags: ["beach", "2026", String((i * k) % 7)],
    })),
  };
}
const LARGE_BYTES = Buffer.byteLength(JSON.stringify(largeData(1)));

/** Event `i`'s data: large for odd `i`, small for even. */
function dataOf(i: number): unknown {
  return i % 2 === 1 ? largeData(i) : { i };
}

function isMsgpack(upgrade: TappedUpgrade): boolean {
  return upgrade.requestHeader("sec-websocket-protocol") === "gateway.msgpack";
}

/** What the server sent on `upgrade`: its compressed and its plain data frames. */
function serverFrames(upgrade: TappedUpgrade): { compressed: number[]; plain: number[] } {
  const frames = upgrade.data("server");
  return { compressed: frames.filter((f) => f.compressed).map((f) => f.length), plain: frames.filter((f) => !f.compressed).map((f) => f.length) };
}

type Frame = Record<string, unknown> & { type: string };

interface RawClient {
  socket: WebSocket;
  /** Every text frame the server sent, parsed. */
  frames: Frame[];
  /** The close code, once closed. */
  closed: Promise<number>;
}

function text(data: WebSocket.RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString("utf8");
  return Buffer.isBuffer(data) ? data.toString("utf8") : Buffer.from(data).toString("utf8");
}

/** A bare `ws` client speaking the protocol itself, connected and past `connection_established`. */
async function rawClient(url: string, user: string, options: WebSocket.ClientOptions = {}): Promise<RawClient> {
  const socket = new WebSocket(`${url}?token=${signToken(user)}`, options);
  const frames: Frame[] = [];
  socket.on("message", (data) => frames.push(JSON.parse(text(data)) as Frame));
  socket.on("error", () => undefined); // the close that follows says what happened
  const closed = new Promise<number>((resolve) => socket.once("close", (code) => resolve(code)));
  await waitFor("connection_established", () => frames.some((f) => f.type === "connection_established"));
  return { socket, frames, closed };
}

async function rawSubscribe(client: RawClient, channel: string): Promise<void> {
  client.socket.send(JSON.stringify({ type: "subscribe", id: `sub-${channel}`, channels: [channel] }));
  await waitFor(`${channel} subscribed`, () => client.frames.some((f) => f.type === "subscribed" && f["id"] === `sub-${channel}`));
}

describe("permessage-deflate with the gateway's compression on", () => {
  let cluster: Cluster;
  let tap: WireTap;
  const clients: CoreClient[] = [];
  const sockets: WebSocket[] = [];

  before(async () => {
    cluster = await Cluster.start({ replicas: 1, env: { GATEWAY_WS_COMPRESSION: "on" } });
  });
  after(async () => {
    await cluster.stop();
  });
  beforeEach(async () => {
    tap = await WireTap.start(cluster.nginx.port);
    negotiated = [];
  });
  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    for (const socket of sockets.splice(0)) socket.terminate();
    await tap.stop();
  });

  it("the SDK negotiates it in JSON and MessagePack and gets large and small events intact and in order", { timeout: 90_000 }, async () => {
    assert.ok(LARGE_BYTES > 4000 && LARGE_BYTES < 6000, `a large event is ${LARGE_BYTES} bytes`);
    const json = new CoreClient({ url: tap.url, token: signToken("dz-json"), WebSocket: RecordingWebSocket });
    const packed = new GatewayClient({ url: tap.url, token: signToken("dz-msgpack"), WebSocket: RecordingWebSocket, format: "msgpack" });
    clients.push(json, packed);
    const seen = new Map<CoreClient, GatewayEvent[]>();
    let subscribed = 0;
    for (const client of [json, packed]) {
      seen.set(client, record(client).events);
      client.subscribe("dz", { onSubscribed: () => subscribed++ });
      client.connect();
    }
    await waitFor("both subscribed", () => subscribed === 2);

    for (let i = 1; i <= 20; i++) await cluster.publish({ channel: "dz", event: "photo:updated", data: dataOf(i) });
    await waitFor("20 events on both", () => [...seen.values()].every((events) => events.length === 20));

    for (const [client, events] of seen) {
      const format = client === json ? "JSON" : "MessagePack";
      assert.deepEqual(sequence(events, "photo:updated", "dz"), range(1, 20), `${format}: each event once, in order`);
      assert.deepEqual(
        events.map((e) => e.data),
        range(1, 20).map(dataOf),
        `${format}: every event intact`,
      );
      assert.deepEqual(
        events.map((e) => e.offset),
        range(1, 20),
      );
    }
    assert.deepEqual(negotiated, ["permessage-deflate", "permessage-deflate"], "each SDK socket negotiated it");

    assert.equal(tap.upgrades.length, 2);
    for (const upgrade of tap.upgrades) {
      assert.match(upgrade.requestHeader("sec-websocket-extensions") ?? "", /^permessage-deflate\b/, "ws offered it");
      assert.equal(upgrade.header("sec-websocket-extensions"), AGREED);
      const { compressed, plain } = serverFrames(upgrade);
      assert.ok(compressed.length >= 10, `${compressed.length} compressed frames: at least the 10 large events`);
      assert.ok(
        compressed.every((length) => length < LARGE_BYTES / 2),
        `compressed to less than half: ${compressed.join(", ")} bytes`,
      );
      assert.ok(plain.length >= 10, `${plain.length} plain frames: at least the 10 small events`);
      assert.ok(
        plain.every((length) => length < MIN_BYTES),
        `every plain frame under ${MIN_BYTES} bytes: ${plain.join(", ")}`,
      );
      const opcodes = new Set(upgrade.data("server").map((f) => f.opcode));
      assert.deepEqual([...opcodes], [isMsgpack(upgrade) ? 2 : 1], "binary frames for MessagePack, text for JSON, never fragmented");
      assert.ok(
        upgrade.frames.filter((f) => f.opcode >= 8).every((f) => !f.compressed),
        "no control frame compressed",
      );
    }
  });

  it("a large publish from the SDK goes compressed and reaches every subscriber intact", { timeout: 90_000 }, async () => {
    const json = new CoreClient({ url: tap.url, token: signToken("dz-pub-json"), WebSocket: RecordingWebSocket });
    const packed = new GatewayClient({ url: tap.url, token: signToken("dz-pub-msgpack"), WebSocket: RecordingWebSocket, format: "msgpack" });
    clients.push(json, packed);
    const seen = new Map<CoreClient, GatewayEvent[]>();
    let subscribed = 0;
    for (const client of [json, packed]) {
      seen.set(client, record(client).events);
      client.subscribe("room:dz", { onSubscribed: () => subscribed++ });
      client.connect();
    }
    await waitFor("both subscribed", () => subscribed === 2);

    const first = await json.publish("room:dz", "note", largeData(1));
    const second = await packed.publish("room:dz", "note", largeData(2));
    assert.deepEqual([first.offset, second.offset], [1, 2]);
    await waitFor("both events on both", () => [...seen.values()].every((events) => events.length === 2));
    for (const events of seen.values()) {
      assert.deepEqual(
        events.map((e) => [e.type, e.channel, e.data]),
        [
          ["note", "room:dz", largeData(1)],
          ["note", "room:dz", largeData(2)],
        ],
      );
    }

    assert.deepEqual(negotiated, ["permessage-deflate", "permessage-deflate"]);
    for (const upgrade of tap.upgrades) {
      const sent = upgrade.data("client").filter((f) => f.compressed);
      assert.equal(sent.length, 1, "the publish went compressed, the small frames plain");
      assert.ok((sent[0]?.length ?? Infinity) < LARGE_BYTES / 2, `the publish took ${sent[0]?.length} bytes on the wire`);
    }
  });

  it("a compressed message in continuation frames, with a ping between them, is read as one", { timeout: 60_000 }, async () => {
    const client = await rawClient(tap.url, "dz-fragments");
    sockets.push(client.socket);
    assert.equal(client.socket.extensions, "permessage-deflate");
    await rawSubscribe(client, "room:fragments");

    const message = JSON.stringify({ type: "publish", id: "big", channel: "room:fragments", event: "note", data: largeData(3) });
    const third = Math.ceil(message.length / 3);
    client.socket.send(message.slice(0, third), { fin: false });
    client.socket.ping();
    client.socket.send(message.slice(third, 2 * third), { fin: false });
    client.socket.send(message.slice(2 * third), { fin: true });

    await waitFor("the reply and the event", () => client.frames.some((f) => f.type === "published") && client.frames.some((f) => f.type === "note"));
    const published = client.frames.find((f) => f.type === "published");
    assert.equal(published?.["id"], "big");
    assert.equal(published["offset"], 1);
    assert.deepEqual(client.frames.find((f) => f.type === "note")?.["data"], largeData(3));

    const [upgrade] = tap.upgrades;
    assert.ok(upgrade);
    const sent = upgrade.frames.filter((f) => f.from === "client");
    const start = sent.findIndex((f) => f.compressed);
    assert.deepEqual(
      sent.slice(start, start + 4).map((f) => [f.opcode, f.fin, f.compressed]),
      [
        [1, false, true],
        [9, true, false],
        [0, false, false],
        [0, true, false],
      ],
      "text (RSV1), ping, continuation, last continuation",
    );
  });

  it("a compressed message that inflates past the message limit is closed with 1009", { timeout: 60_000 }, async () => {
    const client = await rawClient(tap.url, "dz-bomb");
    sockets.push(client.socket);
    // 600 000 bytes inflated (over the default 524 288), under a kilobyte or two on the wire.
    client.socket.send(JSON.stringify({ type: "publish", channel: "room:bomb", event: "note", data: "a".repeat(600_000) }));
    assert.equal(await client.closed, 1009);
    const [upgrade] = tap.upgrades;
    const sent = upgrade?.data("client").filter((f) => f.compressed) ?? [];
    assert.equal(sent.length, 1);
    assert.ok((sent[0]?.length ?? Infinity) < 16 * 1024, `${sent[0]?.length} bytes on the wire`);
  });

  it("a client that offers no compression gets every frame plain", { timeout: 60_000 }, async () => {
    const client = await rawClient(tap.url, "dz-plain", { perMessageDeflate: false });
    sockets.push(client.socket);
    assert.equal(client.socket.extensions, "");
    await rawSubscribe(client, "dz-plain");
    await cluster.publish({ channel: "dz-plain", event: "photo:updated", data: largeData(4) });
    await waitFor("the event", () => client.frames.some((f) => f.type === "photo:updated"));
    assert.deepEqual(client.frames.find((f) => f.type === "photo:updated")?.["data"], largeData(4));

    const [upgrade] = tap.upgrades;
    assert.ok(upgrade);
    assert.equal(upgrade.requestHeader("sec-websocket-extensions"), undefined);
    assert.equal(upgrade.header("sec-websocket-extensions"), undefined, "no extension in the 101");
    assert.ok(upgrade.data("server").some((f) => f.length > LARGE_BYTES));
    assert.ok(
      upgrade.frames.every((f) => !f.compressed),
      "no frame compressed",
    );
  });
});

describe("permessage-deflate with the gateway's compression off (the default)", () => {
  let cluster: Cluster | undefined;
  let tap: WireTap | undefined;
  const clients: CoreClient[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await tap?.stop();
    await cluster?.stop();
  });

  it("the SDK offers it, is declined, and gets and sends large events plain", { timeout: 90_000 }, async () => {
    cluster = await Cluster.start({ replicas: 1 });
    tap = await WireTap.start(cluster.nginx.port);
    negotiated = [];
    const json = new CoreClient({ url: tap.url, token: signToken("dz-off"), WebSocket: RecordingWebSocket });
    const packed = new GatewayClient({ url: tap.url, token: signToken("dz-off"), WebSocket: RecordingWebSocket, format: "msgpack" });
    clients.push(json, packed);
    const seen = new Map<CoreClient, GatewayEvent[]>();
    let subscribed = 0;
    for (const client of [json, packed]) {
      seen.set(client, record(client).events);
      client.subscribe("room:off", { onSubscribed: () => subscribed++ });
      client.connect();
    }
    await waitFor("both subscribed", () => subscribed === 2);

    await cluster.publish({ channel: "room:off", event: "note", data: largeData(1) });
    await json.publish("room:off", "note", largeData(2));
    await waitFor("both events on both", () => [...seen.values()].every((events) => events.length === 2));
    for (const events of seen.values()) {
      assert.deepEqual(
        events.map((e) => e.data),
        [largeData(1), largeData(2)],
      );
    }

    assert.deepEqual(negotiated, ["", ""], "nothing negotiated");
    assert.equal(tap.upgrades.length, 2);
    for (const upgrade of tap.upgrades) {
      assert.match(upgrade.requestHeader("sec-websocket-extensions") ?? "", /^permessage-deflate\b/, "ws offered it");
      assert.equal(upgrade.header("sec-websocket-extensions"), undefined, "no extension in the 101");
      assert.ok(upgrade.data("server").some((f) => f.length > LARGE_BYTES / 2), "the large events went plain");
      assert.ok(
        upgrade.frames.every((f) => !f.compressed),
        "no frame compressed, either way",
      );
    }
  });
});
