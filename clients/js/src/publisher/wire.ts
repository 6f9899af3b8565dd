/**
 * What a publish writes to Redis, as pure functions: the commands of the Rust publisher
 * (`publisher/src/publish.rs`; `docs/redis.md` describes them). A publish becomes one bus
 * message per destination (one per channel for several channels):
 *
 * - a channel or user event goes through the history script (`EVALSHA`) when its namespace
 *   keeps history, when the gateways' namespaces are unknown, or when it has an idempotency
 *   key; otherwise, like client-type and broadcast events, it is a plain
 *   `PUBLISH <topic> <envelope>`;
 * - on a Redis Cluster a channel's topic carries its hash tag (`<prefix>:ch:{<channel>}`), a
 *   channel message without history is an `SPUBLISH`, and the script gets only the keys of the
 *   channel's slot, with the window and policy it cannot read there (see {@link BuildContext});
 * - the envelope is compact JSON with its fields in this order: `channel` | `client_type` |
 *   `broadcast` (only when true), `event`, `data`, `timestamp`, `exclude_client` (when set).
 *
 * {@link build} turns validated publishes into those commands without touching Redis; the
 * publisher and the test vectors (`publisher/vectors/publish.json`) both go through it.
 */

import { InvalidData, InvalidIdempotencyKey, InvalidPublish, InvalidTarget } from "./errors.js";
import { channelName, clientTypeName, eventName, hasLoneSurrogate, namespace, personalChannel, userId, utf8Length } from "./names.js";
import { NO_HISTORY, replyText, type Namespaces } from "./namespaces.js";
import { SCRIPT_SHA1 } from "./script.js";
import type { RedisMode } from "./topology.js";

/** The admin API's publish fields (`POST /api/publish`): what {@link fromFields} takes. */
export interface PublishFields {
  channel?: string;
  channels?: readonly string[];
  user?: string;
  client_type?: string;
  broadcast?: boolean;
  event: string;
  /** Any JSON value; absent: `null`. */
  data?: unknown;
  exclude_client?: string;
  idempotency_key?: string;
}

/** Options of a single publish. */
export interface PublishOptions {
  /** A `client_id` that must not receive the event (the sender's own connection). */
  excludeClient?: string;
  /**
   * At most one publish per key and channel within the gateways' idempotency window (5 minutes
   * by default): a repeat publishes nothing and answers the first one's position. Channel and
   * user events only.
   */
  idempotencyKey?: string;
}

/** Where one bus message goes: a channel, a client type, or every connection. */
export type Destination = { kind: "channel"; name: string } | { kind: "client_type"; name: string } | { kind: "broadcast" };

/** One validated publish: its destinations, event name, data (already JSON) and options. */
export interface Publish {
  readonly destinations: readonly Destination[];
  readonly event: string;
  /** The data as JSON, written into the envelope as it is. */
  readonly data: string;
  readonly excludeClient: string | null;
  readonly idempotencyKey: string | null;
}

/** One bus message of a publish, as the Redis command that sends it. */
export interface Message {
  /** The channel, for channel and user events; else null. */
  readonly channel: string | null;
  /** The pub/sub topic it goes to; on a cluster, its hash slot is the message's. */
  readonly topic: string;
  /** Sent through the history script (its reply is `[offset, epoch, duplicate]`). */
  readonly scripted: boolean;
  /** The command and its arguments, as sent. */
  readonly command: readonly string[];
}

/** What one bus message became. */
export interface Receipt {
  /** The channel of a channel or user event (`#<user>` for a user), else null. */
  channel: string | null;
  /** The event's offset where the channel keeps history, else null. */
  offset: number | null;
  /** The channel's epoch where it keeps history, else null. */
  epoch: string | null;
  /** The idempotency key had been seen: nothing was published, the position is the first publish's. */
  duplicate: boolean;
}

const FIELDS: ReadonlySet<string> = new Set([
  "channel",
  "channels",
  "user",
  "client_type",
  "broadcast",
  "event",
  "data",
  "exclude_client",
  "idempotency_key",
]);
const TARGETS = ["channel", "channels", "user", "client_type"] as const;

/** The current time as the wire writes it: RFC 3339 in UTC with milliseconds, `Z`. */
export function timestampNow(): string {
  return new Date().toISOString();
}

function refuseData(reason: string): never {
  throw new InvalidData(`event data is not serialisable as JSON: ${reason}`);
}

