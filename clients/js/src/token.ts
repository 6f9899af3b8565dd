/**
 * Tokens: where they come from, and when to replace one. The client reads a JWT's claims only
 * to plan (its expiry, its user); the gateway verifies it.
 */

/** A token, or a function that fetches one; a function runs before each connect and before expiry. */
export type TokenSource = string | (() => string | Promise<string>);

export interface TokenClaims {
  /** `exp` in ms since the epoch. */
  expiresAtMs?: number;
  /** `sub`, or `user_id` when `sub` is absent, as the gateway reads it. */
  userId?: string;
}

export function base64UrlDecode(part: string): string {
  const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** The claims the client plans with, read without verifying; `{}` for anything that is not a JWT. */
export function readClaims(token: string): TokenClaims {
  const payload = token.split(".")[1];
  if (payload === undefined) return {};
  try {
    const claims: unknown = JSON.parse(base64UrlDecode(payload));
    if (typeof claims !== "object" || claims === null) return {};
    const record = claims as Record<string, unknown>;
    const result: TokenClaims = {};
    if (typeof record["exp"] === "number") result.expiresAtMs = record["exp"] * 1000;
    const user = record["sub"] ?? record["user_id"];
    if (typeof user === "string" || typeof user === "number") result.userId = String(user);
    return result;
  } catch {
    return {};
  }
}

/** The longest margin before expiry at which a token is refreshed. */
export const MAX_REFRESH_MARGIN_MS = 60_000;

/**
 * How long to wait before refreshing a token that expires at `expiresAtMs`: a quarter of its
 * remaining life before expiry, but at least a second (or half the remaining life, if less) and at
 * most {@link MAX_REFRESH_MARGIN_MS} before it. 0 when it is due now.
 */
export function refreshDelayMs(expiresAtMs: number, nowMs: number): number {
  const left = expiresAtMs - nowMs;
  if (left <= 0) return 0;
  const margin = Math.min(MAX_REFRESH_MARGIN_MS, Math.max(left / 4, Math.min(1000, left / 2)));
  return Math.max(0, Math.floor(left - margin));
}

export async function fetchToken(source: TokenSource): Promise<string> {
  return typeof source === "string" ? source : await source();
}
