/**
 * The client's requests: `publish`, `register`, `history`, `presence` (client.ts) and the
 * connection's own `subscribe`, `unsubscribe`, `refresh`. Each frame sent carries an id; its reply
 * (or an `error` with that id) settles it, or its timeout does. While offline, `publish` and
 * `register` wait in the offline queue and go out once connected, where the client type is also
 * registered again; a one-way transport (SSE, poll) refuses them.
 */

import type { Connection } from "./connection.js";
import { GatewayError } from "./errors.js";
import type { ClientFrame, PublishFrame, RegisteredFrame, RegisterFrame, ReplyFrame } from "./frames.js";
import { byteLength } from "./queue.js";

/** A request awaiting its reply. */
export interface Pending {
  expect: ReplyFrame["type"];
  resolve(frame: ReplyFrame): void;
  reject(error: GatewayError): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** A request held while offline. */
export interface QueuedRequest {
  frame: PublishFrame | RegisterFrame;
  expect: ReplyFrame["type"];
  resolve(frame: ReplyFrame): void;
  reject(error: GatewayError): void;
}

/**
 * Sends `frame` and resolves with its reply of type `expect`. Not connected: a `queueable`
 * request waits in the offline queue; any other is rejected.
 */
export function request<R extends ReplyFrame>(
  c: Connection,
  frame: Exclude<ClientFrame, { type: "auth" }>,
  expect: R["type"],
  queueable: boolean,
): Promise<R> {
  return new Promise<R>((resolve, reject) => {
    const settle = {
      expect,
      resolve: resolve as (frame: ReplyFrame) => void,
      reject,
    };
    if (c.state === "connected") {
      if (c.oneWay) reject(notSupported(c, frame.type));
      else sendRequest(c, frame, settle);
      return;
    }
    if (!queueable || c.state === "closed") {
      reject(new GatewayError(c.state === "closed" ? "closed" : "disconnected", `not connected (${c.state})`));
      return;
    }
    const queued: QueuedRequest = { frame: frame as PublishFrame | RegisterFrame, ...settle };
    const bytes = byteLength(JSON.stringify(frame));
    const offer = c.queue.offer(queued, bytes);
    if (!offer.accepted) {
      reject(new GatewayError("too_large", `the request (${bytes} bytes) does not fit the offline queue (${c.queue.maxBytes} bytes, ${c.queue.maxEntries} requests)`));
    }
    for (const dropped of offer.dropped) {
      dropped.reject(new GatewayError("queue_overflow", `dropped from the offline queue (full: at most ${c.queue.maxEntries} requests, ${c.queue.maxBytes} bytes) while offline`));
    }
  });
}

function sendRequest(c: Connection, frame: Exclude<ClientFrame, { type: "auth" }>, settle: Omit<Pending, "timer">): void {
  const id = c.nextId++;
  const timeoutMs = c.options.requestTimeoutMs ?? 10_000;
  const timer = setTimeout(() => {
    if (c.pending.delete(id)) settle.reject(new GatewayError("timeout", `no reply to ${frame.type} within ${timeoutMs} ms`));
  }, timeoutMs);
  c.pending.set(id, { ...settle, timer });
  c.send({ ...frame, id });
}

/** A reply (or an error) with an id: settles the request of that id. */
export function settle(c: Connection, frame: ReplyFrame): void {
  const id = frame.id;
  if (id === undefined) return;
  const request = c.pending.get(id);
  if (!request) return;
  c.pending.delete(id);
  if (request.timer !== undefined) clearTimeout(request.timer);
  if (frame.type === "error") request.reject(new GatewayError(frame.code, frame.message));
  else if (frame.type === request.expect) request.resolve(frame);
  else request.reject(new GatewayError("bad_reply", `expected ${request.expect}, got ${frame.type}`));
}

/** The connection ended: the requests awaiting replies are rejected with `error`. */
export function rejectPending(c: Connection, error: GatewayError): void {
  const pending = [...c.pending.values()];
  c.pending.clear();
  for (const request of pending) {
    if (request.timer !== undefined) clearTimeout(request.timer);
    request.reject(error);
  }
}

/** A request that needs a WebSocket, on a one-way transport. */
function notSupported(c: Connection, type: string): GatewayError {
  const later = type === "register" ? "; the client type is set once a WebSocket connects" : "";
  return new GatewayError(
    "not_supported_on_transport",
    `${type} needs a WebSocket connection: the client is connected over ${c.info?.transport ?? "a one-way transport"}${later}`,
  );
}

/** Connected: sends what the offline queue held, and registers again on a new connection. */
export function flushQueue(c: Connection): void {
  let registered = false;
  for (const queued of c.queue.drain()) {
    if (c.oneWay) {
      queued.reject(notSupported(c, queued.frame.type));
      continue;
    }
    if (queued.frame.type === "register") registered = true;
    sendRequest(c, queued.frame, queued);
  }
  const registration = c.registration;
  if (c.oneWay) return;
  if (!registered && registration) {
    // A new connection has no client type: set the one registered before.
    const frame: RegisterFrame = { type: "register", client_type: registration.clientType };
    if (registration.clientName !== undefined) frame.client_name = registration.clientName;
    request<RegisteredFrame>(c, frame, "registered", false).catch((error: unknown) => {
      if (error instanceof GatewayError && error.code !== "disconnected") c.emit("error", error);
    });
  }
}
