/**
 * `GatewayClient`: one logical connection to the gateway that survives the loss of any single
 * socket. This is the public class; the work is done by internal modules it delegates to:
 *
 *   connection.ts  the connection state machine, reconnect backoff, the frames that drive it;
 *                  the state of the modules below, which are functions of it
 *   transports.ts  the transport in use: falling back, and moving back to WebSocket (the probe)
 *   requests.ts    requests: replies by id, timeouts, the offline queue
 *   channels.ts    subscriptions and every channel's position
 *   liveness.ts    heartbeats; the browser's online, offline and visibility events
 *   refresh.ts     refreshing the token before it expires
 *
 *   disconnected ──connect()──▶ connecting ──connection_established──▶ connected
 *        ▲                          │  ▲                                   │
 *        └──── close, backoff ◀─────┘  └────────── wait, reconnect ◀───────┘
 *   any state ──close() or 4001/4003/4004/1000──▶ closed ──connect()──▶ connecting
 */

import type { BackoffOptions } from "./backoff.js";
import { subscribe } from "./channels.js";
import type { Codec } from "./codec.js";
import { Connection } from "./connection.js";
import { Emitter } from "./emitter.js";
import { GatewayError } from "./errors.js";
import type {
  GatewayEvent,
  HistoryFrame,
  Position,
  PresenceClient,
  PresenceFrame,
  PublishedFrame,
  PublishFrame,
  RegisteredFrame,
  RegisterFrame,
} from "./frames.js";
import type { QueueOptions } from "./queue.js";
import { request } from "./requests.js";
import type { Subscription, SubscriptionHandlers } from "./subscription.js";
import type { TokenSource } from "./token.js";
import type { TransportName, WebSocketConstructor } from "./transport.js";

export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";

export interface GatewayClientOptions {
  /** The gateway's WebSocket URL: `wss://host/ws`, or `/ws` on the page's own origin. */
  url: string;
  /** A token, or a function that fetches one (called before each connect and before expiry). */
  token: TokenSource;
  /**
   * Transports in fallback order (default `["websocket", "sse", "poll"]`): the client moves to
   * the next one when one cannot connect, and tries WebSocket again now and then while on a
   * later one. `sse` and `poll` need a global `fetch`; without one they are skipped.
   */
  transports?: TransportName[];
  /** A WebSocket implementation, e.g. `ws` on Node before 22 (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /**
   * The WebSocket's encoding: `"json"` (default), or a codec such as `msgpack` from
   * `@gateway/client/msgpack` (whose `GatewayClient` also takes `"msgpack"`). SSE and poll are
   * always JSON; events and replies are the same in every format.
   */
  format?: "json" | Codec;
  /** Reconnect delays (default 500 ms to 20 s, full jitter). */
  backoff?: BackoffOptions;
  /** How often WebSocket is tried again while on SSE or poll (default 30 s, then backing off up to 5 min). */
  upgradeBackoff?: BackoffOptions;
  /** A connection up this long resets the backoff (default 5000 ms). */
  stableAfterMs?: number;
  /** The offline queue's bounds (default 100 requests, 256 KiB). */
  queue?: QueueOptions;
  /** How long a request waits for its reply (default 10 000 ms). */
  requestTimeoutMs?: number;
  /** How long a connection may take to be established (default 15 000 ms). */
  connectTimeoutMs?: number;
  /** Heartbeat interval when the server advises none (default 25 000 ms). */
  heartbeatIntervalMs?: number;
  /** Listen to the browser's online/offline and page-visibility events (default true). */
  browserEvents?: boolean;
}

/** Who and where this connection is, from `connection_established`. */
export interface ConnectionInfo {
  clientId: string;
  userId: string;
  nodeId: string;
  transport: TransportName;
}

/** How a connection ended, and what the client does next. */
export interface DisconnectInfo {
  code: number;
  reason: string;
  /** The delay before the next attempt; undefined when the client stopped (state `closed`). */
  reconnectInMs: number | undefined;
  /** The server's `reconnect_after_ms`, when a `disconnect` frame came before the close. */
  reconnectAfterMs: number | undefined;
}

