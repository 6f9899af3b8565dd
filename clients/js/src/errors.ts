/**
 * Every error the client reports: the server's `error` codes (`forbidden`, `invalid_channel`,
 * `rate_limited`, …, see docs/protocol.md) and the client's own, listed in {@link ClientErrorCode}.
 */

/** Codes of errors that the client raises itself, beside the server's. */
export type ClientErrorCode =
  /** The offline queue was full: the oldest queued request was dropped. */
  | "queue_overflow"
  /** The request is larger than the offline queue may hold. */
  | "too_large"
  /** The connection dropped before the server answered; a publish may or may not have happened. */
  | "disconnected"
  /** `close()` was called, or the client stopped for good (4001, 4003, 4004, 1000). */
  | "closed"
  /** No reply within `requestTimeoutMs`. */
  | "timeout"
  /** A subscription was refused by the server (`subscribed.rejected`). */
  | "subscription_rejected"
  /** The server unsubscribed the connection from a channel (an operator's `/api/unsubscribe`). */
  | "unsubscribed"
  /** The server answered a request with a frame of another type. */
  | "bad_reply"
  /** The token getter failed. */
  | "token"
  /**
   * `publish`, `register`, `history` or `presence` while connected over SSE or long-poll, which
   * carry frames one way only (a registration is applied once a WebSocket connects).
   */
  | "not_supported_on_transport";

export class GatewayError extends Error {
  /** The server's `error` code, or one of {@link ClientErrorCode}. */
  readonly code: string;
  /** The channel concerned, when there is one. */
  readonly channel: string | undefined;

  constructor(code: string, message: string, channel?: string) {
    super(message);
    this.name = "GatewayError";
    this.code = code;
    this.channel = channel;
  }
}
