/**
 * The connection state machine behind `GatewayClient` (the diagram is in client.ts): connect →
 * authenticate → subscribe → live → lost → wait → connect, with the reconnect backoff and the
 * frames that drive it. {@link Connection} also holds the state of the other internal modules,
 * which are functions of it: transports.ts, requests.ts, channels.ts, liveness.ts, refresh.ts.
 */

import { Backoff } from "./backoff.js";
import {
  type Asked,
  flushSubscribes,
  foldCursor,
  onEvent,
  onSubscribed,
  oneWayRequest,
  reloadChannel,
  unsubscribedByServer,
} from "./channels.js";
import type { ClientEvents, ConnectionInfo, ConnectionState, GatewayClientOptions } from "./client.js";
import { GatewayError } from "./errors.js";
import { classifyFrame, type ClientFrame, type ConnectionEstablishedFrame, type ControlFrame, type RequestId } from "./frames.js";
import { listenToBrowser, startHeartbeat } from "./liveness.js";
import { closeAction } from "./policy.js";
import { Positions } from "./positions.js";
import { OfflineQueue } from "./queue.js";
import { scheduleRefresh } from "./refresh.js";
import { flushQueue, type Pending, type QueuedRequest, rejectPending, settle } from "./requests.js";
import type { SharedChannel } from "./subscription.js";
import { fetchToken, readClaims } from "./token.js";
import type { Transport, TransportFactory, TransportHandlers, TransportName } from "./transport.js";
import { DEFAULT_TRANSPORTS, endProbe, judgeTransport, type Probe, resolveTransports, scheduleUpgrade } from "./transports.js";

/** How the internal modules emit the client's events. */
export type Emit = <E extends keyof ClientEvents>(event: E, ...args: ClientEvents[E]) => void;

/** The browser says it is offline (failures then say nothing about the transport). */
function isOffline(): boolean {
  return (globalThis as { navigator?: { onLine?: boolean } }).navigator?.onLine === false;
}

type TimerName = "reconnectTimer" | "connectTimer" | "stableTimer" | "refreshTimer" | "upgradeTimer";

export class Connection {
  readonly backoff: Backoff;

  state: ConnectionState = "disconnected";
  /** Bumped by every connect attempt and close: callbacks of an older one are ignored. */
  generation = 0;
  socket: Transport | undefined;
  info: ConnectionInfo | undefined;
  token: string | undefined;
  /** The user of the last token or connection: its personal channel is `#<user>`. */
  userId: string | undefined;
  advisedDelayMs: number | undefined;
  /** 4002 closes since the last stable connection. */
  expiredInARow = 0;
  reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  connectTimer: ReturnType<typeof setTimeout> | undefined;
  stableTimer: ReturnType<typeof setTimeout> | undefined;
  removeBrowserListeners: (() => void) | undefined;

  // transports.ts: falling back, and moving back to WebSocket.
  readonly factories: TransportFactory[];
  readonly upgradeBackoff: Backoff;
  /** The transport connections are made with: an index in `factories`. */
  transportIndex = 0;
  /** Attempts in a row on that transport that did not get to `connection_established`. */
  failures = 0;
  /**
   * The client fell back after lost connections, not a refusal: the whole network may have been
   * down, so WebSocket is tried again soon rather than after `upgradeBackoff`.
   */
  upgradeSoon = false;
  upgradeTimer: ReturnType<typeof setTimeout> | undefined;
  probe: Probe | undefined;

  // requests.ts: replies by id, the offline queue.
  readonly pending = new Map<RequestId, Pending>();
  readonly queue: OfflineQueue<QueuedRequest>;
  nextId = 1;
  registration: { clientType: string; clientName: string | undefined } | undefined;

  // channels.ts: subscriptions and positions.
  readonly channels = new Map<string, SharedChannel>();
  readonly positions = new Positions();
  /** On a one-way transport: what its last request asked for. */
  asked: Asked | undefined;
  subscribeScheduled = false;

  // liveness.ts: heartbeats.
  heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  lastFrameAt = 0;
  lastPingAt = 0;
  lastCheckAt = 0;
  heartbeatMs = 25_000;

