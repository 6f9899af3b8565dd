/**
 * `GatewayClient`: one logical connection to the gateway that survives the loss of any single
 * socket. It owns the connection state machine (connect → authenticate → subscribe → live →
 * lost → wait → connect), the token, heartbeats, the requests awaiting replies, the offline
 * queue and every channel's position.
 *
 *   disconnected ──connect()──▶ connecting ──connection_established──▶ connected
 *        ▲                          │  ▲                                   │
 *        └──── close, backoff ◀─────┘  └────────── wait, reconnect ◀───────┘
 *   any state ──close() or 4001/4003/4004/1000──▶ closed ──connect()──▶ connecting
 */

import { Backoff, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { GatewayError } from "./errors.js";
import {
  classifyFrame,
  type ClientFrame,
  type ConnectionEstablishedFrame,
  type ControlFrame,
  type GatewayEvent,
  type HistoryFrame,
  type Position,
  type PresenceClient,
  type PresenceFrame,
  type PublishedFrame,
  type PublishFrame,
  type RegisteredFrame,
  type RegisterFrame,
  type ReplyFrame,
  type RequestId,
  type SubscribedFrame,
} from "./frames.js";
import { closeAction } from "./policy.js";
import { Positions } from "./positions.js";
import { byteLength, OfflineQueue, type QueueOptions } from "./queue.js";
import { SharedChannel, type Subscription, type SubscriptionHandlers } from "./subscription.js";
import { fetchToken, readClaims, refreshDelayMs, type TokenSource } from "./token.js";
import {
  type Transport,
  type TransportFactory,
  type TransportName,
  type WebSocketConstructor,
  webSocketTransport,
} from "./transport.js";

export type ConnectionState = "connecting" | "connected" | "disconnected" | "closed";

export interface GatewayClientOptions {
  /** The gateway's WebSocket URL: `wss://host/ws`, or `/ws` on the page's own origin. */
  url: string;
  /** A token, or a function that fetches one (called before each connect and before expiry). */
  token: TokenSource;
  /** Transports in fallback order (default `["websocket", "sse", "poll"]`; those not built in are skipped). */
  transports?: TransportName[];
  /** A WebSocket implementation, e.g. `ws` on Node before 22 (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** Reconnect delays (default 500 ms to 20 s, full jitter). */
  backoff?: BackoffOptions;
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

const DEFAULT_TRANSPORTS: TransportName[] = ["websocket", "sse", "poll"];

interface Pending {
  expect: ReplyFrame["type"];
  resolve(frame: ReplyFrame): void;
  reject(error: GatewayError): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** A request held while offline. */
interface QueuedRequest {
  frame: PublishFrame | RegisterFrame;
  expect: ReplyFrame["type"];
  resolve(frame: ReplyFrame): void;
  reject(error: GatewayError): void;
}

export class GatewayClient extends Emitter<ClientEvents> {
  private readonly options: GatewayClientOptions;
  private readonly factories: TransportFactory[];
  private readonly backoff: Backoff;
  private readonly positions = new Positions();
  private readonly channels = new Map<string, SharedChannel>();
  private readonly queue: OfflineQueue<QueuedRequest>;
  private readonly pending = new Map<RequestId, Pending>();

  private currentState: ConnectionState = "disconnected";
  /** Bumped by every connect attempt and close: callbacks of an older one are ignored. */
  private generation = 0;
  private socket: Transport | undefined;
  private info: ConnectionInfo | undefined;
  private token: string | undefined;
  /** The user of the last token or connection: its personal channel is `#<user>`. */
  private userId: string | undefined;
  private nextId = 1;
  private advisedDelayMs: number | undefined;
  private registration: { clientType: string; clientName: string | undefined } | undefined;
  private subscribeScheduled = false;
  /** 4002 closes since the last stable connection. */
  private expiredInARow = 0;

  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private stableTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private lastFrameAt = 0;
  private lastPingAt = 0;
  private lastCheckAt = 0;
  private heartbeatMs = 25_000;
  private removeBrowserListeners: (() => void) | undefined;

  constructor(options: GatewayClientOptions) {
    super();
    this.options = options;
    this.backoff = new Backoff(options.backoff);
    this.queue = new OfflineQueue(options.queue);
    this.factories = this.resolveTransports(options.transports ?? DEFAULT_TRANSPORTS);
  }

  /** "connecting" | "connected" | "disconnected" | "closed". */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** The transport in use while connected. */
  get transport(): TransportName | undefined {
    return this.currentState === "connected" ? this.info?.transport : undefined;
  }

  /** The current connection's ids, while connected. */
  get connection(): ConnectionInfo | undefined {
    return this.currentState === "connected" ? this.info : undefined;
  }

  /** The personal channel `#<user_id>`, once the user is known (from the token or the server). */
  get personalChannel(): string | undefined {
    return this.userId === undefined ? undefined : `#${this.userId}`;
  }

  /** Starts connecting (again, after `close()`); does nothing while connecting or connected. */
  connect(): void {
    if (this.currentState === "connecting" || this.currentState === "connected") return;
    if (this.currentState === "disconnected" && this.reconnectTimer !== undefined) {
      this.reconnectNow();
      return;
    }
    this.listenToBrowser();
    void this.open();
  }

  /** Closes the connection for good (until `connect()`); queued and unanswered requests are rejected. */
  close(): void {
    this.stop(1000, "closed by the client", new GatewayError("closed", "the client was closed"));
  }

  /** Subscribes to `channel`; every subscriber of one channel shares one server subscription. */
  subscribe<T = unknown>(channel: string, handlers: SubscriptionHandlers<T> = {}): Subscription<T> {
    let shared = this.channels.get(channel);
    if (!shared) {
      shared = new SharedChannel(channel, {
        position: (name) => this.positions.get(name),
        release: (name) => this.release(name),
      });
      this.channels.set(channel, shared);
    } else if (shared.state === "rejected") {
      shared.state = "pending"; // a new subscriber asks again
    }
    if (shared.state === "pending" && this.currentState === "connected") this.scheduleSubscribe();
    return shared.join(handlers);
  }

  /** Sets this connection's client type (and a display name); kept across reconnects. */
  register(clientType: string, clientName?: string): Promise<void> {
    this.registration = { clientType, clientName };
    const frame: RegisterFrame = { type: "register", client_type: clientType };
    if (clientName !== undefined) frame.client_name = clientName;
    const done = this.request<RegisteredFrame>(frame, "registered", true).then(() => undefined);
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
    const reply = await this.request<PublishedFrame>(frame, "published", true);
    const result: PublishResult = {};
    if (reply.offset !== undefined) result.offset = reply.offset;
    if (reply.epoch !== undefined) result.epoch = reply.epoch;
    return result;
  }

  /** Reads `channel`'s stored events (where it keeps history); needs a connection. */
  async history(channel: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const reply = await this.request<HistoryFrame>({ type: "history", channel, ...options }, "history", false);
    return { events: reply.events, position: reply.position };
  }

  /** Lists `channel`'s connections across the cluster (where presence is on); needs a connection. */
  async presence(channel: string): Promise<PresenceClient[]> {
    const reply = await this.request<PresenceFrame>({ type: "presence", channel }, "presence", false);
    return reply.clients;
  }

  // ---- connection ----

  private resolveTransports(names: TransportName[]): TransportFactory[] {
    const factories: TransportFactory[] = [];
    for (const name of names) {
      if (name !== "websocket") continue; // sse and poll: not built in yet
      const Impl =
        this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
      if (!Impl) {
        throw new Error("no WebSocket implementation: pass one as the `WebSocket` option (e.g. the ws package on Node before 22)");
      }
      factories.push(webSocketTransport(Impl));
    }
    if (factories.length === 0) {
      throw new Error(`none of the transports ${JSON.stringify(names)} is available: this version has "websocket"`);
    }
    return factories;
  }

  private setState(state: ConnectionState): void {
    if (this.currentState === state) return;
    this.currentState = state;
    this.emit("state", state);
  }

  private async open(): Promise<void> {
    this.clearTimer("reconnectTimer");
    const generation = ++this.generation;
    this.setState("connecting");
    // Covers the token getter too: one that never answers does not hold the client forever.
    this.connectTimer = setTimeout(() => {
      if (generation === this.generation) this.drop(1006, "connect timeout");
    }, this.options.connectTimeoutMs ?? 15_000);
    let token: string;
    try {
      token = await fetchToken(this.options.token);
    } catch (cause) {
      if (generation !== this.generation) return;
      this.emit("error", new GatewayError("token", `the token getter failed: ${String(cause)}`));
      this.lost(1006, "no token");
      return;
    }
    if (generation !== this.generation) return;
    this.token = token;
    this.userId = readClaims(token).userId ?? this.userId;
    const factory = this.factories[0] as TransportFactory;
    const channelMap = new Map<string, Position | undefined>();
    for (const name of this.serverChannels()) channelMap.set(name, this.positions.get(name));
    const personal = this.personalChannel;
    const personalSince = personal === undefined ? undefined : this.positions.get(personal);
    try {
      this.socket = factory.open(
        { url: this.options.url, token, channels: channelMap, personal: personalSince },
        {
          onOpen: () => {
            if (generation !== this.generation) return;
            const socket = this.socket;
            if (socket?.duplex) socket.send(personalSince ? { type: "auth", token, since: personalSince } : { type: "auth", token });
          },
          onFrame: (frame) => {
            if (generation === this.generation) this.onFrame(frame, factory.name);
          },
          onClose: (code, reason) => {
            if (generation === this.generation) this.lost(code, reason);
          },
        },
      );
    } catch (cause) {
      this.lost(1006, `cannot open the transport: ${String(cause)}`);
    }
  }

  /** Gives up on the current transport without waiting for it to close (dead or offline). */
  private drop(code: number, reason: string): void {
    const socket = this.socket;
    this.generation++;
    socket?.close(4000, reason);
    this.lost(code, reason);
  }

  /** The connection ended: decide what next from the close code. */
  private lost(code: number, reason: string): void {
    this.generation++;
    this.socket = undefined;
    this.endConnection(new GatewayError("disconnected", `the connection closed (${code}) before the reply came`));
    const advised = this.advisedDelayMs;
    this.advisedDelayMs = undefined;
    const action = closeAction(code, advised);
    if (action.kind === "stop") {
      this.stop(code, reason, new GatewayError("closed", `the server closed the connection with ${code} (${reason})`));
      return;
    }
    // A token refused as expired again right after a new one: back off rather than storm.
    const repeatedExpiry = code === 4002 && this.expiredInARow++ > 0;
    const delay = action.kind === "wait" && !repeatedExpiry ? action.delayMs : this.backoff.next();
    this.setState("disconnected");
    this.emit("disconnected", { code, reason, reconnectInMs: delay, reconnectAfterMs: advised });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.open();
    }, delay);
  }

  private stop(code: number, reason: string, error: GatewayError): void {
    const wasOpen = this.currentState !== "closed";
    const socket = this.socket;
    this.generation++;
    this.socket = undefined;
    socket?.close(1000, "client closed");
    this.clearTimer("reconnectTimer");
    this.endConnection(error);
    for (const queued of this.queue.drain()) queued.reject(error);
    this.removeBrowserListeners?.();
    this.removeBrowserListeners = undefined;
    this.setState("closed");
    if (wasOpen) this.emit("disconnected", { code, reason, reconnectInMs: undefined, reconnectAfterMs: undefined });
  }

  /** Clears what belongs to one connection; unanswered requests are rejected with `error`. */
  private endConnection(error: GatewayError): void {
    this.clearTimer("connectTimer");
    this.clearTimer("stableTimer");
    this.clearTimer("refreshTimer");
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    this.info = undefined;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const request of pending) {
      if (request.timer !== undefined) clearTimeout(request.timer);
      request.reject(error);
    }
    for (const shared of this.channels.values()) shared.reset();
  }

  private reconnectNow(): void {
    if (this.currentState !== "disconnected") return;
    this.clearTimer("reconnectTimer");
    void this.open();
  }

  private clearTimer(name: "reconnectTimer" | "connectTimer" | "stableTimer" | "refreshTimer"): void {
    const timer = this[name];
    if (timer !== undefined) clearTimeout(timer);
    this[name] = undefined;
  }

  // ---- frames ----

  private send(frame: ClientFrame): void {
    this.socket?.send(frame);
  }

  private onFrame(value: unknown, transport: TransportName): void {
    this.lastFrameAt = Date.now();
    const frame = classifyFrame(value);
    if (!frame) return;
    if (frame.kind === "event") this.onEvent(frame.event);
    else this.onControl(frame.frame, transport);
  }

  private onEvent(event: GatewayEvent): void {
    const channel = event.channel;
    if (channel !== undefined) {
      const shared = this.channels.get(channel);
      // A late event of a channel just unsubscribed.
      if (!shared && channel !== this.personalChannel) return;
      if (!this.positions.accept(channel, event)) return;
      shared?.dispatch(event);
    }
    this.emit("event", event);
  }

  private onControl(frame: ControlFrame, transport: TransportName): void {
    switch (frame.type) {
      case "connection_established":
        this.onEstablished(frame, transport);
        return;
      case "reload":
        this.reloadChannel(frame.channel, frame.position);
        return;
      case "disconnect":
        this.advisedDelayMs = frame.reconnect_after_ms;
        return;
      case "subscribed":
        // Replies to our own subscribe frames only (they all carry an id).
        if (frame.id !== undefined) this.settle(frame);
        return;
      case "unsubscribed":
        if (frame.id !== undefined) this.settle(frame);
        else this.unsubscribedByServer(frame.channels);
        return;
      default:
        if (frame.id !== undefined) this.settle(frame);
        else if (frame.type === "error") this.emit("error", new GatewayError(frame.code, frame.message));
    }
  }

  private onEstablished(frame: ConnectionEstablishedFrame, transport: TransportName): void {
    this.clearTimer("connectTimer");
    const personal = `#${frame.user_id}`;
    if (this.userId !== undefined && this.userId !== frame.user_id) this.positions.delete(`#${this.userId}`);
    this.userId = frame.user_id;
    this.info = { clientId: frame.client_id, userId: frame.user_id, nodeId: frame.node_id, transport };
    if (frame.position) {
      if (frame.recovered === false) this.reloadChannel(personal, frame.position);
      else if (frame.recovered === undefined && !this.positions.get(personal)) this.positions.set(personal, frame.position);
    }
    this.heartbeatMs = frame.heartbeat_interval_ms > 0 ? frame.heartbeat_interval_ms : (this.options.heartbeatIntervalMs ?? 25_000);
    this.startHeartbeat();
    this.stableTimer = setTimeout(() => {
      this.backoff.reset();
      this.expiredInARow = 0;
    }, this.options.stableAfterMs ?? 5000);
    this.scheduleRefresh();
    this.setState("connected");
    this.emit("connected", this.info);
    const personalShared = this.channels.get(personal);
    if (personalShared) {
      personalShared.subscribed({ channel: personal, recovered: frame.recovered, position: frame.position });
    }
    this.flushSubscribes();
    this.flushQueue();
  }

  private reloadChannel(channel: string, position: Position): void {
    this.positions.set(channel, position);
    this.channels.get(channel)?.reload(position);
    this.emit("reload", channel, position);
  }

  private unsubscribedByServer(channels: string[]): void {
    for (const name of channels) {
      const shared = this.channels.get(name);
      if (!shared) continue;
      this.channels.delete(name);
      this.positions.delete(name);
      shared.end(new GatewayError("unsubscribed", `the server unsubscribed this connection from ${name}`, name));
    }
  }

  // ---- subscriptions ----

  /** The channels that need a subscribe frame: all but the personal one, which the server subscribes. */
  private serverChannels(): string[] {
    const personal = this.personalChannel;
    const names: string[] = [];
    for (const [name, shared] of this.channels) {
      if (name !== personal && shared.state !== "rejected") names.push(name);
    }
    return names;
  }

  /** Subscribes the channels added in this tick with one frame. */
  private scheduleSubscribe(): void {
    if (this.subscribeScheduled) return;
    this.subscribeScheduled = true;
    queueMicrotask(() => {
      this.subscribeScheduled = false;
      this.flushSubscribes();
    });
  }

  private flushSubscribes(): void {
    if (this.currentState !== "connected") return;
    const personal = this.personalChannel;
    const names: string[] = [];
    for (const [name, shared] of this.channels) {
      if (shared.state !== "pending") continue;
      if (name === personal) {
        shared.subscribed({ channel: name, recovered: undefined, position: this.positions.get(name) });
        continue;
      }
      shared.state = "subscribing";
      names.push(name);
    }
    if (names.length === 0) return;
    const since = this.positions.since(names);
    const frame: ClientFrame = since ? { type: "subscribe", channels: names, since } : { type: "subscribe", channels: names };
    // The reply applies to these very channel objects, not to ones made again since.
    const sent = new Map(names.map((name) => [name, this.channels.get(name)]));
    this.request<SubscribedFrame>(frame, "subscribed", false).then(
      (reply) => this.onSubscribed(reply, since ?? {}, sent),
      () => {
        // Lost with the connection: the channels are subscribed again on the next one.
      },
    );
  }

  private onSubscribed(
    reply: SubscribedFrame,
    since: Record<string, Position>,
    sent: Map<string, SharedChannel | undefined>,
  ): void {
    const current = (name: string): SharedChannel | undefined => {
      const shared = this.channels.get(name);
      return shared && shared === sent.get(name) && shared.state === "subscribing" ? shared : undefined;
    };
    for (const name of reply.channels) {
      const shared = current(name);
      if (!shared) continue;
      const recovered = reply.recovered?.[name];
      const position = reply.positions?.[name];
      if (recovered === false && position) {
        this.reloadChannel(name, position);
      } else if (position && since[name] === undefined) {
        this.positions.set(name, position);
      }
      shared.subscribed({ channel: name, recovered, position });
    }
    for (const rejection of reply.rejected) {
      const shared = current(rejection.channel);
      if (!shared) continue;
      const error = new GatewayError(
        rejection.code,
        `subscription to ${rejection.channel} refused (${rejection.code})${rejection.message ? `: ${rejection.message}` : ""}`,
        rejection.channel,
      );
      // A server failure is retried on the next connection; a refusal is final.
      shared.fail(error, rejection.code === "internal" ? "pending" : "rejected");
      this.emit("error", error);
    }
  }

  private release(name: string): void {
    const shared = this.channels.get(name);
    if (!shared || shared.size > 0) return;
    this.channels.delete(name);
    if (name === this.personalChannel) return; // the server keeps it; so do we, with its position
    this.positions.delete(name);
    if (this.currentState === "connected" && (shared.state === "subscribing" || shared.state === "subscribed")) {
      this.request({ type: "unsubscribe", channels: [name] }, "unsubscribed", false).catch(() => {});
    }
  }

  // ---- requests ----

  private request<R extends ReplyFrame>(
    frame: Exclude<ClientFrame, { type: "auth" }>,
    expect: R["type"],
    queueable: boolean,
  ): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      const settle = {
        expect,
        resolve: resolve as (frame: ReplyFrame) => void,
        reject,
      };
      if (this.currentState === "connected") {
        this.sendRequest(frame, settle);
        return;
      }
      if (!queueable || this.currentState === "closed") {
        reject(new GatewayError(this.currentState === "closed" ? "closed" : "disconnected", `not connected (${this.currentState})`));
        return;
      }
      const queued: QueuedRequest = { frame: frame as PublishFrame | RegisterFrame, ...settle };
      const bytes = byteLength(JSON.stringify(frame));
      const offer = this.queue.offer(queued, bytes);
      if (!offer.accepted) {
        reject(new GatewayError("too_large", `the request (${bytes} bytes) does not fit the offline queue (${this.queue.maxBytes} bytes, ${this.queue.maxEntries} requests)`));
      }
      for (const dropped of offer.dropped) {
        dropped.reject(new GatewayError("queue_overflow", `dropped from the offline queue (full: at most ${this.queue.maxEntries} requests, ${this.queue.maxBytes} bytes) while offline`));
      }
    });
  }

  private sendRequest(frame: Exclude<ClientFrame, { type: "auth" }>, settle: Omit<Pending, "timer">): void {
    const id = this.nextId++;
    const timeoutMs = this.options.requestTimeoutMs ?? 10_000;
    const timer = setTimeout(() => {
      if (this.pending.delete(id)) settle.reject(new GatewayError("timeout", `no reply to ${frame.type} within ${timeoutMs} ms`));
    }, timeoutMs);
    this.pending.set(id, { ...settle, timer });
    this.send({ ...frame, id });
  }

  private settle(frame: ReplyFrame): void {
    const id = frame.id;
    if (id === undefined) return;
    const request = this.pending.get(id);
    if (!request) return;
    this.pending.delete(id);
    if (request.timer !== undefined) clearTimeout(request.timer);
    if (frame.type === "error") request.reject(new GatewayError(frame.code, frame.message));
    else if (frame.type === request.expect) request.resolve(frame);
    else request.reject(new GatewayError("bad_reply", `expected ${request.expect}, got ${frame.type}`));
  }

  private flushQueue(): void {
    let registered = false;
    for (const queued of this.queue.drain()) {
      if (queued.frame.type === "register") registered = true;
      this.sendRequest(queued.frame, queued);
    }
    const registration = this.registration;
    if (!registered && registration) {
      // A new connection has no client type: set the one registered before.
      const frame: RegisterFrame = { type: "register", client_type: registration.clientType };
      if (registration.clientName !== undefined) frame.client_name = registration.clientName;
      this.request<RegisteredFrame>(frame, "registered", false).catch((error: unknown) => {
        if (error instanceof GatewayError && error.code !== "disconnected") this.emit("error", error);
      });
    }
  }

  // ---- token refresh ----

  private scheduleRefresh(): void {
    this.clearTimer("refreshTimer");
    const source = this.options.token;
    const expiresAt = this.token === undefined ? undefined : readClaims(this.token).expiresAtMs;
    if (typeof source === "string" || expiresAt === undefined) return;
    const generation = this.generation;
    this.refreshTimer = setTimeout(() => void this.refresh(generation, expiresAt), refreshDelayMs(expiresAt, Date.now()));
  }

  private async refresh(generation: number, oldExpiry: number): Promise<void> {
    this.refreshTimer = undefined;
    let token: string;
    try {
      token = await fetchToken(this.options.token);
    } catch (cause) {
      if (generation !== this.generation) return;
      this.emit("error", new GatewayError("token", `the token getter failed: ${String(cause)}`));
      this.retryRefresh(generation, oldExpiry);
      return;
    }
    if (generation !== this.generation) return;
    const expiresAt = readClaims(token).expiresAtMs;
    if (expiresAt !== undefined && expiresAt <= oldExpiry) {
      // The getter gave no newer token yet: ask again a little later.
      this.retryRefresh(generation, oldExpiry);
      return;
    }
    try {
      await this.request({ type: "refresh", token }, "refreshed", false);
    } catch (error) {
      if (generation !== this.generation || !(error instanceof GatewayError)) return;
      this.emit("error", error);
      this.retryRefresh(generation, oldExpiry);
      return;
    }
    if (generation !== this.generation) return;
    this.token = token;
    this.scheduleRefresh();
  }

  /** Tries again halfway to the old token's expiry, while there is time; else 4002 will come. */
  private retryRefresh(generation: number, expiresAt: number): void {
    const left = expiresAt - Date.now();
    if (left < 200) return;
    this.refreshTimer = setTimeout(() => void this.refresh(generation, expiresAt), Math.min(left / 2, 30_000));
  }

  // ---- liveness ----

  private startHeartbeat(): void {
    const now = Date.now();
    this.lastFrameAt = now;
    this.lastPingAt = now;
    this.lastCheckAt = now;
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => this.checkHeartbeat(), this.checkEveryMs());
  }

  private checkEveryMs(): number {
    return Math.max(50, this.heartbeatMs / 4);
  }

  /** Pings once per heartbeat interval; a connection silent for two intervals is dead. */
  private checkHeartbeat(): void {
    const now = Date.now();
    const late = now - this.lastCheckAt > 2 * this.checkEveryMs();
    this.lastCheckAt = now;
    if (late) {
      // The timer itself was held up (a throttled background tab, a sleeping laptop): the
      // silence says nothing about the socket yet. Ask it, and judge on a punctual tick.
      this.ping(now);
      return;
    }
    if (now - this.lastFrameAt >= 2 * this.heartbeatMs) {
      this.drop(1006, `no frame for ${2 * this.heartbeatMs} ms`);
      return;
    }
    if (now - this.lastPingAt >= this.heartbeatMs) this.ping(now);
  }

  private ping(now: number): void {
    this.lastPingAt = now;
    this.send({ type: "ping" });
  }

  private listenToBrowser(): void {
    if (this.removeBrowserListeners || this.options.browserEvents === false) return;
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
    const online = () => this.reconnectNow();
    const offline = () => {
      if (this.currentState === "connected" || this.currentState === "connecting") this.drop(1006, "offline");
    };
    const visible = () => {
      if (document.visibilityState !== "visible") return;
      if (this.currentState === "disconnected") this.reconnectNow();
      // A socket that died while the page slept is found out within two heartbeats.
      else if (this.currentState === "connected") this.ping(Date.now());
    };
    target.addEventListener("online", online);
    target.addEventListener("offline", offline);
    document.addEventListener("visibilitychange", visible);
    this.removeBrowserListeners = () => {
      target.removeEventListener?.("online", online);
      target.removeEventListener?.("offline", offline);
      document.removeEventListener("visibilitychange", visible);
    };
  }
}
