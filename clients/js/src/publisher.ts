/**
 * The Node publisher: events from worker services into the gateways' Redis, which every gateway
 * replica delivers to its clients. Node only; it needs the `redis` package (node-redis 5 or 6).
 *
 *   const publisher = new Publisher({ url: "redis://localhost:6379", prefix: "gw" });
 *   const receipt = await publisher.publishChannel("jobs", "job_progress", { job_id: "abc", progress: 45.5 });
 *   await publisher.publishUser("42", "photo_ready", { photo: "p1" });
 *   await publisher.close();
 *
 * On a Redis Cluster or behind Sentinel, as the gateways' `GATEWAY_REDIS_MODE` says:
 *
 *   new Publisher({ mode: "cluster", url: "redis://10.0.0.1:6379,redis://10.0.0.2:6379" });
 *   new Publisher({ mode: "sentinel", url: "redis://s1:26379,redis://s2:26379", sentinelMaster: "mymaster" });
 *
 * What goes to Redis is exactly what the Rust `publisher` crate and the Python publisher write,
 * checked against the shared test vectors `publisher/vectors/publish.json`:
 *
 *   publisher/wire.ts        the pure command builder: envelopes, EVALSHA, (S)PUBLISH, receipts
 *   publisher/pipelines.ts   which messages go out together: on a cluster, one pipeline per slot
 *   publisher/namespaces.ts  the gateways' settings read from the namespaces hash
 *   publisher/topology.ts    the modes and their urls, checked
 *   publisher/connection.ts  node-redis's client, cluster or sentinel behind one interface
 *   publisher/names.ts       the naming rules of channels, events, users and client types
 *   publisher/errors.ts      the error classes, each with the vectors' `code`
 *   publisher/script.ts      the history script, publisher/src/publish.lua byte for byte
 *
 * A call (1) validates every publish in it (nothing is sent if one is invalid); (2) reads the
 * gateways' settings from `<prefix>:namespaces` (`{<prefix>}:namespaces` on a cluster), at most
 * every 5 s; (3) sends every message of the call in one pipelined round trip (not a
 * transaction) — on a cluster one per hash slot, all at once — led by `SCRIPT LOAD` while the
 * script is not known to be loaded; (4) if Redis lost its scripts (`NOSCRIPT`: a restart,
 * `SCRIPT FLUSH`, a cluster node that never had it), loads the script there and sends again
 * exactly the script calls that failed. Nothing is retried otherwise: a retried pipeline could
 * publish twice. Give channel and user events an idempotency key if you retry them yourself.
 */

import { connect, givenLink, within, type Link, type RedisCommandClient } from "./publisher/connection.js";
import { InvalidConfiguration, InvalidPublish, PublishFailed } from "./publisher/errors.js";
import { readNamespaces, type Namespaces } from "./publisher/namespaces.js";
import { pipelines } from "./publisher/pipelines.js";
import { SCRIPT } from "./publisher/script.js";
import { parseTopology, type RedisMode, type Topology } from "./publisher/topology.js";
import {
  build,
  fromFields,
  namespacesKey,
  receipt,
  timestampNow,
  toChannel,
  toChannels,
  toClientType,
  toEveryone,
  toUser,
  type Message,
  type Publish,
  type PublishFields,
  type PublishOptions,
  type Receipt,
} from "./publisher/wire.js";

export {
  InvalidChannel,
  InvalidClientType,
  InvalidConfiguration,
  InvalidData,
  InvalidEvent,
  InvalidIdempotencyKey,
  InvalidName,
  InvalidPublish,
  InvalidTarget,
  InvalidUser,
  PublisherError,
  PublishFailed,
  ReservedEvent,
} from "./publisher/errors.js";
export { RESERVED_EVENT_NAMES } from "./publisher/names.js";
export { SCRIPT, SCRIPT_SHA1 } from "./publisher/script.js";
export { REDIS_MODES, type RedisMode } from "./publisher/topology.js";
export type { RedisCommandClient } from "./publisher/connection.js";
export type { PublishFields, PublishOptions, Receipt } from "./publisher/wire.js";

