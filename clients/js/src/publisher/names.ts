/**
 * The gateway's naming rules, exactly as `publisher/src/wire/mod.rs` states them. Each function
 * takes a value as a caller gives it and returns it checked, or throws the matching
 * {@link InvalidName} error.
 */

import { InvalidChannel, InvalidClientType, InvalidEvent, InvalidUser, ReservedEvent } from "./errors.js";

/** Frame types the gateway itself sends or receives; an event may not be named like one. */
export const RESERVED_EVENT_NAMES: ReadonlySet<string> = new Set([
  "auth",
  "connection_established",
  "disconnect",
  "error",
  "heartbeat",
  "history",
  "join",
  "leave",
  "ping",
  "pong",
  "presence",
  "publish",
  "published",
  "refresh",
  "refreshed",
  "register",
  "registered",
  "reload",
  "subscribe",
  "subscribed",
  "unsubscribe",
  "unsubscribed",
]);

// The three charsets are ASCII, so a match also bounds the length in bytes.
const CHANNEL = /^[A-Za-z0-9_:#.@=,-]{1,255}$/;
const EVENT = /^[A-Za-z0-9_.:-]{1,128}$/;
const CLIENT_TYPE = /^[A-Za-z0-9_.-]{1,64}$/;
// What Rust's `char::is_control` (category Cc) and `char::is_whitespace` (the White_Space
// property) refuse in a user id, `#` and `,`; and lone surrogates, which are no UTF-8.
const NOT_IN_USER_ID = /[\p{Cc}\p{White_Space}#,]|\p{Cs}/u;
const encoder = new TextEncoder();

/** The length of `text` in UTF-8 bytes. */
export function utf8Length(text: string): number {
  return encoder.encode(text).length;
}

/** Whether `text` has a lone surrogate (it cannot be written as UTF-8). */
export function hasLoneSurrogate(text: string): boolean {
  return /\p{Cs}/u.test(text);
}

function shown(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** A channel name: 1 to 255 bytes of `[A-Za-z0-9_:#.@=,-]`. */
export function channelName(name: unknown): string {
  if (typeof name !== "string" || !CHANNEL.test(name)) {
    throw new InvalidChannel(`invalid channel name ${shown(name)}: 1 to 255 bytes of [A-Za-z0-9_:#.@=,-]`, name);
  }
  return name;
}

/** An event name: 1 to 128 bytes of `[A-Za-z0-9_.:-]`, not a frame type of the protocol. */
export function eventName(name: unknown): string {
  if (typeof name !== "string" || !EVENT.test(name)) {
    throw new InvalidEvent(`invalid event name ${shown(name)}: 1 to 128 bytes of [A-Za-z0-9_.:-]`, name);
  }
  if (RESERVED_EVENT_NAMES.has(name)) {
    throw new ReservedEvent(`event name ${shown(name)} is reserved by the protocol`, name);
  }
  return name;
}

/** A client type (`gui`, `mobile`, …): 1 to 64 bytes of `[A-Za-z0-9_.-]`. */
export function clientTypeName(name: unknown): string {
  if (typeof name !== "string" || !CLIENT_TYPE.test(name)) {
    throw new InvalidClientType(`invalid client type ${shown(name)}: 1 to 64 bytes of [A-Za-z0-9_.-]`, name);
  }
  return name;
}

/**
 * A user id: 1 to 255 bytes of UTF-8 without spaces, control characters, `#` or `,`. Ids such
 * as `auth0|5f7c` are fine; `#` and `,` separate the users of a user-limited channel
 * (`notifications#42,43`).
 */
export function userId(user: unknown): string {
  if (typeof user !== "string" || user === "" || NOT_IN_USER_ID.test(user) || utf8Length(user) > 255) {
    throw new InvalidUser(`invalid user id ${shown(user)}: 1 to 255 bytes, no spaces, control characters, '#' or ','`, user);
  }
  return user;
}

/** The channel `#<user>` on which every connection of a user listens. */
export function personalChannel(user: string): string {
  return `#${user}`;
}

/** `personal` for `#<user>`, else the part before the first `:`, else `default`. */
export function namespace(channel: string): string {
  if (channel.startsWith("#")) return "personal";
  const colon = channel.indexOf(":");
  return colon === -1 ? "default" : channel.slice(0, colon);
}
