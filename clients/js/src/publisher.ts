/**
 * The Node publisher: events from worker services into the gateways' Redis, which every gateway
 * replica delivers to its clients. Node only; it needs the `redis` package (node-redis 5 or 6).
 *
 *   const publisher = new Publisher({ url: "redis://localhost:6379", prefix: "gw" });
 *   const receipt = await publisher.publishChannel("jobs", "job_progress", { job_id: "abc", progress: 45.5 });
 *   await publisher.publishUser("42", "photo_ready", { photo: "p1" });
 *   await publisher.close();
 *
 * What goes to Redis is exactly what the Rust `publisher` crate and the Python publisher write,
 * checked against the shared test vectors `publisher/vectors/publish.json`:
 *
 *   publisher/wire.ts    the pure command builder: envelopes, EVALSHA or PUBLISH, receipts
 *   publisher/names.ts   the naming rules of channels, events, users and client types
 *   publisher/errors.ts  the error classes, each with the vectors' `code`
 *   publisher/script.ts  the history script, publisher/src/publish.lua byte for byte
 *
 * A call (1) validates every publish in it (nothing is sent if one is invalid); (2) reads which
 * namespaces keep history from `<prefix>:namespaces`, at most every 5 s; (3) sends every message
 * of the call in one pipelined round trip (not a transaction), led by `SCRIPT LOAD` while the
 * script is not known to be loaded; (4) if Redis lost its scripts (`NOSCRIPT`: a restart,
 * `SCRIPT FLUSH`), loads the script and sends again exactly the script calls that failed.
 * Nothing is retried otherwise: a retried pipeline could publish twice. Give channel and user
 * events an idempotency key if you retry them yourself.
 */

