/**
 * The publisher's way to the gateways' Redis, whatever its layout: a {@link Link} sends one
 * command and answers its reply. Made from the node-redis package, loaded when first needed:
 *
 *   standalone  `createClient`: one connection, no reconnecting in the background
 *   cluster     `createCluster` from the seed nodes: each command goes to the master of its
 *               key's slot (node-redis follows MOVED and ASK)
 *   sentinel    `createSentinel`: the sentinels name the master, node-redis follows failovers
 *
 * Commands sent in one synchronous loop go out together (node-redis writes what it got in one
 * tick at once, per node): that is the pipeline.
 */

import { PublishFailed } from "./errors.js";
import type { Topology } from "./topology.js";

/** What the publisher needs of a Redis client; node-redis's clients (`createClient()`) have it. */
export interface RedisCommandClient {
  /** Sends one command; resolves with its reply, rejects with the server's error reply. */
  sendCommand(args: string[]): Promise<unknown>;
}

/** A connection (or a cluster's connections) the publisher sends through. */
export interface Link {
  /**
   * Sends `command`; on a cluster to the master of `key`'s hash slot. Resolves with the reply,
   * rejects with the error reply or with why it could not be sent.
   */
  send(command: readonly string[], key: string): Promise<unknown>;
  /** Whether it can still be used; a link that is not is made anew. */
  readonly ready: boolean;
  /** Closes it once the replies in flight are in. */
  close(): Promise<void>;
  /** Closes it at once. */
  destroy(): void;
}

/** What connecting needs beyond the topology. */
export interface ConnectOptions {
  /** How long connecting may take, and each reply. */
  timeoutMs: number;
  /** More node-redis client options: `createClient`'s, a cluster's `defaults`, a sentinel's `nodeClientOptions`. */
  clientOptions: Readonly<Record<string, unknown>>;
}

/** A promise given up on after a while. */
export class Timeout extends Error {}

