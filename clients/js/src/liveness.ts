/**
 * Whether the connection is alive: heartbeats (a ping once per interval; a connection silent for
 * two intervals is dead), and the browser's own word: `online`, `offline`, and the page becoming
 * visible again.
 */

import type { Connection } from "./connection.js";

/** A connection was established (with `c.heartbeatMs`): checks it from now on. */
export function startHeartbeat(c: Connection): void {
  const now = Date.now();
  c.lastFrameAt = now;
  c.lastPingAt = now;
  c.lastCheckAt = now;
  if (c.heartbeatTimer !== undefined) clearInterval(c.heartbeatTimer);
  c.heartbeatTimer = setInterval(() => checkHeartbeat(c), checkEveryMs(c));
}

function checkEveryMs(c: Connection): number {
  return Math.max(50, c.heartbeatMs / 4);
}

/** Pings once per heartbeat interval; a connection silent for two intervals is dead. */
function checkHeartbeat(c: Connection): void {
  const now = Date.now();
  const late = now - c.lastCheckAt > 2 * checkEveryMs(c);
  c.lastCheckAt = now;
  if (late) {
    // The timer itself was held up (a throttled background tab, a sleeping laptop): the
    // silence says nothing about the socket yet. Ask it, and judge on a punctual tick.
    ping(c, now);
    return;
  }
  if (now - c.lastFrameAt >= 2 * c.heartbeatMs) {
    c.drop(1006, `no frame for ${2 * c.heartbeatMs} ms`);
    return;
  }
  if (now - c.lastPingAt >= c.heartbeatMs) ping(c, now);
}

function ping(c: Connection, now: number): void {
  c.lastPingAt = now;
  c.send({ type: "ping" });
}

/** Listens to the browser's online/offline and page-visibility events (where there is a browser). */
export function listenToBrowser(c: Connection): void {
  if (c.removeBrowserListeners || c.options.browserEvents === false) return;
  const target = globalThis as {
    addEventListener?: (type: string, listener: () => void) => void;
    removeEventListener?: (type: string, listener: () => void) => void;
    document?: {
      visibilityState?: string;
      addEventListener(type: string, listener: () => void): void;
      removeEventListener(type: string, listener: () => void): void;
    };
  };
  if (typeof target.addEventListener !== "function" || !target.document) return;
  const document = target.document;
  const online = () => c.reconnectNow();
  const offline = () => {
    if (c.state === "connected" || c.state === "connecting") c.drop(1006, "offline");
  };
  const visible = () => {
    if (document.visibilityState !== "visible") return;
    if (c.state === "disconnected") c.reconnectNow();
    // A socket that died while the page slept is found out within two heartbeats.
    else if (c.state === "connected") ping(c, Date.now());
  };
  target.addEventListener("online", online);
  target.addEventListener("offline", offline);
  document.addEventListener("visibilitychange", visible);
  c.removeBrowserListeners = () => {
    target.removeEventListener?.("online", online);
    target.removeEventListener?.("offline", offline);
    document.removeEventListener("visibilitychange", visible);
  };
}
