/**
 * Refreshing the token before it expires: a `refresh` frame over a WebSocket; over a one-way
 * transport, the next request carries the new token. A getter that fails, or gives no newer
 * token, is asked again while there is time; else the server's 4002 comes and the client
 * reconnects with a new token.
 */

import type { Connection } from "./connection.js";
import { GatewayError } from "./errors.js";
import { request } from "./requests.js";
import { fetchToken, readClaims, refreshDelayMs } from "./token.js";

/** Schedules the refresh of the current token, where it expires and comes from a getter. */
export function scheduleRefresh(c: Connection): void {
  c.clearTimer("refreshTimer");
  const source = c.options.token;
  const expiresAt = c.token === undefined ? undefined : readClaims(c.token).expiresAtMs;
  if (typeof source === "string" || expiresAt === undefined) return;
  const generation = c.generation;
  c.refreshTimer = setTimeout(() => void refresh(c, generation, expiresAt), refreshDelayMs(expiresAt, Date.now()));
}

async function refresh(c: Connection, generation: number, oldExpiry: number): Promise<void> {
  c.refreshTimer = undefined;
  let token: string;
  try {
    token = await fetchToken(c.options.token);
  } catch (cause) {
    if (generation !== c.generation) return;
    c.emit("error", new GatewayError("token", `the token getter failed: ${String(cause)}`));
    retryRefresh(c, generation, oldExpiry);
    return;
  }
  if (generation !== c.generation) return;
  const expiresAt = readClaims(token).expiresAtMs;
  if (expiresAt !== undefined && expiresAt <= oldExpiry) {
    // The getter gave no newer token yet: ask again a little later.
    retryRefresh(c, generation, oldExpiry);
    return;
  }
  if (c.oneWay) {
    // No refresh frame: the next request carries the new token (an open stream reopens with it).
    c.token = token;
    c.socket?.update();
    scheduleRefresh(c);
    return;
  }
  try {
    await request(c, { type: "refresh", token }, "refreshed", false);
  } catch (error) {
    if (generation !== c.generation || !(error instanceof GatewayError)) return;
    c.emit("error", error);
    retryRefresh(c, generation, oldExpiry);
    return;
  }
  if (generation !== c.generation) return;
  c.token = token;
  scheduleRefresh(c);
}

/** Tries again halfway to the old token's expiry, while there is time; else 4002 will come. */
function retryRefresh(c: Connection, generation: number, expiresAt: number): void {
  const left = expiresAt - Date.now();
  if (left < 200) return;
  c.refreshTimer = setTimeout(() => void refresh(c, generation, expiresAt), Math.min(left / 2, 30_000));
}
