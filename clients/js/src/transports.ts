/**
 * The client's `transports`, in fallback order, and the one connections are made with: it moves
 * to the next one when one cannot connect (`fallback.ts` says when), and while on a one-way
 * transport it tries WebSocket again now and then, with a probe opened beside the connection
 * that becomes the connection once its subscriptions are live (docs/client.md "Transports").
 */

import { type Asked, onSubscribed, oneWayRequest, serverChannels } from "./channels.js";
import type { GatewayClientOptions } from "./client.js";
import { resolveCodec } from "./codec.js";
import type { Connection } from "./connection.js";
import { afterAttempt, type Attempt } from "./fallback.js";
import { classifyFrame, type RequestId, type SubscribedFrame } from "./frames.js";
import { pollTransport } from "./poll.js";
import { request } from "./requests.js";
import { sseTransport } from "./sse.js";
import type { SharedChannel } from "./subscription.js";
import {
  type Transport,
  type TransportFactory,
  type TransportName,
  type WebSocketConstructor,
  webSocketTransport,
} from "./transport.js";

export const DEFAULT_TRANSPORTS: TransportName[] = ["websocket", "sse", "poll"];
const HTTP_TRANSPORTS = { sse: sseTransport, poll: pollTransport };
/** The first try of WebSocket after falling back from lost connections: 2–4 s. */
const UPGRADE_SOON_MS = 2000;

