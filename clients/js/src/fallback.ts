/**
 * When the client moves to the next transport of its `transports` list (docs/client.md
 * "Transports"). A transport that cannot establish a connection — an HTTP status refused it
 * (a proxy's 403 on `/ws`), or it failed {@link FAILURES_BEFORE_FALLBACK} times in a row to get
 * to `connection_established` — gives way to the next one. Closes the server chose (a code other
 * than 1006), a draining or overloaded server's 503/429 and attempts made while the browser is
 * offline say nothing about the transport and are not counted.
 */

/** Consecutive failures to connect after which the client moves to the next transport. */
export const FAILURES_BEFORE_FALLBACK = 2;

/** How one connection attempt ended. */
export interface Attempt {
  /** It got to `connection_established`. */
  established: boolean;
  /** The close code (1006: lost or refused). */
  code: number;
  /** The HTTP status that refused it, where the transport could tell. */
  httpStatus?: number | undefined;
  /** The browser said it was offline. */
  offline?: boolean;
}

/** The failures in a row after `attempt`, and whether to move to the next transport now. */
export function afterAttempt(failures: number, attempt: Attempt): { failures: number; fallBack: boolean } {
  if (attempt.established) return { failures: 0, fallBack: false };
  const status = attempt.httpStatus;
  if (attempt.code !== 1006 || attempt.offline || status === 401 || status === 408 || status === 429 || status === 503) {
    return { failures, fallBack: false };
  }
  // A 4xx is a refusal of this very transport (a proxy that does not pass it): move on now.
  if (status !== undefined && status >= 400 && status < 500) return { failures: 0, fallBack: true };
  const next = failures + 1;
  return next >= FAILURES_BEFORE_FALLBACK ? { failures: 0, fallBack: true } : { failures: next, fallBack: false };
}
