/**
 * Transports carry frames between the client and one gateway node. The client owns the
 * protocol (authentication, subscriptions, replies); a transport only opens, carries decoded
 * frames, and reports one close.
 *
 * A duplex transport (WebSocket) can {@link Transport.send}: the client authenticates with an
 * `auth` frame and subscribes with `subscribe` frames. A one-way transport (server-sent events,
 * long-poll) cannot: it puts the token, the channels and their positions of {@link OpenParams}
 * into its requests, and the server answers with the same `connection_established` and
 * `subscribed` frames.
 */

import type { ClientFrame, Position } from "./frames.js";

export type TransportName = "websocket" | "sse" | "poll";

export interface OpenParams {
  /** The gateway's WebSocket URL (`wss://host/ws`); HTTP transports find `/sse` and `/poll` beside it. */
  url: string;
  /** The token for this connection. */
  token: string;
  /** The channels to subscribe, each with its position where one is known (one-way transports). */
  channels: ReadonlyMap<string, Position | undefined>;
  /** The personal channel's position, where one is known (one-way transports). */
  personal: Position | undefined;
}

export interface TransportHandlers {
  /** The transport is open: a duplex transport may send now. */
  onOpen(): void;
  /** One server frame, decoded from JSON. */
  onFrame(frame: unknown): void;
  /** The transport closed (called once): a WebSocket close code, 1006 when the connection was lost. */
  onClose(code: number, reason: string): void;
}

export interface Transport {
  readonly name: TransportName;
  /** Whether {@link Transport.send} works. */
  readonly duplex: boolean;
  /** Sends a frame; throws on a one-way transport. */
  send(frame: ClientFrame): void;
  /** Closes; no handler is called after this. */
  close(code?: number, reason?: string): void;
}

export interface TransportFactory {
  readonly name: TransportName;
  open(params: OpenParams, handlers: TransportHandlers): Transport;
}

/** The part of the WebSocket API the client uses: the browser's, or `ws` on Node. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

const OPEN = 1;

/** Turns `/ws` (same origin) or `http(s)://…` into a `ws(s)://` URL. */
export function webSocketUrl(url: string): string {
  if (/^wss?:\/\//i.test(url)) return url;
  if (/^https?:\/\//i.test(url)) return url.replace(/^http/i, "ws");
  const location = (globalThis as { location?: { protocol: string; host: string } }).location;
  if (location && url.startsWith("/")) {
    return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${url}`;
  }
  return url;
}

/** The WebSocket transport: JSON text frames over one socket. */
export class WebSocketTransport implements Transport {
  readonly name = "websocket";
  readonly duplex = true;
  private readonly socket: WebSocketLike;
  private closed = false;

  constructor(Impl: WebSocketConstructor, params: OpenParams, private readonly handlers: TransportHandlers) {
    const socket = new Impl(webSocketUrl(params.url));
    this.socket = socket;
    socket.onopen = () => {
      if (!this.closed) this.handlers.onOpen();
    };
    socket.onmessage = (message: { data: unknown }) => {
      if (this.closed || typeof message.data !== "string") return;
      let frame: unknown;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return;
      }
      this.handlers.onFrame(frame);
    };
    socket.onclose = (event: { code?: number; reason?: string }) => this.finish(event.code ?? 1006, event.reason ?? "");
    // Every error is followed by a close; the close carries the code.
    socket.onerror = () => {};
  }

  send(frame: ClientFrame): void {
    if (this.socket.readyState === OPEN) this.socket.send(JSON.stringify(frame));
  }

  close(code = 1000, reason = ""): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.socket.close(code, reason);
    } catch {
      // Already closing, or a code the implementation refuses: the socket goes either way.
      try {
        this.socket.close();
      } catch {
        /* closed */
      }
    }
  }

  private finish(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.handlers.onClose(code, reason);
  }
}

/** The factory of {@link WebSocketTransport}s over `Impl`. */
export function webSocketTransport(Impl: WebSocketConstructor): TransportFactory {
  return {
    name: "websocket",
    open: (params, handlers) => new WebSocketTransport(Impl, params, handlers),
  };
}