export interface PublishResult {
  /** The event's offset and the channel's epoch, where the channel keeps history. */
  offset?: number;
  epoch?: string;
}

export interface HistoryOptions {
  since?: Position;
  limit?: number;
}

export interface HistoryResult {
  events: GatewayEvent[];
  position: Position;
}

export type ClientEvents = {
  state: [state: ConnectionState];
  /** Every event, once, whichever channel (or none) it came on. */
  event: [event: GatewayEvent];
  connected: [info: ConnectionInfo];
  disconnected: [info: DisconnectInfo];
  /** A channel (the personal one included) needs reloading: see `SubscriptionHandlers.onReload`. */
  reload: [channel: string, position: Position];
  error: [error: GatewayError];
};

export class GatewayClient extends Emitter<ClientEvents> {
  private readonly core: Connection;

  constructor(options: GatewayClientOptions) {
    super();
    this.core = new Connection(options, (event, ...args) => this.emit(event, ...args));
  }

  /** "connecting" | "connected" | "disconnected" | "closed". */
  get state(): ConnectionState {
    return this.core.state;
  }

  /** The transport in use while connected. */
  get transport(): TransportName | undefined {
    return this.core.state === "connected" ? this.core.info?.transport : undefined;
  }

  /** The current connection's ids, while connected. */
  get connection(): ConnectionInfo | undefined {
    return this.core.state === "connected" ? this.core.info : undefined;
  }

  /** The personal channel `#<user_id>`, once the user is known (from the token or the server). */
  get personalChannel(): string | undefined {
    return this.core.personalChannel;
  }

  /** Starts connecting (again, after `close()`); does nothing while connecting or connected. */
  connect(): void {
    this.core.connect();
  }

  /** Closes the connection for good (until `connect()`); queued and unanswered requests are rejected. */
  close(): void {
    this.core.stop(1000, "closed by the client", new GatewayError("closed", "the client was closed"));
  }

  /** Subscribes to `channel`; every subscriber of one channel shares one server subscription. */
  subscribe<T = unknown>(channel: string, handlers: SubscriptionHandlers<T> = {}): Subscription<T> {
    return subscribe(this.core, channel, handlers);
  }

  /** Sets this connection's client type (and a display name); kept across reconnects. */
  register(clientType: string, clientName?: string): Promise<void> {
    this.core.registration = { clientType, clientName };
    const frame: RegisterFrame = { type: "register", client_type: clientType };
    if (clientName !== undefined) frame.client_name = clientName;
    const done = request<RegisteredFrame>(this.core, frame, "registered", true).then(() => undefined);
    // Registering is often fire-and-forget: a failure is reported as an "error" event as well.
    done.catch((error: unknown) => {
      if (error instanceof GatewayError) this.emit("error", error);
    });
    return done;
  }

  /**
   * Publishes `event` with `data` on `channel` (where its namespace allows client publishing).
   * Resolves once the server acknowledged it (`published`); rejects with the server's error.
   * While offline the publish waits in the offline queue.
   */
  async publish(channel: string, event: string, data?: unknown): Promise<PublishResult> {
    const frame: PublishFrame = { type: "publish", channel, event };
    if (data !== undefined) frame.data = data;
    const reply = await request<PublishedFrame>(this.core, frame, "published", true);
    const result: PublishResult = {};
    if (reply.offset !== undefined) result.offset = reply.offset;
    if (reply.epoch !== undefined) result.epoch = reply.epoch;
    return result;
  }

  /** Reads `channel`'s stored events (where it keeps history); needs a connection. */
  async history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const reply = await request<HistoryFrame>(this.core, { type: "history", channel, ...options }, "history", false);
    return { events: reply.events, position: reply.position };
  }

  /** Lists `channel`'s connections across the cluster (where presence is on); needs a connection. */
  async presence(channel: string): Promise<PresenceClient[]> {
    const reply = await request<PresenceFrame>(this.core, { type: "presence", channel }, "presence", false);
    return reply.clients;
  }
}