// Called by JSON.stringify for every key and value (after toJSON): refuses what serde_json
// could not carry, and what JSON.stringify would quietly turn into something else.
function checked(key: string, value: unknown): unknown {
  if (hasLoneSurrogate(key)) refuseData(`the key ${JSON.stringify(key)} has a lone surrogate`);
  const primitive = value instanceof Number || value instanceof String ? value.valueOf() : value;
  if (typeof primitive === "number" && !Number.isFinite(primitive)) refuseData(`${String(primitive)} is no JSON number`);
  if (typeof primitive === "string" && hasLoneSurrogate(primitive)) refuseData("a string has a lone surrogate");
  if (value instanceof Map || value instanceof Set) refuseData(`a ${value.constructor.name} (turn it into an object or an array)`);
  return value;
}

/**
 * `data` as compact JSON, with raw UTF-8 and serde_json's escapes (only `"`, `\` and control
 * characters): what `JSON.stringify` writes. `undefined` is `null`; NaN, infinities, BigInts,
 * cycles, lone surrogates, Maps and Sets are refused with {@link InvalidData}.
 */
export function encodeData(data: unknown): string {
  if (data === undefined) return "null";
  let text: string | undefined;
  try {
    text = JSON.stringify(data, checked);
  } catch (error) {
    if (error instanceof InvalidData) throw error;
    refuseData(error instanceof Error ? error.message : String(error));
  }
  // JSON.stringify answers undefined for a function or a symbol.
  if (typeof text !== "string") refuseData(`a ${typeof data} is no JSON value`);
  return text;
}

function make(destinations: Destination[], event: unknown, data: unknown, excludeClient: unknown, idempotencyKey: unknown): Publish {
  const name = eventName(event);
  if (idempotencyKey !== undefined && idempotencyKey !== null) {
    if (destinations[0]?.kind !== "channel") {
      throw new InvalidIdempotencyKey("idempotency_key works with channel, channels and user targets");
    }
    if (typeof idempotencyKey !== "string" || hasLoneSurrogate(idempotencyKey) || !inRange(utf8Length(idempotencyKey), 1, 128)) {
      throw new InvalidIdempotencyKey("idempotency_key must be 1 to 128 bytes");
    }
  }
  if (excludeClient !== undefined && excludeClient !== null) {
    if (typeof excludeClient !== "string") throw new InvalidPublish("exclude_client must be a client id (a string)");
    if (hasLoneSurrogate(excludeClient)) throw new InvalidData("exclude_client is not valid Unicode: it has a lone surrogate");
  }
  return {
    destinations,
    event: name,
    data: encodeData(data),
    excludeClient: typeof excludeClient === "string" ? excludeClient : null,
    idempotencyKey: typeof idempotencyKey === "string" ? idempotencyKey : null,
  };
}

function inRange(value: number, low: number, high: number): boolean {
  return value >= low && value <= high;
}

/** An event for the subscribers of `channel`. */
export function toChannel(channel: string, event: string, data: unknown, options: PublishOptions = {}): Publish {
  const target: Destination = { kind: "channel", name: channelName(channel) };
  return make([target], event, data, options.excludeClient, options.idempotencyKey);
}

/** An event for the subscribers of each of `channels`: one bus message per channel. */
export function toChannels(channels: readonly string[], event: string, data: unknown, options: PublishOptions = {}): Publish {
  if (!Array.isArray(channels)) throw new InvalidTarget("channels must be an array of channel names");
  const targets = channels.map((channel): Destination => ({ kind: "channel", name: channelName(channel) }));
  if (targets.length === 0) throw new InvalidTarget("channels is empty");
  return make(targets, event, data, options.excludeClient, options.idempotencyKey);
}

/** An event for every connection of `user`: its personal channel `#<user>`. */
export function toUser(user: string, event: string, data: unknown, options: PublishOptions = {}): Publish {
  const target: Destination = { kind: "channel", name: personalChannel(userId(user)) };
  return make([target], event, data, options.excludeClient, options.idempotencyKey);
}

/** An event for every connection registered as `clientType`. */
export function toClientType(clientType: string, event: string, data: unknown, options: { excludeClient?: string } = {}): Publish {
  const target: Destination = { kind: "client_type", name: clientTypeName(clientType) };
  return make([target], event, data, options.excludeClient, undefined);
}