export interface PublisherOptions {
  /**
   * The Redis of the gateways (`GATEWAY_REDIS_URL`): `redis://[[user]:password@]host[:port][/db]`
   * or `rediss://…`. In `cluster` mode a comma-separated list of seed nodes (their credentials
   * and TLS apply to every node); in `sentinel` mode a comma-separated list of the sentinels
   * (their credentials and TLS are the sentinels'; the master's are in `clientOptions`).
   */
  url?: string;
  /** The gateways' `GATEWAY_REDIS_PREFIX`; `gw` by default. */
  prefix?: string;
  /**
   * How the gateways' Redis is laid out, their `GATEWAY_REDIS_MODE`: `standalone` (one server,
   * the default), `cluster` (a Redis Cluster: sharded pub/sub, hash-tagged names) or `sentinel`
   * (the master that the sentinels name; it is written to as a standalone one).
   */
  mode?: RedisMode;
  /** The name of the master the sentinels watch (`GATEWAY_REDIS_SENTINEL_MASTER`): sentinel mode only, and required there. */
  sentinelMaster?: string;
  /**
   * A connected node-redis client to publish through instead of `url` (one made with TLS
   * settings, say), in standalone mode only; `close()` leaves it open. Its RESP version and type
   * mapping do not matter.
   */
  client?: RedisCommandClient;
  /** How long connecting, and each round trip, may take; 5000 ms by default. */
  timeoutMs?: number;
  /** How long the settings read from the namespaces hash are trusted; 5000 ms by default. */
  namespacesRefreshMs?: number;
  /**
   * More options of node-redis for the connections the publisher makes from `url` (`password`,
   * `database`, `socket: { tls, ca }`, …): `createClient`'s; on a cluster every node's
   * (`defaults` of `createCluster`); behind Sentinel the master's (`nodeClientOptions`).
   */
  clientOptions?: Readonly<Record<string, unknown>>;
}

/** A command and the key whose slot it goes to on a cluster. */
type Routed = readonly [command: readonly string[], key: string];

/** node-redis's reply errors (`ErrorReply` and its subclasses), from whichever copy of it. */
function isErrorReply(value: unknown): value is Error {
  for (let proto: unknown = value; proto !== null && typeof proto === "object"; proto = Object.getPrototypeOf(proto)) {
    if ((proto as { constructor?: { name?: unknown } }).constructor?.name === "ErrorReply") return true;
  }
  return false;
}

function isNoScript(reply: unknown): boolean {
  return reply instanceof Error && reply.message.startsWith("NOSCRIPT");
}

/** The server is no master (any more): a failover happened, the connection must be made anew. */
function isDemoted(reply: Error): boolean {
  return reply.message.startsWith("READONLY") || reply.message.startsWith("MASTERDOWN");
}

function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function routed(message: Message): Routed {
  return [message.command, message.topic];
}

/** The topology of `options`, or null for a client of the application's. */
function topologyOf(options: PublisherOptions): Topology | null {
  if (options.client === undefined) return parseTopology(options.mode, options.url, options.sentinelMaster);
  if ((options.mode ?? "standalone") !== "standalone") {
    throw new InvalidConfiguration(`a client of the application's is published through in standalone mode only, not ${JSON.stringify(options.mode)}: give the url instead`);
  }
  if (typeof options.sentinelMaster === "string" && options.sentinelMaster.trim() !== "") {
    throw new InvalidConfiguration('sentinelMaster is for mode "sentinel" only');
  }
  return null;
}

/**
 * Publishes events to the gateways' Redis bus. Share one per process: calls may overlap, and
 * each is one round trip (two when the namespaces are read, three after a `NOSCRIPT`); on a
 * cluster one per hash slot, all at once.
 *
 * Every method validates first and rejects with an {@link InvalidPublish} error before
 * anything reaches Redis; Redis failures reject with {@link PublishFailed}. The constructor
 * throws {@link InvalidConfiguration} for options that do not fit together.
 */
export class Publisher {
  /** The key and channel prefix. */
  readonly prefix: string;
  /** How the gateways' Redis is laid out. */
  readonly mode: RedisMode;
  readonly #topology: Topology | null;
  readonly #given: Link | null;
  readonly #timeoutMs: number;
  readonly #refreshMs: number;
  readonly #clientOptions: Readonly<Record<string, unknown>>;
  #owned: Link | null = null;
  #connecting: Promise<Link> | null = null;
  #closed = false;
  #scriptLoaded = false;
  /** Why Redis refused the last `SCRIPT LOAD`, if it did. */
  #loadError: Error | null = null;
  #namespaces: Namespaces | null = null;
  #readAt: number | null = null;

  constructor(options: PublisherOptions) {
    if (typeof options.url !== "string" && options.client === undefined) {
      throw new TypeError("Publisher needs a Redis url or a client");
    }
    this.prefix = options.prefix ?? "gw";
    if (typeof this.prefix !== "string") throw new TypeError("prefix must be a string");
    this.#topology = topologyOf(options);
    this.mode = this.#topology?.mode ?? "standalone";
    this.#given = options.client === undefined ? null : givenLink(options.client);
    this.#timeoutMs = options.timeoutMs ?? 5000;
    this.#refreshMs = options.namespacesRefreshMs ?? 5000;
    this.#clientOptions = options.clientOptions ?? {};
  }