  // refresh.ts: the token's refresh.
  refreshTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    readonly options: GatewayClientOptions,
    readonly emit: Emit,
  ) {
    this.backoff = new Backoff(options.backoff);
    this.upgradeBackoff = new Backoff(options.upgradeBackoff ?? { minDelayMs: 30_000, maxDelayMs: 300_000 });
    this.queue = new OfflineQueue(options.queue);
    this.factories = resolveTransports(options.transports ?? DEFAULT_TRANSPORTS, options);
  }

  /** The personal channel `#<user_id>`, once the user is known (from the token or the server). */
  get personalChannel(): string | undefined {
    return this.userId === undefined ? undefined : `#${this.userId}`;
  }

  /** Whether the connection is over a one-way transport (SSE, poll). */
  get oneWay(): boolean {
    return this.socket?.duplex === false;
  }

  connect(): void {
    if (this.state === "connecting" || this.state === "connected") return;
    if (this.state === "disconnected" && this.reconnectTimer !== undefined) {
      this.reconnectNow();
      return;
    }
    listenToBrowser(this);
    void this.open();
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
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
        { url: this.options.url, request: () => oneWayRequest(this) },
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
  handlers(generation: number | (() => boolean), transport: TransportName, onOpen: () => void): TransportHandlers {
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
        if (live()) foldCursor(this, cursor);
      },
      onClose: (code, reason, httpStatus) => {
        if (live()) this.lost(code, reason, httpStatus);
      },
    };
  }

  /** Gives up on the current transport without waiting for it to close (dead or offline). */
  drop(code: number, reason: string): void {
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
    if (attempted) judgeTransport(this, { established, code, httpStatus, offline: isOffline() });
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

  /** Stops for good (until `connect()`): queued and unanswered requests are rejected with `error`. */
  stop(code: number, reason: string, error: GatewayError): void {
    const wasOpen = this.state !== "closed";
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
    endProbe(this);
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
    this.info = undefined;
    this.asked = undefined;
    rejectPending(this, error);
    for (const shared of this.channels.values()) shared.reset();
  }

  reconnectNow(): void {
    if (this.state !== "disconnected") return;
    this.clearTimer("reconnectTimer");
    void this.open();
  }

  clearTimer(name: TimerName): void {
    const timer = this[name];
    if (timer !== undefined) clearTimeout(timer);
    this[name] = undefined;
  }

  // ---- frames ----

  send(frame: ClientFrame): void {
    this.socket?.send(frame);
  }

  onFrame(value: unknown, transport: TransportName): void {
    this.lastFrameAt = Date.now();
    const frame = classifyFrame(value);
    if (!frame) return;
    if (frame.kind === "event") onEvent(this, frame.event);
    else this.onControl(frame.frame, transport);
  }

  private onControl(frame: ControlFrame, transport: TransportName): void {
    switch (frame.type) {
      case "connection_established":
        this.onEstablished(frame, transport);
        return;
      case "reload":
        reloadChannel(this, frame.channel, frame.position);
        return;
      case "disconnect":
        this.advisedDelayMs = frame.reconnect_after_ms;
        return;
      case "subscribed":
        // Replies to our own subscribe frames (they all carry an id), or to a one-way
        // transport's request.
        if (frame.id !== undefined) settle(this, frame);
        else if (this.asked) onSubscribed(this, frame, this.asked);
        return;
      case "unsubscribed":
        if (frame.id !== undefined) settle(this, frame);
        else unsubscribedByServer(this, frame.channels);
        return;
      default:
        if (frame.id !== undefined) settle(this, frame);
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
    const reopened = this.state === "connected" && this.info?.transport === transport;
    this.info = { clientId: frame.client_id, userId: frame.user_id, nodeId: frame.node_id, transport };
    if (frame.position) {
      if (frame.recovered === false) reloadChannel(this, personal, frame.position);
      else if (frame.recovered === undefined && !this.positions.get(personal)) this.positions.set(personal, frame.position);
    }
    if (reopened) return;
    this.heartbeatMs = frame.heartbeat_interval_ms > 0 ? frame.heartbeat_interval_ms : (this.options.heartbeatIntervalMs ?? 25_000);
    startHeartbeat(this);
    this.clearTimer("stableTimer");
    this.stableTimer = setTimeout(() => {
      this.backoff.reset();
      this.expiredInARow = 0;
    }, this.options.stableAfterMs ?? 5000);
    scheduleRefresh(this);
    scheduleUpgrade(this);
    this.setState("connected");
    this.emit("connected", this.info);
    const personalShared = this.channels.get(personal);
    if (personalShared) {
      personalShared.subscribed({ channel: personal, recovered: frame.recovered, position: frame.position });
    }
    flushSubscribes(this);
    flushQueue(this);
  }
}