/** A WebSocket opened beside a one-way transport, to move back to it once it is subscribed. */
export interface Probe {
  transport: Transport | undefined;
  /** Its frames until the switch. */
  frames: unknown[];
  /** What its `subscribe` asked for; its id. */
  asked: Asked | undefined;
  id: RequestId | undefined;
  /** The client's generation once it is the connection (-1 before). */
  generation: number;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * The factories of the transports `names` that are available here, in that order; the WebSocket
 * speaks the `format` of the options, SSE and poll JSON.
 */
export function resolveTransports(names: TransportName[], options: GatewayClientOptions): TransportFactory[] {
  const codec = resolveCodec(options.format);
  const factories: TransportFactory[] = [];
  const fetchable = typeof (globalThis as { fetch?: unknown }).fetch === "function";
  for (const name of new Set(names)) {
    if (name === "websocket") {
      const Impl =
        options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
      if (!Impl) {
        throw new Error("no WebSocket implementation: pass one as the `WebSocket` option (e.g. the ws package on Node before 22), or leave \"websocket\" out of `transports`");
      }
      factories.push(webSocketTransport(Impl, codec));
    } else {
      // Names this version does not know (from plain JavaScript) are skipped.
      const factory = (HTTP_TRANSPORTS as Partial<Record<string, TransportFactory>>)[name];
      if (factory && fetchable) factories.push(factory);
    }
  }
  if (factories.length === 0) {
    throw new Error(`none of the transports ${JSON.stringify(names)} is available (sse and poll need a global fetch)`);
  }
  return factories;
}

/** Moves to the next transport when the current one cannot connect (`fallback.ts`). */
export function judgeTransport(c: Connection, attempt: Attempt): void {
  const { failures, fallBack } = afterAttempt(c.failures, attempt);
  c.failures = failures;
  if (!fallBack) return;
  c.transportIndex = (c.transportIndex + 1) % c.factories.length;
  c.upgradeSoon = attempt.httpStatus === undefined;
}

// ---- back to WebSocket ----

/** On a one-way transport, tries WebSocket again after a while, where it comes first in `transports`. */
export function scheduleUpgrade(c: Connection): void {
  c.clearTimer("upgradeTimer");
  const target = c.factories.findIndex((factory) => factory.name === "websocket");
  if (target < 0 || target >= c.transportIndex) return;
  const delay = c.upgradeSoon ? UPGRADE_SOON_MS * (1 + Math.random()) : c.upgradeBackoff.next();
  c.upgradeSoon = false;
  c.upgradeTimer = setTimeout(() => {
    c.upgradeTimer = undefined;
    startProbe(c, c.factories[target] as TransportFactory);
  }, delay);
}

/**
 * Opens a WebSocket beside the one-way connection, which goes on meanwhile: it authenticates,
 * subscribes every channel from the positions of that moment and holds what it receives; once
 * its `subscribed` comes, it becomes the connection (see {@link switchToProbe}).
 */
function startProbe(c: Connection, factory: TransportFactory): void {
  const token = c.token;
  if (c.state !== "connected" || c.probe || token === undefined) return;
  const probe: Probe = {
    transport: undefined,
    frames: [],
    asked: undefined,
    id: undefined,
    generation: -1,
    timer: setTimeout(() => endProbe(c, true), c.options.connectTimeoutMs ?? 15_000),
  };
  c.probe = probe;
  const mine = () => c.probe === probe;
  // Once switched, the probe's handlers are the connection's.
  const main = c.handlers(() => probe.generation === c.generation, factory.name, () => {});
  try {
    probe.transport = factory.open(
      { url: c.options.url, request: () => oneWayRequest(c) },
      {
        ...main,
        onOpen: () => {
          if (!mine()) return;
          const personal = c.personalChannel;
          const since = personal === undefined ? undefined : c.positions.get(personal);
          probe.transport?.send(since ? { type: "auth", token, since } : { type: "auth", token });
        },
        onFrame: (frame) => (mine() ? onProbeFrame(c, probe, frame) : main.onFrame(frame)),
        onClose: (code, reason, httpStatus) => (mine() ? endProbe(c, true) : main.onClose(code, reason, httpStatus)),
      },
    );
  } catch {
    endProbe(c, true);
  }
}

function onProbeFrame(c: Connection, probe: Probe, value: unknown): void {
  const frame = classifyFrame(value);
  if (frame?.kind === "control") {
    const control = frame.frame;
    if (control.type === "connection_established") {
      probe.frames.push(value);
      const names = serverChannels(c);
      if (names.length === 0) {
        switchToProbe(c, probe, undefined);
        return;
      }
      // The channels keep their states: they belong to the one-way connection until the switch.
      probe.asked = { since: c.positions.since(names) ?? {}, sent: new Map(names.map((name) => [name, c.channels.get(name)])) };
      probe.id = c.nextId++;
      const since = Object.keys(probe.asked.since).length > 0 ? probe.asked.since : undefined;
      probe.transport?.send(since ? { type: "subscribe", id: probe.id, channels: names, since } : { type: "subscribe", id: probe.id, channels: names });
      return;
    }
    if (control.type === "subscribed" && probe.id !== undefined && control.id === probe.id) {
      switchToProbe(c, probe, control);
      return;
    }
    if (control.type === "error" && probe.id !== undefined && control.id === probe.id) {
      endProbe(c, true);
      return;
    }
  }
  probe.frames.push(value);
}

/**
 * The probe's subscriptions are live: it becomes the connection, and the one-way transport
 * closes. What the probe held is delivered now; the events of channels with history that the
 * old transport delivered already are dropped by their offsets, so none is lost or repeated.
 */
function switchToProbe(c: Connection, probe: Probe, reply: SubscribedFrame | undefined): void {
  clearTimeout(probe.timer);
  c.probe = undefined;
  const old = c.socket;
  probe.generation = ++c.generation;
  old?.close(1000, "moved to websocket");
  c.socket = probe.transport;
  c.asked = undefined;
  c.transportIndex = c.factories.findIndex((factory) => factory.name === "websocket");
  c.failures = 0;
  c.upgradeBackoff.reset();
  const asked = probe.asked ?? { since: {}, sent: new Map<string, SharedChannel | undefined>() };
  for (const [name, shared] of c.channels) {
    if (shared.state !== "rejected") shared.state = asked.sent.get(name) === shared ? "subscribing" : "pending";
  }
  for (const value of probe.frames) {
    const frame = classifyFrame(value);
    // Events without an offset came over the old transport too, which was live until now.
    if (frame?.kind === "event" && frame.event.offset === undefined) continue;
    if (probe.generation === c.generation) c.onFrame(value, "websocket");
  }
  if (!reply || probe.generation !== c.generation) return;
  onSubscribed(c, reply, asked);
  const gone = reply.channels.filter((name) => !c.channels.has(name));
  if (gone.length > 0) request(c, { type: "unsubscribe", channels: gone }, "unsubscribed", false).catch(() => {});
}

/** Ends the probe; `failed`: try again later. */
export function endProbe(c: Connection, failed = false): void {
  const probe = c.probe;
  if (!probe) return;
  c.probe = undefined;
  clearTimeout(probe.timer);
  probe.transport?.close(1000, "not needed");
  if (failed) scheduleUpgrade(c);
}
