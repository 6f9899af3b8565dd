/**
 * Transports carry frames between the client and one gateway node. The client owns the
 * protocol (authentication, subscriptions, replies, positions); a transport only opens, carries
 * decoded frames, and reports one close.
 *
 * A duplex transport (WebSocket) can {@link Transport.send}: the client authenticates with an
 * `auth` frame and subscribes with `subscribe` frames. A one-way transport (server-sent events,
 * long-poll: `sse.ts`, `poll.ts`) cannot: before each of its requests it asks the client, through
 * {@link OpenParams.request}, for the token, the channels and the cursor of their positions, and
 * the server answers with the same `connection_established`, `subscribed` and event frames. When
 * the channels or the token change, the client calls {@link Transport.update} and the transport
 * asks again with a new request.
 */

import { type Codec, json } from "./codec.js";
import type { ClientFrame } from "./frames.js";

export type TransportName = "websocket" | "sse" | "poll";

/** What a one-way transport asks the server for. */
export interface OneWayRequest {
  token: string;
  /** The channels to subscribe (the personal one is always included by the server). */
  channels: string[];
  /** The known positions of these channels and of the personal one, as a cursor; undefined when none is known. */
  cursor: string | undefined;
}

export interface OpenParams {
  /** The gateway's WebSocket URL (`wss://host/ws`); HTTP transports find `/sse` and `/poll` beside it. */
  url: string;
  /** One-way transports: what to ask for, read before each request. */
  request(): OneWayRequest;
}

export interface TransportHandlers {
  /** The transport is open: a duplex transport may send now. */
  onOpen(): void;
  /** One server frame, decoded (from JSON, or from MessagePack on a WebSocket that asked for it). */
  onFrame(frame: unknown): void;
  /** A sign of life that carried no frame: an SSE heartbeat comment, a poll answered empty. */
  onAlive(): void;
  /** A poll's answer ended with this cursor (after its frames). */
  onCursor(cursor: string): void;
  /**
   * The transport closed (called once): a WebSocket close code, the code of the server's
   * `disconnect` frame, 1006 when the connection was lost or refused; `httpStatus` when an HTTP
   * status refused it.
   */
  onClose(code: number, reason: string, httpStatus?: number): void;
}

export interface Transport {
  readonly name: TransportName;
  /** Whether {@link Transport.send} works. */
  readonly duplex: boolean;
  /** Sends a frame; does nothing on a one-way transport. */
  send(frame: ClientFrame): void;
  /** One-way transports: the channels or the token changed; reopen with a new request (debounced). */
  update(): void;
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
  /** Set to `"arraybuffer"` when the format is binary. */
  binaryType?: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

const OPEN = 1;

/**
 * The URL of the HTTP transport `name` beside the WebSocket URL: `wss://host/ws` →
 * `https://host/sse`, `ws://host:8080/a/ws?x` → `http://host:8080/a/poll`, `/ws` → `/sse`.
 */
export function siblingUrl(url: string, name: "sse" | "poll"): string {
  const match = /^([a-z][a-z0-9+.-]*:\/\/[^/?#]*)?([^?#]*)/i.exec(url);
  const origin = (match?.[1] ?? "").replace(/^[a-z]+/i, (scheme) => scheme.toLowerCase().replace(/^ws/, "http"));
  const path = (match?.[2] ?? "").replace(/\/[^/]*$/, "");
  return `${origin}${path}/${name}`;
}

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

/**
 * The WebSocket transport: frames over one socket, JSON text frames or those of `codec`, which it
 * asks for with the codec's subprotocol. A text message is read as JSON in every format, as the
 * server reads them; a binary one is decoded by the codec.
 */
export class WebSocketTransport implements Transport {
  readonly name = "websocket";
  readonly duplex = true;
  private readonly socket: WebSocketLike;
  private closed = false;
  /** The HTTP status that refused the upgrade, where the implementation says (`ws` does). */
  private httpStatus: number | undefined;

  constructor(
    Impl: WebSocketConstructor,
    params: OpenParams,
    private readonly handlers: TransportHandlers,
    private readonly codec: Codec = json,
  ) {
    const url = webSocketUrl(params.url);
    const socket = codec.protocol === undefined ? new Impl(url) : new Impl(url, codec.protocol);
    if (codec.binary) socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      if (!this.closed) this.handlers.onOpen();
    };
    socket.onmessage = (message: { data: unknown }) => {
      if (this.closed) return;
      const data = message.data;
      let frame: unknown;
      try {
        if (typeof data === "string") frame = JSON.parse(data);
        else if (data instanceof ArrayBuffer) frame = codec.decode(new Uint8Array(data));
        else if (ArrayBuffer.isView(data)) frame = codec.decode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
        else return;
      } catch {
        return;
      }
      this.handlers.onFrame(frame);
    };
    socket.onclose = (event: { code?: number; reason?: string }) => this.finish(event.code ?? 1006, event.reason ?? "");
    // Every error is followed by a close; the close carries the code. A browser does not say why
    // an upgrade failed; `ws` does: "Unexpected server response: 403".
    socket.onerror = (event: { message?: unknown } | undefined) => {
      const status = /server response: (\d{3})/.exec(String(event?.message))?.[1];
      if (status !== undefined) this.httpStatus = Number(status);
    };
  }

  send(frame: ClientFrame): void {
    if (this.socket.readyState === OPEN) this.socket.send(this.codec.encode(frame));
  }

  update(): void {
    // A WebSocket subscribes and refreshes with frames.
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
    this.handlers.onClose(code, reason, this.httpStatus);
  }
}

/** The factory of {@link WebSocketTransport}s over `Impl`, in the format of `codec`. */
export function webSocketTransport(Impl: WebSocketConstructor, codec: Codec = json): TransportFactory {
  return {
    name: "websocket",
    open: (params, handlers) => new WebSocketTransport(Impl, params, handlers, codec),
  };
}
