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
import { decodeCursor, encodeCursor } from "./cursor.js";
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
import { afterAttempt, type Attempt } from "./fallback.js";
import { closeAction } from "./policy.js";
import { pollTransport } from "./poll.js";
import { Positions } from "./positions.js";
import { byteLength, OfflineQueue, type QueueOptions } from "./queue.js";
import { sseTransport } from "./sse.js";
import { SharedChannel, type Subscription, type SubscriptionHandlers } from "./subscription.js";
import { fetchToken, readClaims, refreshDelayMs, type TokenSource } from "./token.js";
import {
  type OneWayRequest,
  type Transport,
  type TransportFactory,
  type TransportHandlers,
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
  /**
   * Transports in fallback order (default `["websocket", "sse", "poll"]`): the client moves to
   * the next one when one cannot connect, and tries WebSocket again now and then while on a
   * later one. `sse` and `poll` need a global `fetch`; without one they are skipped.
   */
  transports?: TransportName[];
  /** A WebSocket implementation, e.g. `ws` on Node before 22 (default: the global one). */
  WebSocket?: WebSocketConstructor;
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

const DEFAULT_TRANSPORTS: TransportName[] = ["websocket", "sse", "poll"];
const HTTP_TRANSPORTS = { sse: sseTransport, poll: pollTransport };
/** The first try of WebSocket after falling back from lost connections: 2–4 s. */
const UPGRADE_SOON_MS = 2000;

/** The browser says it is offline (failures then say nothing about the transport). */
function isOffline(): boolean {
  return (globalThis as { navigator?: { onLine?: boolean } }).navigator?.onLine === false;
}

interface Pending {
  expect: ReplyFrame["type"];
  resolve(frame: ReplyFrame): void;
  reject(error: GatewayError): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** The channels a one-way transport asked for, and the positions it asked from. */
interface Asked {
  since: Record<string, Position>;
  sent: Map<string, SharedChannel | undefined>;
}

/** A WebSocket opened beside a one-way transport, to move back to it once it is subscribed. */
interface Probe {
  transport: Transport | undefined;
  /** Its frames until the switch. */
  frames: unknown[];
  /** What its `subscribe` asked for; its id. */
  asked: Asked | undefined;
  id: RequestId | undefined;
  /** The client's generation once it is the connection (-1 before). */
  generation: number;
  timer: ReturnType<typeof setTimeout>;
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
  private readonly upgradeBackoff: Backoff;
  private readonly positions = new Positions();
  private readonly channels = new Map<string, SharedChannel>();
  private readonly queue: OfflineQueue<QueuedRequest>;
  private readonly pending = new Map<RequestId, Pending>();

  private currentState: ConnectionState = "disconnected";
  /** Bumped by every connect attempt and close: callbacks of an older one are ignored. */
  private generation = 0;
  private socket: Transport | undefined;
  private info: ConnectionInfo | undefined;
  /** The transport connections are made with: an index in `factories`. */
  private transportIndex = 0;
  /** Attempts in a row on that transport that did not get to `connection_established`. */
  private failures = 0;
  /**
   * The client fell back after lost connections, not a refusal: the whole network may have been
   * down, so WebSocket is tried again soon rather than after `upgradeBackoff`.
   */
  private upgradeSoon = false;
  /** On a one-way transport: what its last request asked for. */
  private asked: Asked | undefined;
  private probe: Probe | undefined;
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
  private upgradeTimer: ReturnType<typeof setTimeout> | undefined;
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
    this.upgradeBackoff = new Backoff(options.upgradeBackoff ?? { minDelayMs: 30_000, maxDelayMs: 300_000 });
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
    const fetchable = typeof (globalThis as { fetch?: unknown }).fetch === "function";
    for (const name of new Set(names)) {
      if (name === "websocket") {
        const Impl =
          this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
        if (!Impl) {
          throw new Error("no WebSocket implementation: pass one as the `WebSocket` option (e.g. the ws package on Node before 22), or leave \"websocket\" out of `transports`");
        }
        factories.push(webSocketTransport(Impl));
      } else {
        // Names this version does not know (from plain JavaScript) are skipped.
        const factory = (HTTP_TRANSPORTS as Partial<Record<string, TransportFactory>>)[name];
        if (factory && fetchable) factories.push(factory);
      }
    }
    if (factories.length === 0) {
      throw new Error(`none of the transports ${JSON.stringify(names)} is available (sse and poll need a global fetch)`);
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
    const factory = this.factories[this.transportIndex] as TransportFactory;
    try {
      this.socket = factory.open(
        { url: this.options.url, request: () => this.oneWayRequest() },
        this.handlers(generation, factory.name, () => {
          const personal = this.personalChannel;
          const since = personal === undefined ? undefined : this.positions.get(personal);
          this.socket?.send(since ? { type: "auth", token, since } : { type: "auth", token });
        }),
      );
    } catch (cause) {
      this.lost(1006, `cannot open the transport: ${String(cause)}`);
    }
  }

  /** The handlers of the connection of `generation` over `transport`; `onOpen` authenticates a duplex one. */
  private handlers(generation: number | (() => boolean), transport: TransportName, onOpen: () => void): TransportHandlers {
    const live = typeof generation === "number" ? () => generation === this.generation : generation;
    return {
      onOpen: () => {
        if (live()) onOpen();
      },
      onFrame: (frame) => {
        if (live()) this.onFrame(frame, transport);
      },
      onAlive: () => {
        if (live()) this.lastFrameAt = Date.now();
      },
      onCursor: (cursor) => {
        if (live()) this.foldCursor(cursor);
      },
      onClose: (code, reason, httpStatus) => {
        if (live()) this.lost(code, reason, httpStatus);
      },
    };
  }

  /** Gives up on the current transport without waiting for it to close (dead or offline). */
  private drop(code: number, reason: string): void {
    const socket = this.socket;
    this.generation++;
    socket?.close(4000, reason);
    this.lost(code, reason);
  }

  /** The connection ended: decide what next from the close code. */
  private lost(code: number, reason: string, httpStatus?: number): void {
    // An attempt that opened a transport and did not get to connection_established counts
    // against that transport (a failing token getter or connect timeout before it does not).
    const attempted = this.socket !== undefined;
    const established = this.info !== undefined;
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
    if (attempted) this.judgeTransport({ established, code, httpStatus, offline: isOffline() });
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

  /** Moves to the next transport when the current one cannot connect (`fallback.ts`). */
  private judgeTransport(attempt: Attempt): void {
    const { failures, fallBack } = afterAttempt(this.failures, attempt);
    this.failures = failures;
    if (!fallBack) return;
    this.transportIndex = (this.transportIndex + 1) % this.factories.length;
    this.upgradeSoon = attempt.httpStatus === undefined;
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
    this.clearTimer("upgradeTimer");
    this.endProbe();
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    this.info = undefined;
    this.asked = undefined;
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

  private clearTimer(name: "reconnectTimer" | "connectTimer" | "stableTimer" | "refreshTimer" | "upgradeTimer"): void {
    const timer = this[name];
    if (timer !== undefined) clearTimeout(timer);
    this[name] = undefined;
  }

  // ---- frames ----

  private send(frame: ClientFrame): void {
    this.socket?.send(frame);
  }

  /** Whether the connection is over a one-way transport (SSE, poll). */
  private get oneWay(): boolean {
    return this.socket?.duplex === false;
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
        // Replies to our own subscribe frames (they all carry an id), or to a one-way
        // transport's request.
        if (frame.id !== undefined) this.settle(frame);
        else if (this.asked) this.onSubscribed(frame, this.asked);
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
    // A one-way transport's new request (a reopened stream, a poll that reports a reload): the
    // same connection goes on.
    const reopened = this.currentState === "connected" && this.info?.transport === transport;
    this.info = { clientId: frame.client_id, userId: frame.user_id, nodeId: frame.node_id, transport };
    if (frame.position) {
      if (frame.recovered === false) this.reloadChannel(personal, frame.position);
      else if (frame.recovered === undefined && !this.positions.get(personal)) this.positions.set(personal, frame.position);
    }
    if (reopened) return;
    this.heartbeatMs = frame.heartbeat_interval_ms > 0 ? frame.heartbeat_interval_ms : (this.options.heartbeatIntervalMs ?? 25_000);
    this.startHeartbeat();
    this.clearTimer("stableTimer");
    this.stableTimer = setTimeout(() => {
      this.backoff.reset();
      this.expiredInARow = 0;
    }, this.options.stableAfterMs ?? 5000);
    this.scheduleRefresh();
    this.scheduleUpgrade();
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
      names.push(name);
    }
    if (names.length === 0) return;
    // A one-way transport subscribes by asking again, with the new channel set.
    if (this.oneWay) {
      this.socket?.update();
      return;
    }
    const asked = this.ask(names);
    const since = Object.keys(asked.since).length > 0 ? asked.since : undefined;
    const frame: ClientFrame = since ? { type: "subscribe", channels: names, since } : { type: "subscribe", channels: names };
    this.request<SubscribedFrame>(frame, "subscribed", false).then(
      (reply) => this.onSubscribed(reply, asked),
      () => {
        // Lost with the connection: the channels are subscribed again on the next one.
      },
    );
  }

  /**
   * Marks `names` as being subscribed and notes from where: the reply applies to these very
   * channel objects, not to ones made again since.
   */
  private ask(names: string[]): Asked {
    const sent = new Map<string, SharedChannel | undefined>();
    for (const name of names) {
      const shared = this.channels.get(name);
      if (shared?.state === "pending") shared.state = "subscribing";
      sent.set(name, shared);
    }
    return { since: this.positions.since(names) ?? {}, sent };
  }

  /** What a one-way transport asks for now: every channel, from the client's positions. */
  private oneWayRequest(): OneWayRequest {
    const channels = this.serverChannels();
    this.asked = this.ask(channels);
    const personal = this.personalChannel;
    const positions = this.positions.since(personal === undefined ? channels : [...channels, personal]);
    return { token: this.token ?? "", channels, cursor: positions && encodeCursor(positions) };
  }

  /**
   * A poll's answer: its cursor holds the positions the server started channels from where it
   * said nothing (a channel added to a poll is confirmed only by the answer), so take those the
   * client has none of; the channels asked for are subscribed now.
   */
  private foldCursor(cursor: string): void {
    const positions = decodeCursor(cursor) ?? {};
    for (const [name, position] of Object.entries(positions)) {
      if ((this.channels.has(name) || name === this.personalChannel) && !this.positions.get(name)) this.positions.set(name, position);
    }
    for (const [name, shared] of this.asked?.sent ?? []) {
      if (shared?.state === "subscribing" && this.channels.get(name) === shared) {
        shared.subscribed({ channel: name, recovered: undefined, position: this.positions.get(name) });
      }
    }
  }

  private onSubscribed(reply: SubscribedFrame, asked: Asked): void {
    const { since, sent } = asked;
    // Replies of one-way transports repeat channels already subscribed: only a reload is news then.
    const current = (name: string): SharedChannel | undefined => {
      const shared = this.channels.get(name);
      return shared && shared === sent.get(name) && shared.state !== "rejected" ? shared : undefined;
    };
    for (const name of reply.channels) {
      const shared = current(name);
      if (!shared) continue;
      const recovered = reply.recovered?.[name];
      const position = reply.positions?.[name];
      if (recovered === false && position) {
        this.reloadChannel(name, position);
      } else if (position && since[name] === undefined && !this.positions.get(name)) {
        this.positions.set(name, position);
      }
      if (shared.state === "subscribing") shared.subscribed({ channel: name, recovered, position });
    }
    for (const rejection of reply.rejected) {
      const shared = current(rejection.channel);
      if (shared?.state !== "subscribing") continue;
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
      if (this.oneWay) this.socket?.update();
      else this.request({ type: "unsubscribe", channels: [name] }, "unsubscribed", false).catch(() => {});
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
        if (this.oneWay) reject(this.notSupported(frame.type));
        else this.sendRequest(frame, settle);
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

  /** A request that needs a WebSocket, on a one-way transport. */
  private notSupported(type: string): GatewayError {
    const later = type === "register" ? "; the client type is set once a WebSocket connects" : "";
    return new GatewayError(
      "not_supported_on_transport",
      `${type} needs a WebSocket connection: the client is connected over ${this.info?.transport ?? "a one-way transport"}${later}`,
    );
  }

  private flushQueue(): void {
    let registered = false;
    for (const queued of this.queue.drain()) {
      if (this.oneWay) {
        queued.reject(this.notSupported(queued.frame.type));
        continue;
      }
      if (queued.frame.type === "register") registered = true;
      this.sendRequest(queued.frame, queued);
    }
    const registration = this.registration;
    if (this.oneWay) return;
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
    if (this.oneWay) {
      // No refresh frame: the next request carries the new token (an open stream reopens with it).
      this.token = token;
      this.socket?.update();
      this.scheduleRefresh();
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

  // ---- back to WebSocket ----

  /** On a one-way transport, tries WebSocket again after a while, where it comes first in `transports`. */
  private scheduleUpgrade(): void {
    this.clearTimer("upgradeTimer");
    const target = this.factories.findIndex((factory) => factory.name === "websocket");
    if (target < 0 || target >= this.transportIndex) return;
    const delay = this.upgradeSoon ? UPGRADE_SOON_MS * (1 + Math.random()) : this.upgradeBackoff.next();
    this.upgradeSoon = false;
    this.upgradeTimer = setTimeout(() => {
      this.upgradeTimer = undefined;
      this.startProbe(this.factories[target] as TransportFactory);
    }, delay);
  }

  /**
   * Opens a WebSocket beside the one-way connection, which goes on meanwhile: it authenticates,
   * subscribes every channel from the positions of that moment and holds what it receives; once
   * its `subscribed` comes, it becomes the connection (see {@link switchToProbe}).
   */
  private startProbe(factory: TransportFactory): void {
    const token = this.token;
    if (this.currentState !== "connected" || this.probe || token === undefined) return;
    const probe: Probe = {
      transport: undefined,
      frames: [],
      asked: undefined,
      id: undefined,
      generation: -1,
      timer: setTimeout(() => this.endProbe(true), this.options.connectTimeoutMs ?? 15_000),
    };
    this.probe = probe;
    const mine = () => this.probe === probe;
    // Once switched, the probe's handlers are the connection's.
    const main = this.handlers(() => probe.generation === this.generation, factory.name, () => {});
    try {
      probe.transport = factory.open(
        { url: this.options.url, request: () => this.oneWayRequest() },
        {
          ...main,
          onOpen: () => {
            if (!mine()) return;
            const personal = this.personalChannel;
            const since = personal === undefined ? undefined : this.positions.get(personal);
            probe.transport?.send(since ? { type: "auth", token, since } : { type: "auth", token });
          },
          onFrame: (frame) => (mine() ? this.onProbeFrame(probe, frame) : main.onFrame(frame)),
          onClose: (code, reason, httpStatus) => (mine() ? this.endProbe(true) : main.onClose(code, reason, httpStatus)),
        },
      );
    } catch {
      this.endProbe(true);
    }
  }

  private onProbeFrame(probe: Probe, value: unknown): void {
    const frame = classifyFrame(value);
    if (frame?.kind === "control") {
      const control = frame.frame;
      if (control.type === "connection_established") {
        probe.frames.push(value);
        const names = this.serverChannels();
        if (names.length === 0) {
          this.switchToProbe(probe, undefined);
          return;
        }
        // The channels keep their states: they belong to the one-way connection until the switch.
        probe.asked = { since: this.positions.since(names) ?? {}, sent: new Map(names.map((name) => [name, this.channels.get(name)])) };
        probe.id = this.nextId++;
        const since = Object.keys(probe.asked.since).length > 0 ? probe.asked.since : undefined;
        probe.transport?.send(since ? { type: "subscribe", id: probe.id, channels: names, since } : { type: "subscribe", id: probe.id, channels: names });
        return;
      }
      if (control.type === "subscribed" && probe.id !== undefined && control.id === probe.id) {
        this.switchToProbe(probe, control);
        return;
      }
      if (control.type === "error" && probe.id !== undefined && control.id === probe.id) {
        this.endProbe(true);
        return;
      }
    }
    probe.frames.push(value);
  }

  /**
   * The probe's subscriptions are live: it becomes the connection, and the one-way transport
   * closes. What the probe held is delivered now; the events of channels with history that the
   * old transport delivered already are dropped by their offsets, so none is lost or repeated.
   */
  private switchToProbe(probe: Probe, reply: SubscribedFrame | undefined): void {
    clearTimeout(probe.timer);
    this.probe = undefined;
    const old = this.socket;
    probe.generation = ++this.generation;
    old?.close(1000, "moved to websocket");
    this.socket = probe.transport;
    this.asked = undefined;
    this.transportIndex = this.factories.findIndex((factory) => factory.name === "websocket");
    this.failures = 0;
    this.upgradeBackoff.reset();
    const asked = probe.asked ?? { since: {}, sent: new Map<string, SharedChannel | undefined>() };
    for (const [name, shared] of this.channels) {
      if (shared.state !== "rejected") shared.state = asked.sent.get(name) === shared ? "subscribing" : "pending";
    }
    for (const value of probe.frames) {
      const frame = classifyFrame(value);
      // Events without an offset came over the old transport too, which was live until now.
      if (frame?.kind === "event" && frame.event.offset === undefined) continue;
      if (probe.generation === this.generation) this.onFrame(value, "websocket");
    }
    if (!reply || probe.generation !== this.generation) return;
    this.onSubscribed(reply, asked);
    const gone = reply.channels.filter((name) => !this.channels.has(name));
    if (gone.length > 0) this.request({ type: "unsubscribe", channels: gone }, "unsubscribed", false).catch(() => {});
  }

  /** Ends the probe; `failed`: try again later. */
  private endProbe(failed = false): void {
    const probe = this.probe;
    if (!probe) return;
    this.probe = undefined;
    clearTimeout(probe.timer);
    probe.transport?.close(1000, "not needed");
    if (failed) this.scheduleUpgrade();
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
