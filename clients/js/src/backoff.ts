/**
 * Reconnect delays: exponential with full jitter above a floor, as centrifuge-js does. Attempt
 * `n` (0-based) waits a uniformly random time in `[min, min(max, min + min·2ⁿ)]`, so a crowd of
 * clients that lost the same node spreads out instead of reconnecting together.
 */

export interface BackoffOptions {
  /** The shortest delay, ms (default 500). */
  minDelayMs?: number;
  /** The longest delay, ms (default 20 000). */
  maxDelayMs?: number;
}

export const DEFAULT_MIN_DELAY_MS = 500;
export const DEFAULT_MAX_DELAY_MS = 20_000;

/** The delay before reconnect attempt `attempt` (0 for the first). `random` is in [0, 1). */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const min = options.minDelayMs ?? DEFAULT_MIN_DELAY_MS;
  const max = Math.max(min, options.maxDelayMs ?? DEFAULT_MAX_DELAY_MS);
  const step = Math.min(Math.max(0, Math.floor(attempt)), 31);
  const ceiling = Math.min(max, min + min * 2 ** step);
  return Math.round(min + random() * (ceiling - min));
}

/** Counts attempts; {@link Backoff.reset} once a connection proved stable. */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly options: BackoffOptions = {},
    private readonly random: () => number = Math.random,
  ) {}

  /** The next delay, counting one more attempt. */
  next(): number {
    return backoffDelay(this.attempt++, this.options, this.random);
  }

  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}
