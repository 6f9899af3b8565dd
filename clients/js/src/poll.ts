/**
 * The long-poll transport: `GET /poll` in a loop. The first poll of a connection goes without a
 * cursor and is answered at once with `connection_established` and `subscribed`; each next one
 * carries the cursor of the client's positions, so any replica serves it, and is answered as
 * soon as there are frames, or empty after {@link POLL_WAIT_MS} (or the server's heartbeat
 * interval, if shorter). A poll after `update()` asks not to wait, so a new channel is confirmed
 * at once.
 */

import { OneWayTransport, requestUrl } from "./http.js";
import type { TransportFactory } from "./transport.js";

/** How long the server may hold a poll (`timeout_ms`). */
export const POLL_WAIT_MS = 25_000;
/** A poll not answered this long after its wait is given up as lost. */
const POLL_GRACE_MS = 15_000;

class PollTransport extends OneWayTransport {
  readonly name = "poll";
  /** The next poll asks to be answered at once. */
  private hurry = true;
  /**
   * How long a poll may wait: {@link POLL_WAIT_MS}, or the server's heartbeat interval where
   * shorter, as the client expects a sign of life that often.
   */
  private waitMs = POLL_WAIT_MS;

  protected restart(): void {
    this.hurry = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    const controller = this.begin();
    while (this.current(controller)) {
      const request = this.params.request();
      const wait = this.hurry ? 0 : this.waitMs;
      this.hurry = false;
      const url = requestUrl(this.params.url, "poll", request, this.established, `timeout_ms=${wait}`);
      const timer = setTimeout(() => controller.abort(), wait + POLL_GRACE_MS);
      let answer: { frames?: unknown[]; cursor?: unknown };
      try {
        const response = await this.get(url, request.token, controller);
        if (!response) return;
        answer = (await response.json()) as typeof answer;
      } catch (error) {
        if (this.current(controller)) this.finish(1006, `the poll failed: ${String(error)}`);
        return;
      } finally {
        clearTimeout(timer);
      }
      if (!this.current(controller)) return;
      for (const frame of answer.frames ?? []) {
        const heartbeat = (frame as { heartbeat_interval_ms?: unknown } | null)?.heartbeat_interval_ms;
        if (typeof heartbeat === "number" && heartbeat > 0) this.waitMs = Math.min(POLL_WAIT_MS, heartbeat);
        if (!this.deliver(frame, controller)) return;
      }
      if (typeof answer.cursor === "string") this.handlers.onCursor(answer.cursor);
      this.handlers.onAlive();
    }
  }
}

/** The factory of long-poll transports (needs a global `fetch`: browsers, Node 18+). */
export const pollTransport: TransportFactory = {
  name: "poll",
  open: (params, handlers) => new PollTransport(params, handlers),
};
