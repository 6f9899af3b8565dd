/**
 * permessage-deflate in real Chromium, which offers it natively, against a gateway with
 * `GATEWAY_WS_COMPRESSION=on` behind nginx and a tap that reads every frame's header. The page
 * loads the SDK (src/msgpack.ts, bundled by esbuild: the core and the MessagePack codec) and runs
 * one JSON and one MessagePack client: both sockets say `permessage-deflate` in
 * `WebSocket.extensions`, large events come compressed and arrive intact and in order with the
 * small ones, and a large publish from the page goes compressed and comes back intact.
 */

import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { build } from "esbuild";
import { type Browser, chromium, type Page } from "playwright-core";

import type { GatewayEvent } from "../../src/index.js";
import type * as Sdk from "../../src/msgpack.js";
import { Cluster, PACKAGE_DIR, signToken } from "../harness.js";
import { WireTap } from "../wiretap.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
const AGREED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const FORMATS = ["json", "msgpack"] as const;
type Format = (typeof FORMATS)[number];

/** What the page keeps, as `window.compression`. */
interface PageState {
  clients: Record<Format, Sdk.GatewayClient>;
  events: Record<Format, GatewayEvent[]>;
  subscribed: number;
  sockets: WebSocket[];
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

/** A page with the SDK as the global `Gateway`, in a directory nginx can read. */
async function sdkPage(): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "gw-js-compression-"));
  chmodSync(dir, 0o755);
  await build({
    entryPoints: [join(PACKAGE_DIR, "src/msgpack.ts")],
    bundle: true,
    format: "iife",
    globalName: "Gateway",
    platform: "browser",
    target: "es2022",
    outfile: join(dir, "gateway.js"),
    logLevel: "error",
  });
  writeFileSync(join(dir, "index.html"), `<!doctype html>\n<meta charset="utf-8">\n<title>compression</title>\n<script src="/gateway.js"></script>\n`);
  return dir;
}

/** Starts a JSON and a MessagePack client in the page, each subscribed to `channel`. */
async function startClients(page: Page, token: string, channel: string): Promise<void> {
  await page.evaluate(
    ({ token, channel, formats }) => {
      const { GatewayClient } = (window as unknown as { Gateway: typeof Sdk }).Gateway;
      const state: PageState = {
        clients: {} as PageState["clients"],
        events: { json: [], msgpack: [] },
        subscribed: 0,
        sockets: [],
      };
      (window as unknown as { compression: PageState }).compression = state;
      /** The browser's own WebSocket, keeping each socket so that the test can read `extensions`. */
      class RecordingWebSocket extends WebSocket {
        constructor(url: string, protocols?: string | string[]) {
          super(url, protocols);
          state.sockets.push(this);
        }
      }
      for (const format of formats) {
        const client = new GatewayClient({ url: "/ws", token, format, WebSocket: RecordingWebSocket });
        client.on("event", (event) => state.events[format].push(event));
        client.subscribe(channel, { onSubscribed: () => state.subscribed++ });
        client.connect();
        state.clients[format] = client;
      }
    },
    { token, channel, formats: [...FORMATS] },
  );
  await page.waitForFunction(() => (window as unknown as { compression: PageState }).compression.subscribed === 2, undefined, { timeout: 20_000 });
}

describe("permessage-deflate in Chromium", () => {
  let dir: string;
  let cluster: Cluster;
  let tap: WireTap;
  let browser: Browser;

  before(async () => {
    dir = await sdkPage();
    cluster = await Cluster.start({ replicas: 1, staticRoot: dir, env: { GATEWAY_WS_COMPRESSION: "on" } });
    tap = await WireTap.start(cluster.nginx.port);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  });
  after(async () => {
    await browser.close();
    await tap.stop();
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("the SDK in the page negotiates it and gets large and small events, and publishes, intact", { timeout: 120_000 }, async () => {
    const page = await browser.newPage();
    const pageErrors: string[] = [];
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    await page.goto(`${tap.httpUrl}/`);
    await startClients(page, signToken("browser-dz"), "room:browser");

    const expected: unknown[] = [];
    for (let i = 1; i <= 10; i++) {
      const data = i % 2 === 1 ? largeData(i) : { i };
      expected.push(data);
      await cluster.publish({ channel: "room:browser", event: "photo:updated", data });
    }
    const published = largeData(11);
    expected.push(published);
    await page.evaluate((data) => (window as unknown as { compression: PageState }).compression.clients.json.publish("room:browser", "photo:updated", data), published);
    await page.waitForFunction(
      (count) => Object.values((window as unknown as { compression: PageState }).compression.events).every((events) => events.length >= count),
      expected.length,
      { timeout: 20_000 },
    );

    const state = await page.evaluate(() => {
      const { events, sockets } = (window as unknown as { compression: PageState }).compression;
      return { events, extensions: sockets.map((s) => s.extensions), protocols: sockets.map((s) => s.protocol) };
    });
    for (const format of FORMATS) {
      assert.deepEqual(
        state.events[format].map((e) => e.data),
        expected,
        `${format}: every event intact, once, in order`,
      );
      assert.deepEqual(
        state.events[format].map((e) => e.offset),
        expected.map((_, k) => k + 1),
      );
    }
    assert.deepEqual(state.protocols.sort(), ["", "gateway.msgpack"]);
    for (const extensions of state.extensions) assert.match(extensions, /^permessage-deflate\b/, "WebSocket.extensions in the page");

    assert.equal(tap.upgrades.length, 2);
    for (const upgrade of tap.upgrades) {
      assert.match(upgrade.requestHeader("sec-websocket-extensions") ?? "", /^permessage-deflate\b/, "Chromium offered it");
      assert.equal(upgrade.header("sec-websocket-extensions"), AGREED);
      const compressed = upgrade.data("server").filter((f) => f.compressed);
      assert.ok(compressed.length >= 6, `${compressed.length} compressed frames: at least the 6 large events`);
      assert.ok(
        compressed.every((f) => f.length < LARGE_BYTES / 2),
        `compressed to less than half: ${compressed.map((f) => f.length).join(", ")} bytes`,
      );
    }
    const msgpack = tap.upgrades.find((u) => u.requestHeader("sec-websocket-protocol") === "gateway.msgpack");
    const json = tap.upgrades.find((u) => u !== msgpack);
    assert.ok(json && msgpack);
    assert.ok(
      json.data("client").some((f) => f.compressed && f.length < LARGE_BYTES / 2),
      "the page's large publish went compressed",
    );
    assert.ok(
      json.data("server").every((f) => f.opcode === 1) && msgpack.data("server").every((f) => f.opcode === 2),
      "text frames for JSON, binary for MessagePack",
    );
    assert.deepEqual(pageErrors, []);
    await page.close();
  });
});