  /** Publishes `event` with `data` to the subscribers of `channel`. */
  async publishChannel(channel: string, event: string, data: unknown, options: PublishOptions = {}): Promise<Receipt> {
    return only(await this.#publish([toChannel(channel, event, data, options)]));
  }

  /** Publishes `event` to each of `channels`: one receipt per channel, in order. */
  async publishChannels(channels: readonly string[], event: string, data: unknown, options: PublishOptions = {}): Promise<Receipt[]> {
    const [receipts] = await this.#publish([toChannels(channels, event, data, options)]);
    return receipts ?? [];
  }

  /** Publishes `event` to every connection of `user`, on every gateway (its channel `#<user>`). */
  async publishUser(user: string, event: string, data: unknown, options: PublishOptions = {}): Promise<Receipt> {
    return only(await this.#publish([toUser(user, event, data, options)]));
  }

  /** Publishes `event` to every connection registered as `clientType`. */
  async publishClientType(clientType: string, event: string, data: unknown, options: { excludeClient?: string } = {}): Promise<Receipt> {
    return only(await this.#publish([toClientType(clientType, event, data, options)]));
  }

  /** Publishes `event` to every connection. */
  async broadcast(event: string, data: unknown, options: { excludeClient?: string } = {}): Promise<Receipt> {
    return only(await this.#publish([toEveryone(event, data, options)]));
  }

  /**
   * Publishes many events in one round trip (on a cluster, one per hash slot), in order. Each
   * item has the admin API's publish fields (`{ channel: "jobs", event: "e", data: … }`, or
   * `channels`, `user`, `client_type`, `broadcast: true`; `exclude_client`, `idempotency_key`).
   * Resolves with one list per item, one receipt per destination. Every item is validated
   * first: if one is invalid, nothing is published.
   */
  async publishBatch(items: readonly PublishFields[]): Promise<Receipt[][]> {
    if (!Array.isArray(items)) throw new InvalidPublish("publishBatch takes an array of publishes");
    return this.#publish(items.map((item: unknown) => fromFields(item)));
  }

  /** Closes the connections the publisher made (a `client` given to it stays open). */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#connecting?.catch(() => undefined);
    const link = this.#owned;
    this.#owned = null;
    await link?.close();
  }

  async #publish(publishes: readonly Publish[]): Promise<Receipt[][]> {
    if (publishes.length === 0) return [];
    const link = await this.#link();
    const namespaces = this.#cachedNamespaces() ?? (await this.#readNamespaces(link));
    // One call is published at one moment: one timestamp for all its events.
    const batch = build(publishes, { prefix: this.prefix, timestamp: timestampNow(), namespaces, mode: this.mode });
    const messages = batch.flat();
    const replies: unknown[] = [];
    const sent = pipelines(messages, this.mode).map(async (indexes) => {
      const got = await this.#publishPipeline(link, messages, indexes);
      indexes.forEach((index, k) => (replies[index] = got[k]));
    });
    await Promise.all(sent);
    return this.#receipts(batch, replies);
  }

  /** Publishes the messages at `indexes` in one pipeline, and again the script calls that met `NOSCRIPT`. */
  async #publishPipeline(link: Link, messages: readonly Message[], indexes: readonly number[]): Promise<unknown[]> {
    const replies = await this.#run(link, messages, indexes);
    const lost = indexes.filter((_, k) => isNoScript(replies[k]));
    if (lost.length === 0) return replies;
    // None of the script calls ran there: load the script where they went, and send exactly those again.
    this.#scriptLoaded = false;
    const again = await this.#run(link, messages, lost);
    let next = 0;
    return replies.map((reply) => (isNoScript(reply) ? again[next++] : reply));
  }

  /** The settings if they were read less than `namespacesRefreshMs` ago. */
  #cachedNamespaces(): Namespaces | null {
    if (this.#readAt !== null && performance.now() - this.#readAt < this.#refreshMs) return this.#namespaces;
    return null;
  }

  async #readNamespaces(link: Link): Promise<Namespaces | null> {
    const key = namespacesKey(this.prefix, this.mode);
    const [reply] = await this.#roundTrip(link, [[["HGETALL", key], key]]);
    let namespaces: Namespaces;
    try {
      if (reply instanceof Error) throw reply;
      namespaces = readNamespaces(reply);
    } catch (error) {
      // If Redis will not say, every channel event goes through the script: always correct,
      // except on a cluster, where the script cannot read the settings itself.
      if (this.mode !== "cluster") return null;
      throw new PublishFailed(`cannot read the gateways' settings from ${key}, which publishing on a Redis Cluster needs: ${reason(error)}`, { cause: error });
    }
    this.#namespaces = namespaces;
    this.#readAt = performance.now();
    return namespaces;
  }

