/**
 * The cursor of the HTTP transports (docs/protocol.md "Fallback transports"): every channel's
 * position in one string, `1.` and the base64url (no padding) of a JSON object channel →
 * `[offset, epoch]`. The client builds the cursor of each SSE or poll request from its own
 * positions, and takes from a poll's answer the positions of channels it had none for.
 */

import type { Position } from "./frames.js";
import { base64UrlDecode } from "./token.js";

const VERSION = "1.";

/** The cursor naming `positions`. */
export function encodeCursor(positions: Readonly<Record<string, Position>>): string {
  const entries: Record<string, [number, string]> = {};
  for (const [channel, p] of Object.entries(positions)) entries[channel] = [p.offset, p.epoch];
  const bytes = new TextEncoder().encode(JSON.stringify(entries));
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  const base64 = btoa(binary);
  return VERSION + base64.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The positions a cursor names; `undefined` for anything that is not a cursor. */
export function decodeCursor(text: string): Record<string, Position> | undefined {
  if (!text.startsWith(VERSION)) return undefined;
  try {
    const entries: unknown = JSON.parse(base64UrlDecode(text.slice(VERSION.length)));
    if (typeof entries !== "object" || entries === null || Array.isArray(entries)) return undefined;
    const positions: Record<string, Position> = {};
    for (const [channel, value] of Object.entries(entries as Record<string, unknown>)) {
      if (!Array.isArray(value) || value.length !== 2) return undefined;
      const [offset, epoch] = value as unknown[];
      if (typeof offset !== "number" || !Number.isInteger(offset) || offset < 0 || typeof epoch !== "string") return undefined;
      positions[channel] = { offset, epoch };
    }
    return positions;
  } catch {
    return undefined;
  }
}
