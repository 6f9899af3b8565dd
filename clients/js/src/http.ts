/**
 * What the one-way transports share (`sse.ts`, `poll.ts`): their requests' URLs, a close when
 * the server refuses one, and the reopening of a request when the channels or the token change.
 */

import { httpCloseCode } from "./policy.js";
import { type OneWayRequest, type OpenParams, siblingUrl, type Transport, type TransportHandlers, type TransportName } from "./transport.js";

/** How long `update()` waits for more changes before it reopens: one reopen for a burst of subscribes. */
export const UPDATE_DEBOUNCE_MS = 50;

/**
 * The URL of a request: each channel as `channel=` (names may hold commas), the cursor where
 * `withCursor`, and `extra` query parameters.
 */
export function requestUrl(url: string, name: "sse" | "poll", request: OneWayRequest, withCursor: boolean, extra?: string): string {
  const query = request.channels.map((channel) => `channel=${encodeURIComponent(channel)}`);
  if (withCursor && request.cursor !== undefined) query.push(`cursor=${encodeURIComponent(request.cursor)}`);
  if (extra !== undefined) query.push(extra);
  return siblingUrl(url, name) + (query.length > 0 ? `?${query.join("&")}` : "");
}

/** The close code and reason for a refused response (docs/protocol.md: a JSON error body). */
async function refusal(response: Response, established: boolean): Promise<[number, string]> {
  let code: string | undefined;
  let message = "";
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string } };
    code = body.error?.code;
    message = body.error?.message ?? "";
  } catch {
    // not the gateway's answer (a proxy's page)
  }
  return [httpCloseCode(response.status, code, established), `HTTP ${response.status}${code ? ` ${code}` : ""}${message ? `: ${message}` : ""}`];
}

/** A transport over HTTP requests: one in flight at a time, replaced on `update()`. */
export abstract class OneWayTransport implements Transport {
  abstract readonly name: TransportName;
  readonly duplex = false;
  private closed = false;
  /** The request (or poll loop) in flight; a new one aborts it. */
  private controller: AbortController | undefined;
  private updateTimer: ReturnType<typeof setTimeout> | undefined;
  /** A request of this transport was answered: a 401 since then means the token expired. */
  protected established = false;

  constructor(
    protected readonly params: OpenParams,
    protected readonly handlers: TransportHandlers,
  ) {
    // After the subclass is built and the client holds the transport (unless it closed it at once).
    queueMicrotask(() => {
      if (!this.closed) this.restart();
    });
  }

  send(): void {
    // One-way: the server learns everything from the request.
  }

  update(): void {
    if (this.closed) return;
    if (this.updateTimer !== undefined) clearTimeout(this.updateTimer);
    this.updateTimer = setTimeout(() => {
      this.updateTimer = undefined;
      if (!this.closed) this.restart();
    }, UPDATE_DEBOUNCE_MS);
  }

  close(): void {
    this.closed = true;
    if (this.updateTimer !== undefined) clearTimeout(this.updateTimer);
    this.controller?.abort();
    this.controller = undefined;
  }

  /** Starts over with a new request, aborting the one in flight. */
  protected abstract restart(): void;

  /** A new request's controller; the one in flight is aborted. */
  protected begin(): AbortController {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    return controller;
  }

  /** Whether the request of `controller` is still the transport's. */
  protected current(controller: AbortController): boolean {
    return !this.closed && this.controller === controller;
  }

  /** GETs `url` with the token; undefined when refused (the transport is closed then) or superseded. */
  protected async get(url: string, token: string, controller: AbortController): Promise<Response | undefined> {
    const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` }, signal: controller.signal });
    if (!this.current(controller)) return undefined;
    if (response.ok) {
      if (!this.established) {
        this.established = true;
        this.handlers.onOpen();
      }
      return response;
    }
    const [code, reason] = await refusal(response, this.established);
    if (this.current(controller)) this.finish(code, reason, response.status);
    return undefined;
  }

  /**
   * Hands `frame` to the client; false once the transport is done with this request: closed,
   * superseded, or ended by the server's `disconnect` frame (its code is the close's).
   */
  protected deliver(frame: unknown, controller: AbortController): boolean {
    this.handlers.onFrame(frame);
    if (!this.current(controller)) return false;
    const { type, code, reason } = frame as { type?: unknown; code?: unknown; reason?: unknown };
    if (type !== "disconnect") return true;
    this.finish(typeof code === "number" ? code : 1006, typeof reason === "string" ? reason : "disconnected by the server");
    return false;
  }

  /** Closes and reports it, once. */
  protected finish(code: number, reason: string, httpStatus?: number): void {
    if (this.closed) return;
    this.close();
    this.handlers.onClose(code, reason, httpStatus);
  }
}