/** An event for every connection. */
export function toEveryone(event: string, data: unknown, options: { excludeClient?: string } = {}): Publish {
  return make([{ kind: "broadcast" }], event, data, options.excludeClient, undefined);
}

/** Whether `fields` has `name`; a field set to `undefined` is absent, as in JSON. */
function has(fields: Record<string, unknown>, name: string): boolean {
  return Object.hasOwn(fields, name) && fields[name] !== undefined;
}

/**
 * A publish from the admin API's fields (`POST /api/publish`): exactly one of `channel`,
 * `channels`, `user`, `client_type` or `broadcast: true`, with `event`, `data` (default null),
 * `exclude_client` and `idempotency_key` (optional). Throws an {@link InvalidPublish} error.
 */
export function fromFields(fields: unknown): Publish {
  if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
    throw new InvalidPublish(`a publish is an object of fields, not ${Array.isArray(fields) ? "an array" : String(fields)}`);
  }
  const given = fields as Record<string, unknown>;
  const unknown = Object.keys(given)
    .filter((field) => !FIELDS.has(field) && has(given, field))
    .sort();
  if (unknown.length > 0) throw new InvalidPublish(`unknown publish fields: ${unknown.join(", ")}`);
  const broadcast = has(given, "broadcast") ? given["broadcast"] : false;
  if (typeof broadcast !== "boolean") throw new InvalidTarget("broadcast must be true or false");
  const named: string[] = TARGETS.filter((field) => has(given, field));
  if (broadcast) named.push("broadcast");
  if (named.length !== 1) {
    const got = named.length > 0 ? ` (got ${named.join(", ")})` : "";
    throw new InvalidTarget(`name exactly one target: channel, channels, user, client_type or broadcast${got}`);
  }
  if (!has(given, "event")) throw new InvalidPublish("event is missing");
  const { event, data } = given;
  const exclude = given["exclude_client"];
  const key = given["idempotency_key"];
  switch (named[0]) {
    case "channel":
      return make([{ kind: "channel", name: channelName(given["channel"]) }], event, data, exclude, key);
    case "channels": {
      const channels = given["channels"];
      if (!Array.isArray(channels)) throw new InvalidTarget("channels must be an array of channel names");
      const targets = channels.map((channel): Destination => ({ kind: "channel", name: channelName(channel) }));
      if (targets.length === 0) throw new InvalidTarget("channels is empty");
      return make(targets, event, data, exclude, key);
    }
    case "user":
      return make([{ kind: "channel", name: personalChannel(userId(given["user"])) }], event, data, exclude, key);
    case "client_type":
      return make([{ kind: "client_type", name: clientTypeName(given["client_type"]) }], event, data, exclude, key);
    default:
      return make([{ kind: "broadcast" }], event, data, exclude, key);
  }
}

function envelope(destination: Destination, publish: Publish, timestamp: string): string {
  let head: string;
  switch (destination.kind) {
    case "channel":
      head = `{"channel":${JSON.stringify(destination.name)},`;
      break;
    case "client_type":
      head = `{"client_type":${JSON.stringify(destination.name)},`;
      break;
    case "broadcast":
      head = '{"broadcast":true,';
  }
  const tail = publish.excludeClient === null ? "}" : `,"exclude_client":${JSON.stringify(publish.excludeClient)}}`;
  return `${head}"event":${JSON.stringify(publish.event)},"data":${publish.data},"timestamp":${JSON.stringify(timestamp)}${tail}`;
}

/** The topic a message goes to; on a cluster a channel's carries its hash tag: `<prefix>:ch:{<channel>}`. */
function topic(prefix: string, destination: Destination, sharded: boolean): string {
  switch (destination.kind) {
    case "channel":
      return sharded ? `${prefix}:ch:{${destination.name}}` : `${prefix}:ch:${destination.name}`;
    case "client_type":
      return `${prefix}:ct:${destination.name}`;
    case "broadcast":
      return `${prefix}:broadcast`;
  }
}

/** The hash of the gateways' settings: `<prefix>:namespaces`, on a cluster `{<prefix>}:namespaces`. */
export function namespacesKey(prefix: string, mode: RedisMode = "standalone"): string {
  return mode === "cluster" ? `{${prefix}}:namespaces` : `${prefix}:namespaces`;
}

