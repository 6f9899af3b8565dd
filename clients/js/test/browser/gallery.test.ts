/**
 * The example gallery in real Chromium, loaded through nginx in front of two replicas. A worker
 * marks each photo `completed` (`photo:updated` to the photo's owner) while the replica holding
 * the page is killed: the page reconnects to the other one, recovers its personal channel, and
 * every badge ends green, each photo updated exactly once. Screenshots before and after go to
 * docs/images/ (or $SCREENSHOT_DIR). The same behind a proxy that refuses `/ws` (the page ends
 * on SSE) or `/ws` and `/sse` (long-poll), and with MessagePack frames (`?format=msgpack`).
 */

import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { type Browser, chromium, type Page } from "playwright-core";

import { API_KEY, Cluster, PACKAGE_DIR, REPO_DIR, signToken, sleep, waitFor } from "../harness.js";

const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
const APP_DIR = join(PACKAGE_DIR, "examples/gallery/dist");
/** The same app with React's development build, where StrictMode mounts every effect twice. */
const DEV_APP_DIR = join(PACKAGE_DIR, "examples/gallery/dist-dev");
const SCREENSHOTS = process.env["SCREENSHOT_DIR"] ?? join(REPO_DIR, "docs/images");
const PHOTOS = Array.from({ length: 12 }, (_, i) => `p${i + 1}`);

interface PhotoState {
  id: string;
  status: string;
  updates: number;
  likes: number;
}

async function photos(page: Page): Promise<PhotoState[]> {
  return page.$$eval("[data-testid=photo]", (cards) =>
    cards.map((card) => ({
      id: card.getAttribute("data-photo") ?? "",
      status: card.getAttribute("data-status") ?? "",
      updates: Number(card.getAttribute("data-updates")),
      likes: Number(card.getAttribute("data-likes")),
    })),
  );
}

async function connection(page: Page): Promise<{ state: string; node: string; transport: string }> {
  const element = page.getByTestId("connection");
  return {
    state: (await element.getAttribute("data-state")) ?? "",
    node: (await element.getAttribute("data-node")) ?? "",
    transport: (await element.getAttribute("data-transport")) ?? "",
  };
}

/**
 * A worker completes every photo of user `user`, one every 120 ms, and the replica `victim` is
 * SIGKILLed after the fourth.
 */
async function completeAll(cluster: Cluster, user: string, victim: { kill(): Promise<void> }): Promise<void> {
  for (const [index, id] of PHOTOS.entries()) {
    await cluster.publish({
      user,
      event: "photo:updated",
      data: { photo_id: id, status: "completed" },
      idempotency_key: `photo-${user}-${id}`,
    });
    if (index === 3) await victim.kill();
    await sleep(120);
  }
}

