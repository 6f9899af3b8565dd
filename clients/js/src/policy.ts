/**
 * What the client does when its connection closes, by close code (SPEC.md "Close codes" and
 * docs/protocol.md). One table, so the behaviour is stated in one place.
 */

/** What to do after a close. */
export type CloseAction =
  /** Stop for good, in state `closed` (4001, 4003, 4004, and 1000 from the server). */
  | { kind: "stop" }
  /** Reconnect after a backoff delay. */
  | { kind: "backoff" }
  /** Reconnect after exactly this delay (4200's `reconnect_after_ms`; 0 after 4002). */
  | { kind: "wait"; delayMs: number };

/** Why each code gets its action, for docs and logs. */
export const CLOSE_CODES: Readonly<Record<number, string>> = {
  1000: "normal closure: stop",
  1001: "idle timeout or going away: reconnect with backoff",
  1006: "connection lost: reconnect with backoff",
  1009: "a frame over the server's size limit: reconnect with backoff (the frame is refused)",
  1011: "internal error: reconnect with backoff",
  4001: "token invalid: stop until there is a new token",
  4002: "token expired: get a new token, reconnect at once",
  4003: "protocol abuse: stop",
  4004: "disconnected by an operator: stop",
  4100: "slow consumer: reconnect with backoff and recover",
  4101: "rate limited: reconnect with backoff",
  4102: "too many connections for this user: reconnect with backoff",
  4200: "node shutting down: reconnect after the advised delay and recover",
};

const STOP: ReadonlySet<number> = new Set([1000, 4001, 4003, 4004]);

/**
 * The action for a close with `code`. `advisedDelayMs` is the `reconnect_after_ms` of a
 * `disconnect` frame received just before, if any.
 */
export function closeAction(code: number, advisedDelayMs?: number): CloseAction {
  if (STOP.has(code)) return { kind: "stop" };
  if (code === 4002) return { kind: "wait", delayMs: 0 };
  if (code === 4200) {
    if (advisedDelayMs !== undefined && Number.isFinite(advisedDelayMs) && advisedDelayMs >= 0) {
      return { kind: "wait", delayMs: advisedDelayMs };
    }
    return { kind: "backoff" };
  }
  // 1001, 1005, 1006, 1009, 1011, 4100, 4101, 4102, and any code the contract does not name.
  return { kind: "backoff" };
}

/**
 * The close an HTTP transport (SSE, poll) reports for a request the server refused with
 * `status` and the JSON error body's `errorCode`, as the WebSocket would have been closed:
 * 401 is a refused token (4001), except an expired one on a connection already established,
 * which gets a new token (4002); 429 is the per-user connection cap (4102); anything else is a
 * connection that could not be made (1006, backoff).
 */
export function httpCloseCode(status: number, errorCode: string | undefined, established: boolean): number {
  if (status === 401) return established && errorCode === "expired" ? 4002 : 4001;
  if (status === 429) return 4102;
  return 1006;
}