import { PublishFailed, InvalidPublish } from "./publisher/errors.js";
import { SCRIPT } from "./publisher/script.js";
import {
  build,
  fromFields,
  historyNamespaces,
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
export type { PublishFields, PublishOptions, Receipt } from "./publisher/wire.js";

/** What the publisher needs of a Redis client; node-redis's clients (`createClient()`) have it. */
export interface RedisCommandClient {
  /** Sends one command; resolves with its reply, rejects with the server's error reply. */
  sendCommand(args: string[]): Promise<unknown>;
}

export interface PublisherOptions {
  /** The Redis of the gateways: `redis://[[user]:password@]host[:port][/db]` or `rediss://…`. */
  url?: string;
  /** The gateways' `GATEWAY_REDIS_PREFIX`; `gw` by default. */
  prefix?: string;
  /**
   * A connected node-redis client to publish through instead of `url` (one made with TLS
   * settings, say); `close()` leaves it open. Its RESP version and type mapping do not matter.
   */
  client?: RedisCommandClient;
  /** How long connecting, and each round trip, may take; 5000 ms by default. */
  timeoutMs?: number;
  /** How long the namespaces read from `<prefix>:namespaces` are trusted; 5000 ms by default. */
  namespacesRefreshMs?: number;
  /**
   * More options of node-redis's `createClient` (`password`, `database`, `socket: { tls, ca }`,
   * …) for the client the publisher makes from `url`.
   */
  clientOptions?: Readonly<Record<string, unknown>>;
}

/** The client the publisher makes from `url`: what it uses of node-redis's. */
interface OwnedClient extends RedisCommandClient {
  readonly isReady: boolean;
  connect(): Promise<unknown>;
  close(): Promise<unknown>;
  destroy(): void;
  on(event: "error", listener: (error: unknown) => void): unknown;
}

const LOAD: readonly string[] = ["SCRIPT", "LOAD", SCRIPT];

class Timeout extends Error {}

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

function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function destroyQuietly(client: OwnedClient): void {
  try {
    client.destroy();
  } catch {
    // already closed
  }
}

/**
 * Publishes events to the gateways' Redis bus. Share one per process: calls may overlap, and
 * each is one round trip (two when the namespaces are read, three after a `NOSCRIPT`).
 *
 * Every method validates first and rejects with an {@link InvalidPublish} error before
 * anything reaches Redis; Redis failures reject with {@link PublishFailed}.
 */
export class Publisher {
  /** The key and channel prefix. */
  readonly prefix: string;
  readonly #url: string | null;
  readonly #given: RedisCommandClient | null;
  readonly #timeoutMs: number;
  readonly #refreshMs: number;
  readonly #clientOptions: Readonly<Record<string, unknown>>;
  #owned: OwnedClient | null = null;
  #connecting: Promise<OwnedClient> | null = null;
  #closed = false;
  #scriptLoaded = false;
  /** Why Redis refused the last `SCRIPT LOAD`, if it did. */
  #loadError: Error | null = null;
  #history: ReadonlySet<string> = new Set();
  #readAt: number | null = null;

  constructor(options: PublisherOptions) {
    if (typeof options.url !== "string" && options.client === undefined) {
      throw new TypeError("Publisher needs a Redis url or a client");
    }
    this.prefix = options.prefix ?? "gw";
    if (typeof this.prefix !== "string") throw new TypeError("prefix must be a string");
    this.#url = options.url ?? null;
    this.#given = options.client ?? null;
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
   * Publishes many events in one round trip, in order. Each item has the admin API's publish
   * fields (`{ channel: "jobs", event: "e", data: … }`, or `channels`, `user`, `client_type`,
   * `broadcast: true`; `exclude_client`, `idempotency_key`). Resolves with one list per item,
   * one receipt per destination. Every item is validated first: if one is invalid, nothing is
   * published.
   */
  async publishBatch(items: readonly PublishFields[]): Promise<Receipt[][]> {
    if (!Array.isArray(items)) throw new InvalidPublish("publishBatch takes an array of publishes");
    return this.#publish(items.map((item: unknown) => fromFields(item)));
  }

  /** Closes the connection the publisher made (a `client` given to it stays open). */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#connecting?.catch(() => undefined);
    const client = this.#owned;
    this.#owned = null;
    if (client === null) return;
    try {
      await client.close();
    } catch {
      destroyQuietly(client);
    }
  }

  async #publish(publishes: readonly Publish[]): Promise<Receipt[][]> {
    if (publishes.length === 0) return [];
    const client = await this.#client();
    const history = this.#cachedHistory() ?? (await this.#readHistory(client));
    // One call is published at one moment: one timestamp for all its events.
    const batch = build(publishes, { prefix: this.prefix, timestamp: timestampNow(), history });
    const messages = batch.flat();
    const all = messages.map((_, index) => index);
    const replies = await this.#run(client, messages, all);
    const lost = all.filter((index) => isNoScript(replies[index]));
    if (lost.length > 0) {
      this.#scriptLoaded = false;
      const again = await this.#run(client, messages, lost);
      lost.forEach((index, k) => (replies[index] = again[k]));
    }
    return this.#receipts(batch, replies);
  }

  /** The namespaces that keep history if they were read less than `namespacesRefreshMs` ago. */
  #cachedHistory(): ReadonlySet<string> | null {
    if (this.#readAt !== null && performance.now() - this.#readAt < this.#refreshMs) return this.#history;
    return null;
  }

  async #readHistory(client: RedisCommandClient): Promise<ReadonlySet<string> | null> {
    const [reply] = await this.#roundTrip(client, [["HGETALL", `${this.prefix}:namespaces`]]);
    // If Redis will not say, every channel event goes through the script: always correct.
    if (reply instanceof Error) return null;
    let names: Set<string>;
    try {
      names = historyNamespaces(reply);
    } catch {
      return null;
    }
    this.#history = names;
    this.#readAt = performance.now();
    return names;
  }

  /** Sends the messages at `indexes`, after `SCRIPT LOAD` while the script is not known to be loaded. */
  async #run(client: RedisCommandClient, messages: readonly Message[], indexes: readonly number[]): Promise<unknown[]> {
    const load = !this.#scriptLoaded;
    const commands = indexes.map((index) => (messages[index] as Message).command);
    const replies = await this.#roundTrip(client, load ? [LOAD, ...commands] : commands);
    if (!load) return replies;
    const loaded = replies.shift();
    if (loaded instanceof Error) {
      this.#loadError = loaded;
    } else {
      this.#scriptLoaded = true;
      this.#loadError = null;
    }
    return replies;
  }

  /**
   * Sends `commands` in one round trip: the client gets them all in one synchronous loop, and
   * node-redis writes what it got in one tick at once (a pipeline). Answers each command's reply,
   * or its error reply; a failure of the connection rejects the whole call with PublishFailed.
   */
  async #roundTrip(client: RedisCommandClient, commands: readonly (readonly string[])[]): Promise<unknown[]> {
    const sent = commands.map(async (command) => client.sendCommand([...command]));
    let settled: PromiseSettledResult<unknown>[];
    try {
      settled = await this.#within(Promise.allSettled(sent));
    } catch (error) {
      this.#drop(client);
      throw new PublishFailed(`no reply from Redis within ${this.#timeoutMs} ms`, { cause: error });
    }
    return settled.map((result) => {
      if (result.status === "fulfilled") return result.value;
      if (isErrorReply(result.reason)) return result.reason;
      this.#drop(client);
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
          const where = message.channel ?? message.command[1] ?? "";
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

  /** The client to publish through: the one given, or the one made from `url`, connected. */
  async #client(): Promise<RedisCommandClient> {
    if (this.#closed) throw new PublishFailed("the publisher is closed");
    if (this.#given !== null) return this.#given;
    if (this.#owned?.isReady === true) return this.#owned;
    this.#connecting ??= this.#connect().finally(() => (this.#connecting = null));
    return this.#connecting;
  }

  async #connect(): Promise<OwnedClient> {
    if (this.#owned !== null) destroyQuietly(this.#owned);
    this.#owned = null;
    let createClient: (options: object) => unknown;
    try {
      ({ createClient } = (await import("redis")) as unknown as { createClient: (options: object) => unknown });
    } catch (error) {
      throw new PublishFailed("the Node publisher needs the redis package: npm install redis", { cause: error });
    }
    const object = (value: unknown) => (typeof value === "object" && value !== null ? value : {});
    const socket = object(this.#clientOptions["socket"]);
    const commandOptions = object(this.#clientOptions["commandOptions"]);
    const client = createClient({
      ...this.#clientOptions,
      url: this.#url,
      // RESP2 speaks to every Redis the gateways speak to; replies are read either way.
      RESP: 2,
      // A publish fails at once while the connection is down, instead of waiting in a queue.
      disableOfflineQueue: true,
      // No reconnecting in the background: the next publish connects again, as a new client.
      socket: { connectTimeout: this.#timeoutMs, reconnectStrategy: false, ...socket },
      // node-redis 6 gives up on a reply after 5 s of its own: the same bound as the publisher's.
      commandOptions: { timeout: this.#timeoutMs, ...commandOptions },
    }) as OwnedClient;
    // Every failure reaches the publish that meets it; without a listener, one would crash the process.
    client.on("error", () => undefined);
    try {
      await this.#within(client.connect());
    } catch (error) {
      destroyQuietly(client);
      throw new PublishFailed(`cannot connect to Redis: ${error instanceof Timeout ? "timed out" : reason(error)}`, { cause: error });
    }
    if (this.#closed) {
      destroyQuietly(client);
      throw new PublishFailed("the publisher is closed");
    }
    this.#owned = client;
    return client;
  }

  /** Drops a connection in doubt (it timed out or failed), if the publisher made it. */
  #drop(client: RedisCommandClient): void {
    const owned = this.#owned;
    if (owned === null || owned !== client) return;
    this.#owned = null;
    destroyQuietly(owned);
  }

  /** `promise`, or a rejection with Timeout after `timeoutMs`. */
  async #within<T>(promise: Promise<T>): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Timeout(`timed out after ${this.#timeoutMs} ms`)), this.#timeoutMs);
    });
    try {
      return await Promise.race([promise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

function only(batch: Receipt[][]): Receipt {
  const first = batch[0]?.[0];
  if (first === undefined) throw new PublishFailed("no receipt");
  return first;
}