describe("the gallery in Chromium", () => {
  let cluster: Cluster;
  let browser: Browser;
  const pageErrors: string[] = [];

  before(async () => {
    for (const dir of [APP_DIR, DEV_APP_DIR]) {
      assert.ok(existsSync(join(dir, "index.html")), `build the example first (npm run build:example): ${dir}`);
    }
    cluster = await Cluster.start({ staticRoot: APP_DIR });
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  });
  after(async () => {
    await browser.close();
    await cluster.stop();
  });

  it("turns every badge green exactly once while the page's replica is killed", { timeout: 120_000 }, async () => {
    const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    await page.goto(`${cluster.httpUrl}/?token=${signToken("42")}`);
    await page.waitForSelector("[data-testid=connection][data-state=connected]", { timeout: 20_000 });
    const before = await connection(page);
    assert.match(before.node, /^gw-[ab]$/);
    assert.equal(before.transport, "websocket");
    assert.deepEqual(
      (await photos(page)).map((p) => p.status),
      PHOTOS.map(() => "pending"),
    );
    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: join(SCREENSHOTS, "gallery-before.png") });

    await completeAll(cluster, "42", cluster.replica(before.node));

    await page.waitForSelector(`[data-testid=summary][data-completed="${PHOTOS.length}"]`, { timeout: 30_000 });
    await page.waitForSelector("[data-testid=connection][data-state=connected]", { timeout: 20_000 });
    await sleep(500); // a repeated event would show now
    const final = await photos(page);
    assert.deepEqual(
      final,
      PHOTOS.map((id) => ({ id, status: "completed", updates: 1, likes: 0 })),
      "each photo completed by exactly one event",
    );
    const afterKill = await connection(page);
    assert.notEqual(afterKill.node, before.node, "reconnected to the other replica");
    assert.equal(await page.locator(".reload").count(), 0, "recovered, not reloaded");
    await page.screenshot({ path: join(SCREENSHOTS, "gallery-after.png") });
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("drops the socket when the browser goes offline and reconnects the moment it is back", { timeout: 120_000 }, async () => {
    const single = await Cluster.start({ replicas: 1, staticRoot: APP_DIR });
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      page.on("pageerror", (error) => pageErrors.push(String(error)));
      await page.goto(`${single.httpUrl}/?token=${signToken("43")}`);
      await page.waitForSelector("[data-testid=connection][data-state=connected]", { timeout: 20_000 });

      const wentOffline = Date.now();
      await context.setOffline(true);
      await page.waitForSelector("[data-testid=connection]:not([data-state=connected])", { timeout: 5_000 });
      assert.ok(Date.now() - wentOffline < 2_000, "the offline event drops the connection at once");
      for (const id of ["p1", "p2"]) {
        await single.publish({ user: "43", event: "photo:updated", data: { photo_id: id, status: "completed" } });
      }
      await sleep(5_000); // reconnect attempts fail and back off meanwhile
      assert.notEqual((await connection(page)).state, "connected");

      const cameBack = Date.now();
      await context.setOffline(false);
      await page.waitForSelector("[data-testid=connection][data-state=connected]", { timeout: 20_000 });
      const reconnectedAfter = Date.now() - cameBack;
      assert.ok(reconnectedAfter < 1_500, `reconnected ${reconnectedAfter} ms after the online event, not after the backoff`);
      await page.waitForSelector("[data-testid=summary][data-completed='2']", { timeout: 10_000 });
      await sleep(300);
      const updated = (await photos(page)).filter((p) => p.updates > 0);
      assert.deepEqual(
        updated.map((p) => [p.id, p.status, p.updates]),
        [
          ["p1", "completed", 1],
          ["p2", "completed", 1],
        ],
        "what was published while offline, recovered once",
      );
      assert.deepEqual(pageErrors, []);
    } finally {
      await context.close();
      await single.stop();
    }
  });

  it("over MessagePack (?format=msgpack), gets binary frames and completes every photo once across a replica kill", { timeout: 120_000 }, async () => {
    const packed = await Cluster.start({ staticRoot: APP_DIR });
    const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
    try {
      page.on("pageerror", (error) => pageErrors.push(String(error)));
      const frames = { binary: 0, text: 0 };
      page.on("websocket", (socket) => {
        socket.on("framereceived", ({ payload }) => (typeof payload === "string" ? frames.text++ : frames.binary++));
      });
      const user = "packed";
      await page.goto(`${packed.httpUrl}/?format=msgpack&token=${signToken(user)}`);
      await page.waitForSelector("[data-testid=connection][data-state=connected][data-transport=websocket]", { timeout: 20_000 });
      const before = await connection(page);

      await completeAll(packed, user, packed.replica(before.node));

      await page.waitForSelector(`[data-testid=summary][data-completed="${PHOTOS.length}"]`, { timeout: 30_000 });
      await page.waitForSelector("[data-testid=connection][data-state=connected]", { timeout: 20_000 });
      await sleep(500); // a repeated event would show now
      assert.deepEqual(
        await photos(page),
        PHOTOS.map((id) => ({ id, status: "completed", updates: 1, likes: 0 })),
        "each photo completed by exactly one event",
      );
      assert.notEqual((await connection(page)).node, before.node, "reconnected to the other replica");
      assert.equal(await page.locator(".reload").count(), 0, "recovered, not reloaded");
      assert.ok(frames.binary >= PHOTOS.length, `${frames.binary} binary frames`);
      assert.equal(frames.text, 0, "no text frame: every frame was MessagePack");
      assert.deepEqual(pageErrors, []);
    } finally {
      await page.close();
      await packed.stop();
    }
  });

  for (const [transport, refuse] of [
    ["sse", ["ws"]],
    ["poll", ["ws", "sse"]],
  ] as const) {
    it(`ends on ${transport} behind a proxy that refuses /${refuse.join(" and /")}, and still completes every photo once across a replica kill`, { timeout: 120_000 }, async () => {
      const proxied = await Cluster.start({ staticRoot: APP_DIR, refuse: [...refuse] });
      const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
      try {
        page.on("pageerror", (error) => pageErrors.push(String(error)));
        const user = `behind-${transport}`;
        await page.goto(`${proxied.httpUrl}/?token=${signToken(user)}`);
        await page.waitForSelector(`[data-testid=connection][data-state=connected][data-transport=${transport}]`, { timeout: 30_000 });
        const before = await connection(page);
        assert.match(before.node, /^gw-[ab]$/);

        await completeAll(proxied, user, proxied.replica(before.node));

        await page.waitForSelector(`[data-testid=summary][data-completed="${PHOTOS.length}"]`, { timeout: 30_000 });
        await page.waitForSelector("[data-testid=connection][data-state=connected]", { timeout: 20_000 });
        await sleep(500); // a repeated event would show now
        assert.deepEqual(
          await photos(page),
          PHOTOS.map((id) => ({ id, status: "completed", updates: 1, likes: 0 })),
          "each photo completed by exactly one event",
        );
        assert.equal((await connection(page)).transport, transport, `still on ${transport}: /ws stays refused`);
        assert.equal(await page.locator(".reload").count(), 0, "recovered, not reloaded");
        assert.deepEqual(pageErrors, []);
      } finally {
        await page.close();
        await proxied.stop();
      }
    });
  }

  it("under StrictMode, twelve components share one subscription and see each event once", { timeout: 120_000 }, async () => {
    const dev = await Cluster.start({ replicas: 1, staticRoot: DEV_APP_DIR });
    try {
      const admin = async <T>(path: string): Promise<T> => {
        const response = await fetch(`${dev.replicas[0]?.adminUrl ?? ""}${path}`, { headers: { Authorization: `Bearer ${API_KEY}` } });
        return (await response.json()) as T;
      };
      const metric = async (series: string): Promise<number> => {
        const response = await fetch(`${dev.replicas[0]?.adminUrl ?? ""}/metrics`);
        const text = await response.text();
        const line = text.split("\n").find((l) => l.startsWith(`${series} `));
        return line ? Number(line.split(" ").at(-1)) : 0;
      };
      const frames = (type: string) => metric(`gateway_client_frames_received_total{type="${type}"}`);
      const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
      page.on("pageerror", (error) => pageErrors.push(String(error)));
      await page.goto(`${dev.httpUrl}/?token=${signToken("42")}`);
      await page.waitForSelector("[data-testid=connection][data-state=connected]", { timeout: 20_000 });
      await waitFor("the gallery channel subscribed", async () => {
        const { channels } = await admin<{ channels: { channel: string; subscribers: number }[] }>("/api/channels");
        return channels.some((c) => c.channel === "gallery");
      });

      await dev.publish({ channel: "gallery", event: "photo:liked", data: { photo_id: "p3" } });
      await dev.publish({ user: "42", event: "photo:updated", data: { photo_id: "p1", status: "completed" } });
      await page.waitForSelector("[data-photo=p3][data-likes='1']", { timeout: 10_000 });
      await page.waitForSelector("[data-photo=p1][data-status=completed]", { timeout: 10_000 });
      await dev.publish({ channel: "gallery", event: "photo:liked", data: { photo_id: "p3" } });
      await page.waitForSelector("[data-photo=p3][data-likes='2']", { timeout: 10_000 });
      await sleep(500);

      const state = await photos(page);
      assert.deepEqual(
        state.map((p) => [p.id, p.updates, p.likes]),
        PHOTOS.map((id) => [id, id === "p1" ? 1 : 0, id === "p3" ? 2 : 0]),
        "each event once, in the one component it is for",
      );
      const { clients } = await admin<{ clients: { channels: string[] }[] }>("/api/clients?user=42");
      assert.equal(clients.length, 1, "one connection, though StrictMode mounted the provider twice");
      assert.deepEqual([...(clients[0]?.channels ?? [])].sort(), ["#42", "gallery"]);
      const { channels } = await admin<{ channels: { channel: string; subscribers: number }[] }>("/api/channels");
      assert.equal(channels.find((c) => c.channel === "gallery")?.subscribers, 1);
      assert.equal(await frames("subscribe"), 1, "one subscribe frame for twelve components, none on re-render");
      assert.equal(await frames("unsubscribe"), 0);
      assert.equal(await metric("gateway_connections_accepted_total"), 1, "one connection made");
      assert.deepEqual(pageErrors, []);
      await page.close();
    } finally {
      await dev.stop();
    }
  });
});