/** How {@link build} publishes. */
export interface BuildContext {
  /** The key and channel prefix, the gateways' `GATEWAY_REDIS_PREFIX`. */
  prefix: string;
  /** The one timestamp of every event of the call. */
  timestamp: string;
  /**
   * The gateways' settings (`readNamespaces` of `publisher/namespaces.ts`), or null when they
   * could not be read: then every channel event is scripted, which is always correct — except
   * on a cluster, where the script cannot read them itself and they must be known.
   */
  namespaces: Namespaces | null;
  /**
   * Where Redis runs: `standalone` by default. On a `cluster` channels use sharded pub/sub and
   * the script gets only keys of the channel's slot; `sentinel` writes what `standalone` writes.
   */
  mode?: RedisMode;
}

/**
 * The history script's call for `channel` (see `publisher/src/wire/script.rs`,
 * `PublishCall::invocation`): KEYS stream, meta, then the namespaces hash and the idempotency
 * key or `""`; on a cluster only the keys of the channel's slot (stream, meta, the idempotency
 * key when there is one), with the window, the policy and `SPUBLISH` in ARGV.
 */
function scriptCall(prefix: string, channel: string, to: string, payload: string, key: string | null, cluster: Namespaces | null): string[] {
  const ns = namespace(channel);
  const keys = [`${prefix}:{${channel}}:stream`, `${prefix}:{${channel}}:meta`];
  const idempotency = key === null ? "" : `${prefix}:{${channel}}:idem:${key}`;
  if (cluster === null) {
    // The idempotency window and the namespace's policy: the script reads both from the
    // namespaces hash, where the gateways wrote them.
    return ["EVALSHA", SCRIPT_SHA1, "4", ...keys, namespacesKey(prefix), idempotency, to, payload, ns, "", ""];
  }
  // On a cluster every key shares the channel's slot: no namespaces key, and no empty
  // idempotency key (it would hash to slot 0); the caller passes what the script cannot read.
  if (key !== null) keys.push(idempotency);
  const policy = cluster.history.get(ns) ?? NO_HISTORY;
  return ["EVALSHA", SCRIPT_SHA1, String(keys.length), ...keys, to, payload, ns, cluster.windowMs, policy, "SPUBLISH"];
}

/**
 * The Redis commands of `publishes`, published together: one list per publish, one message per
 * destination. Without the `SCRIPT LOAD` that leads them while the script is not loaded. On a
 * cluster, `pipelines` (`publisher/pipelines.ts`) groups the messages by slot. Throws a
 * TypeError for a cluster without `namespaces`.
 */
export function build(publishes: readonly Publish[], context: BuildContext): Message[][] {
  const { prefix, timestamp, namespaces } = context;
  const sharded = context.mode === "cluster";
  if (sharded && namespaces === null) throw new TypeError("on a Redis Cluster the gateways' namespaces must be known");
  return publishes.map((publish) =>
    publish.destinations.map((destination): Message => {
      const payload = envelope(destination, publish, timestamp);
      const to = topic(prefix, destination, sharded);
      if (destination.kind !== "channel") return { channel: null, topic: to, scripted: false, command: ["PUBLISH", to, payload] };
      const channel = destination.name;
      const key = publish.idempotencyKey;
      if (key === null && namespaces !== null && !namespaces.history.has(namespace(channel))) {
        return { channel, topic: to, scripted: false, command: [sharded ? "SPUBLISH" : "PUBLISH", to, payload] };
      }
      const command = scriptCall(prefix, channel, to, payload, key, sharded ? namespaces : null);
      return { channel, topic: to, scripted: true, command };
    }),
  );
}

/**
 * The receipt of `message` from its Redis reply: the script's `[offset, epoch, duplicate]`, or
 * PUBLISH's count of receiving nodes (which says nothing). Throws a TypeError for any other reply.
 */
export function receipt(message: Message, reply: unknown): Receipt {
  if (!message.scripted) return { channel: message.channel, offset: null, epoch: null, duplicate: false };
  if (!Array.isArray(reply) || reply.length !== 3) throw new TypeError(`unexpected reply to the publish script: ${String(reply)}`);
  const [offset, epoch, duplicate] = reply as [unknown, unknown, unknown];
  if (typeof offset !== "number" || typeof duplicate !== "number" || !Number.isSafeInteger(offset)) {
    throw new TypeError(`unexpected reply to the publish script: ${String(reply)}`);
  }
  if (offset > 0) return { channel: message.channel, offset, epoch: replyText(epoch), duplicate: duplicate === 1 };
  return { channel: message.channel, offset: null, epoch: null, duplicate: duplicate === 1 };
}
