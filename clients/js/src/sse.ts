/**
 * The server-sent events transport: `GET /sse` read with `fetch`, in browsers and Node alike.
 * Not `EventSource`: it cannot send the token in a header, hides the heartbeat comments (so a
 * dead stream could not be told from an idle one) and reconnects on its own, behind the
 * client's backoff and close-code policy. Here the client decides: a stream that ends is a
 * close, and the next stream starts from the cursor of the client's positions.
 */

import { OneWayTransport, requestUrl } from "./http.js";
import type { TransportFactory } from "./transport.js";

/** One item of an event stream: a message, or a comment (`: ping`). */
export type SseItem = { data: string; id: string | undefined } | { comment: string };

/** Splits an event stream into messages and comments, as the WHATWG rules say (lines end in LF or CRLF). */
export class SseParser {
  private buffer = "";
  private data: string[] = [];
  private id: string | undefined;

  /** Feeds decoded text; returns the items it completed. */
  push(text: string): SseItem[] {
    const items: SseItem[] = [];
    this.buffer += text;
    let end: number;
    while ((end = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, end).replace(/\r$/, "");
      this.buffer = this.buffer.slice(end + 1);
      if (line === "") {
        if (this.data.length > 0) items.push({ data: this.data.join("\n"), id: this.id });
        this.data = [];
      } else if (line.startsWith(":")) {
        items.push({ comment: line.slice(1).trim() });
      } else {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") this.data.push(value);
        else if (field === "id") this.id = value;
      }
    }
    return items;
  }
}

class SseTransport extends OneWayTransport {
  readonly name = "sse";

  protected restart(): void {
    void this.stream();
  }

  private async stream(): Promise<void> {
    const controller = this.begin();
    const request = this.params.request();
    try {
      const response = await this.get(requestUrl(this.params.url, "sse", request, true), request.token, controller);
      const body = response?.body;
      if (!body) return;
      const reader = body.getReader();
      const decoder = new TextDecoder();
      const parser = new SseParser();
      for (;;) {
        const { done, value } = await reader.read();
        if (!this.current(controller)) return;
        if (done) break;
        for (const item of parser.push(decoder.decode(value, { stream: true }))) {
          if ("comment" in item) {
            this.handlers.onAlive();
            continue;
          }
          let frame: unknown;
          try {
            frame = JSON.parse(item.data);
          } catch {
            continue;
          }
          if (!this.deliver(frame, controller)) return;
        }
      }
      this.finish(1006, "the event stream ended");
    } catch (error) {
      if (this.current(controller)) this.finish(1006, `the event stream failed: ${String(error)}`);
    }
  }
}

/** The factory of SSE transports (needs a global `fetch`: browsers, Node 18+). */
export const sseTransport: TransportFactory = {
  name: "sse",
  open: (params, handlers) => new SseTransport(params, handlers),
};