/** `promise`, or a rejection with {@link Timeout} after `ms`. */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Timeout(`timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** What the publisher uses of node-redis's clients, clusters and sentinels. */
interface Closable {
  readonly isReady?: boolean;
  connect(): Promise<unknown>;
  close(): Promise<unknown>;
  destroy(): unknown;
  on(event: "error", listener: (error: unknown) => void): unknown;
}

interface NodeClient extends Closable {
  sendCommand(args: string[]): Promise<unknown>;
}

interface NodeCluster extends Closable {
  sendCommand(firstKey: string, isReadonly: boolean, args: string[]): Promise<unknown>;
}

interface NodeSentinel extends Closable {
  sendCommand(isReadonly: boolean, args: string[]): Promise<unknown>;
}

interface NodeRedis {
  createClient(options: object): NodeClient;
  createCluster(options: object): NodeCluster;
  createSentinel(options: object): NodeSentinel;
}

function destroyQuietly(client: Closable): void {
  try {
    // node-redis's sentinel answers a promise.
    void Promise.resolve(client.destroy()).catch(() => undefined);
  } catch {
    // already closed
  }
}

/** `client`'s link, sending with `send`. */
function linkOf(client: Closable, send: (args: string[], key: string) => Promise<unknown>, ready: (client: Closable) => boolean): Link {
  return {
    send: (command, key) => send([...command], key),
    get ready() {
      return ready(client);
    },
    close: async () => {
      try {
        await client.close();
      } catch {
        destroyQuietly(client);
      }
    },
    destroy: () => destroyQuietly(client),
  };
}

/** The link of a client the application gave: the publisher never closes it. */
export function givenLink(client: RedisCommandClient): Link {
  return {
    send: (command) => client.sendCommand([...command]),
    ready: true,
    close: () => Promise.resolve(),
    destroy: () => undefined,
  };
}

function object(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
}

/** `options` but `url`: the urls are the publisher's. */
function withoutUrl(options: Readonly<Record<string, unknown>>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(options).filter(([name]) => name !== "url"));
}

/** The user name and password of the first of `urls` that has any. */
function credentials(urls: readonly string[]): { username?: string; password?: string } {
  for (const url of urls) {
    const { username, password } = new URL(url);
    if (username !== "" || password !== "") {
      return {
        ...(username === "" ? {} : { username: decodeURIComponent(username) }),
        ...(password === "" ? {} : { password: decodeURIComponent(password) }),
      };
    }
  }
  return {};
}

/** A sentinel's address: the url's host and port (6379 where it names none, as in every Redis URL). */
function address(url: string): { host: string; port: number } {
  const { hostname, port } = new URL(url);
  return { host: hostname.replace(/^\[(.*)\]$/, "$1"), port: port === "" ? 6379 : Number(port) };
}

/** The options of node-redis's `createClient` for one server. */
export function standaloneOptions(url: string, options: ConnectOptions): Record<string, unknown> {
  const { clientOptions, timeoutMs } = options;
  return {
    ...clientOptions,
    url,
    // RESP2 speaks to every Redis the gateways speak to; replies are read either way.
    RESP: 2,
    // A publish fails at once while the connection is down, instead of waiting in a queue.
    disableOfflineQueue: true,
    // No reconnecting in the background: the next publish connects again, as a new client.
    socket: { connectTimeout: timeoutMs, reconnectStrategy: false, ...object(clientOptions["socket"]) },
    // node-redis 6 gives up on a reply after 5 s of its own: the same bound as the publisher's.
    commandOptions: { timeout: timeoutMs, ...object(clientOptions["commandOptions"]) },
  };
}

/**
 * The options of node-redis's `createCluster`: the seed nodes, and for every node's connection
 * the seeds' credentials, TLS where a seed is `rediss://`, and `clientOptions`.
 */
export function clusterOptions(urls: readonly string[], options: ConnectOptions): Record<string, unknown> {
  const { clientOptions, timeoutMs } = options;
  const tls = urls.some((url) => url.startsWith("rediss://")) ? { tls: true } : {};
  const { commandOptions, socket, ...rest } = withoutUrl(clientOptions);
  return {
    rootNodes: urls.map((url) => ({ url })),
    defaults: {
      ...credentials(urls),
      ...rest,
      disableOfflineQueue: true,
      socket: { connectTimeout: timeoutMs, reconnectStrategy: false, ...tls, ...object(socket) },
    },
    RESP: 2,
    commandOptions: { timeout: timeoutMs, ...object(commandOptions) },
  };
}

/**
 * The options of node-redis's `createSentinel`: the sentinels, with the credentials and TLS
 * their urls give; the master named `master`, connected to with `clientOptions`.
 */
export function sentinelOptions(urls: readonly string[], master: string, options: ConnectOptions): Record<string, unknown> {
  const { clientOptions, timeoutMs } = options;
  const tls = urls.some((url) => url.startsWith("rediss://")) ? { tls: true } : {};
  const { commandOptions, socket, ...rest } = withoutUrl(clientOptions);
  return {
    name: master,
    sentinelRootNodes: urls.map(address),
    sentinelClientOptions: { ...credentials(urls), socket: { connectTimeout: timeoutMs, ...tls } },
    nodeClientOptions: { ...rest, socket: { connectTimeout: timeoutMs, ...object(socket) } },
    RESP: 2,
    // One connection to the master for all commands: those of one tick go out together.
    reserveClient: true,
    commandOptions: { timeout: timeoutMs, ...object(commandOptions) },
  };
}

async function nodeRedis(): Promise<NodeRedis> {
  try {
    return await import("redis");
  } catch (error) {
    throw new PublishFailed("the Node publisher needs the redis package: npm install redis", { cause: error });
  }
}

function reason(error: unknown): string {
  if (error instanceof Timeout) return "timed out";
  return error instanceof Error ? error.message : String(error);
}

/** Connects to the Redis of `topology`; rejects with {@link PublishFailed}. */
export async function connect(topology: Topology, options: ConnectOptions): Promise<Link> {
  const redis = await nodeRedis();
  const [first = ""] = topology.urls;
  let client: Closable;
  let link: Link;
  switch (topology.mode) {
    case "standalone": {
      const standalone = redis.createClient(standaloneOptions(first, options));
      client = standalone;
      link = linkOf(client, (args) => standalone.sendCommand(args), (c) => c.isReady === true);
      break;
    }
    case "cluster": {
      const cluster = redis.createCluster(clusterOptions(topology.urls, options));
      client = cluster;
      link = linkOf(client, (args, key) => cluster.sendCommand(key, false, args), (c) => c.isReady !== false);
      break;
    }
    case "sentinel": {
      const sentinel = redis.createSentinel(sentinelOptions(topology.urls, topology.sentinelMaster ?? "", options));
      client = sentinel;
      link = linkOf(client, (args) => sentinel.sendCommand(false, args), (c) => c.isReady !== false);
      break;
    }
  }
  // Every failure reaches the publish that meets it; without a listener, one would crash the process.
  client.on("error", () => undefined);
  try {
    await within(client.connect(), options.timeoutMs);
  } catch (error) {
    destroyQuietly(client);
    const what = topology.mode === "standalone" ? "Redis" : topology.mode === "cluster" ? "the Redis Cluster" : `the master ${JSON.stringify(topology.sentinelMaster)} through the sentinels`;
    throw new PublishFailed(`cannot connect to ${what}: ${reason(error)}`, { cause: error });
  }
  return link;
}