  /**
   * Sends the messages at `indexes`, after `SCRIPT LOAD` while the script is not known to be
   * loaded: in the same round trip on one server; on a cluster first, to the node of their
   * slot, where only script calls need it (node-redis may send it to every node, and then not
   * before the calls of the same tick).
   */
  async #run(link: Link, messages: readonly Message[], indexes: readonly number[]): Promise<unknown[]> {
    const sent = indexes.map((index) => messages[index] as Message);
    const commands = sent.map(routed);
    const cluster = this.mode === "cluster";
    const load = !this.#scriptLoaded && (!cluster || sent.some((message) => message.scripted));
    if (!load) return this.#roundTrip(link, commands);
    const loading: Routed = [["SCRIPT", "LOAD", SCRIPT], sent[0]?.topic ?? ""];
    if (cluster) {
      const [loaded] = await this.#roundTrip(link, [loading]);
      this.#loaded(loaded);
      return this.#roundTrip(link, commands);
    }
    const replies = await this.#roundTrip(link, [loading, ...commands]);
    this.#loaded(replies.shift());
    return replies;
  }

  /** Notes the reply to `SCRIPT LOAD`. */
  #loaded(reply: unknown): void {
    if (reply instanceof Error) {
      this.#loadError = reply;
    } else {
      this.#scriptLoaded = true;
      this.#loadError = null;
    }
  }

  /**
   * Sends `commands` in one round trip: the link gets them all in one synchronous loop, and
   * node-redis writes what it got in one tick at once (a pipeline; on a cluster, one per node).
   * Answers each command's reply, or its error reply; a failure of the connection rejects the
   * whole call with PublishFailed.
   */
  async #roundTrip(link: Link, commands: readonly Routed[]): Promise<unknown[]> {
    const sent = commands.map(async ([command, key]) => link.send(command, key));
    let settled: PromiseSettledResult<unknown>[];
    try {
      settled = await within(Promise.allSettled(sent), this.#timeoutMs);
    } catch (error) {
      this.#drop(link);
      throw new PublishFailed(`no reply from Redis within ${this.#timeoutMs} ms`, { cause: error });
    }
    return settled.map((result) => {
      if (result.status === "fulfilled") return result.value;
      if (isErrorReply(result.reason)) {
        if (isDemoted(result.reason)) this.#drop(link);
        return result.reason;
      }
      this.#drop(link);
      throw new PublishFailed(`publishing through Redis failed: ${reason(result.reason)}`, { cause: result.reason });
    });
  }

  #receipts(batch: readonly Message[][], replies: readonly unknown[]): Receipt[][] {
    let next = 0;
    return batch.map((messages) =>
      messages.map((message) => {
        const reply = replies[next++];
        if (isNoScript(reply) && this.#loadError !== null) {
          throw new PublishFailed(`Redis refused to load the script: ${this.#loadError.message}`, { cause: this.#loadError });
        }
        if (reply instanceof Error) {
          const where = message.channel ?? message.topic;
          throw new PublishFailed(`Redis refused the publish to ${where}: ${reply.message}`, { cause: reply });
        }
        try {
          return receipt(message, reply);
        } catch (error) {
          throw new PublishFailed(reason(error), { cause: error });
        }
      }),
    );
  }

  /** The link to publish through: the client given, or the connections made from `url`. */
  async #link(): Promise<Link> {
    if (this.#closed) throw new PublishFailed("the publisher is closed");
    if (this.#given !== null) return this.#given;
    if (this.#owned?.ready === true) return this.#owned;
    this.#connecting ??= this.#connect().finally(() => (this.#connecting = null));
    return this.#connecting;
  }

  async #connect(): Promise<Link> {
    this.#owned?.destroy();
    this.#owned = null;
    if (this.#topology === null) throw new PublishFailed("the publisher has no Redis url");
    const link = await connect(this.#topology, { timeoutMs: this.#timeoutMs, clientOptions: this.#clientOptions });
    if (this.#closed) {
      link.destroy();
      throw new PublishFailed("the publisher is closed");
    }
    this.#owned = link;
    return link;
  }

  /** Drops a connection in doubt (it timed out, failed, or is no master), if the publisher made it. */
  #drop(link: Link): void {
    if (this.#owned === null || this.#owned !== link) return;
    this.#owned = null;
    link.destroy();
  }
}

function only(batch: Receipt[][]): Receipt {
  const first = batch[0]?.[0];
  if (first === undefined) throw new PublishFailed("no receipt");
  return first;
}
