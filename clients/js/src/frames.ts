/**
 * The gateway's frames, as docs/protocol.md defines them. Every frame is one JSON object with a
 * `type`; a client frame may carry an `id` that the server echoes in its reply.
 */

/** A client frame's `id`, echoed in the reply. */
export type RequestId = number | string;

/** A channel's place in its history: the last offset delivered, in the channel's epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** One event, as the server sends it: the publisher's event name is its `type`. */
export interface GatewayEvent<T = unknown> {
  type: string;
  /** The channel published to; `#<user_id>` for an event to a user; absent for client types and broadcasts. */
  channel?: string;
  data: T;
  /** When it was published, RFC 3339. */
  timestamp: string;
  /** On channels that keep history. */
  offset?: number;
  epoch?: string;
}

// ---- client → server ----

export interface AuthFrame {
  type: "auth";
  token: string;
  /** Where the personal channel's history left off, to recover it. */
  since?: Position;
}
export interface SubscribeFrame {
  type: "subscribe";
  id?: RequestId;
  channels: string[];
  since?: Record<string, Position>;
}
export interface UnsubscribeFrame {
  type: "unsubscribe";
  id?: RequestId;
  channels: string[];
}
export interface PingFrame {
  type: "ping";
  id?: RequestId;
}
export interface RefreshFrame {
  type: "refresh";
  id?: RequestId;
  token: string;
}
export interface RegisterFrame {
  type: "register";
  id?: RequestId;
  client_type: string;
  client_name?: string;
}
export interface PublishFrame {
  type: "publish";
  id?: RequestId;
  channel: string;
  event: string;
  data?: unknown;
}
export interface HistoryRequestFrame {
  type: "history";
  id?: RequestId;
  channel: string;
  since?: Position;
  limit?: number;
}
export interface PresenceRequestFrame {
  type: "presence";
  id?: RequestId;
  channel: string;
}

export type ClientFrame =
  | AuthFrame
  | SubscribeFrame
  | UnsubscribeFrame
  | PingFrame
  | RefreshFrame
  | RegisterFrame
  | PublishFrame
  | HistoryRequestFrame
  | PresenceRequestFrame;

// ---- server → client ----

export interface ConnectionEstablishedFrame {
  type: "connection_established";
  client_id: string;
  user_id: string;
  node_id: string;
  heartbeat_interval_ms: number;
  timestamp: string;
  /** The personal channel's position, where its namespace keeps history. */
  position?: Position;
  /** Whether the personal channel was recovered from the `since` of the `auth` frame. */
  recovered?: boolean;
}
export interface Rejection {
  channel: string;
  code: string;
  message?: string;
}
export interface SubscribedFrame {
  type: "subscribed";
  id?: RequestId;
  channels: string[];
  rejected: Rejection[];
  recovered?: Record<string, boolean>;
  positions?: Record<string, Position>;
}
export interface UnsubscribedFrame {
  type: "unsubscribed";
  id?: RequestId;
  channels: string[];
}
export interface PongFrame {
  type: "pong";
  id?: RequestId;
}
export interface RefreshedFrame {
  type: "refreshed";
  id?: RequestId;
  expires_at: string;
}
export interface RegisteredFrame {
  type: "registered";
  id?: RequestId;
  client_id: string;
}
export interface PublishedFrame {
  type: "published";
  id?: RequestId;
  offset?: number;
  epoch?: string;
}
export interface HistoryFrame {
  type: "history";
  id?: RequestId;
  channel: string;
  events: GatewayEvent[];
  position: Position;
}
export interface PresenceClient {
  client_id: string;
  user_id: string;
  client_type: string | null;
}
export interface PresenceFrame {
  type: "presence";
  id?: RequestId;
  channel: string;
  clients: PresenceClient[];
}
/** History could not fill a gap: reload the channel's state; live events continue after `position`. */
export interface ReloadFrame {
  type: "reload";
  channel: string;
  position: Position;
}
export interface ErrorFrame {
  type: "error";
  id?: RequestId;
  code: string;
  message: string;
}
/** Sent before the server closes the connection with 4200. */
export interface DisconnectFrame {
  type: "disconnect";
  code: number;
  reconnect_after_ms?: number;
  reason?: string;
}

export type ReplyFrame =
  | SubscribedFrame
  | UnsubscribedFrame
  | PongFrame
  | RefreshedFrame
  | RegisteredFrame
  | PublishedFrame
  | HistoryFrame
  | PresenceFrame
  | ErrorFrame;

export type ControlFrame = ConnectionEstablishedFrame | ReloadFrame | DisconnectFrame | ReplyFrame;

/** The types of the protocol's own frames; any other `type` is an event. */
const CONTROL_TYPES: ReadonlySet<string> = new Set([
  "connection_established",
  "subscribed",
  "unsubscribed",
  "pong",
  "refreshed",
  "registered",
  "published",
  "history",
  "presence",
  "reload",
  "error",
  "disconnect",
]);

/** A frame from the server: one of the protocol's, or an event. */
export type ServerFrame = { kind: "control"; frame: ControlFrame } | { kind: "event"; event: GatewayEvent };

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Sorts a decoded JSON value into a control frame or an event; `undefined` if it is neither. */
export function classifyFrame(value: unknown): ServerFrame | undefined {
  if (!isRecord(value) || typeof value["type"] !== "string") return undefined;
  if (CONTROL_TYPES.has(value["type"])) return { kind: "control", frame: value as unknown as ControlFrame };
  return { kind: "event", event: value as unknown as GatewayEvent };
}

/** Decodes one JSON text frame. */
export function parseFrame(text: string): ServerFrame | undefined {
  try {
    return classifyFrame(JSON.parse(text));
  } catch {
    return undefined;
  }
}
