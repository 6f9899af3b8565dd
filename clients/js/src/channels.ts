/**
 * The client's channels: the {@link SharedChannel} of every subscribed channel and every
 * channel's position (held by the {@link Connection}). Subscribes them over a WebSocket with
 * `subscribe` frames (one per tick) and over a one-way transport by what its requests ask for,
 * applies the server's `subscribed` replies and `reload`s, and delivers each event once, in order.
 */

import type { Connection } from "./connection.js";
import { decodeCursor, encodeCursor } from "./cursor.js";
import { GatewayError } from "./errors.js";
import type { ClientFrame, GatewayEvent, Position, SubscribedFrame } from "./frames.js";
import { request } from "./requests.js";
import { SharedChannel, type Subscription, type SubscriptionHandlers } from "./subscription.js";
import type { OneWayRequest } from "./transport.js";

/** The channels a subscribe frame or a one-way transport asked for, and the positions it asked from. */
export interface Asked {
  since: Record<string, Position>;
  sent: Map<string, SharedChannel | undefined>;
}

export function subscribe<T>(c: Connection, channel: string, handlers: SubscriptionHandlers<T>): Subscription<T> {
  let shared = c.channels.get(channel);
  if (!shared) {
    shared = new SharedChannel(channel, {
      position: (name) => c.positions.get(name),
      release: (name) => release(c, name),
    });
    c.channels.set(channel, shared);
  } else if (shared.state === "rejected") {
    shared.state = "pending"; // a new subscriber asks again
  }
  if (shared.state === "pending" && c.state === "connected") scheduleSubscribe(c);
  return shared.join(handlers);
}

function release(c: Connection, name: string): void {
  const shared = c.channels.get(name);
  if (!shared || shared.size > 0) return;
  c.channels.delete(name);
  if (name === c.personalChannel) return; // the server keeps it; so do we, with its position
  c.positions.delete(name);
  if (c.state === "connected" && (shared.state === "subscribing" || shared.state === "subscribed")) {
    if (c.oneWay) c.socket?.update();
    else request(c, { type: "unsubscribe", channels: [name] }, "unsubscribed", false).catch(() => {});
  }
}

export function onEvent(c: Connection, event: GatewayEvent): void {
  const channel = event.channel;
  if (channel !== undefined) {
    const shared = c.channels.get(channel);
    // A late event of a channel just unsubscribed.
    if (!shared && channel !== c.personalChannel) return;
    if (!c.positions.accept(channel, event)) return;
    shared?.dispatch(event);
  }
  c.emit("event", event);
}

export function reloadChannel(c: Connection, channel: string, position: Position): void {
  c.positions.set(channel, position);
  c.channels.get(channel)?.reload(position);
  c.emit("reload", channel, position);
}

export function unsubscribedByServer(c: Connection, channels: string[]): void {
  for (const name of channels) {
    const shared = c.channels.get(name);
    if (!shared) continue;
    c.channels.delete(name);
    c.positions.delete(name);
    shared.end(new GatewayError("unsubscribed", `the server unsubscribed this connection from ${name}`, name));
  }
}

/** The channels that need a subscribe frame: all but the personal one, which the server subscribes. */
export function serverChannels(c: Connection): string[] {
  const personal = c.personalChannel;
  const names: string[] = [];
  for (const [name, shared] of c.channels) {
    if (name !== personal && shared.state !== "rejected") names.push(name);
  }
  return names;
}

/** Subscribes the channels added in this tick with one frame. */
function scheduleSubscribe(c: Connection): void {
  if (c.subscribeScheduled) return;
  c.subscribeScheduled = true;
  queueMicrotask(() => {
    c.subscribeScheduled = false;
    flushSubscribes(c);
  });
}

export function flushSubscribes(c: Connection): void {
  if (c.state !== "connected") return;
  const personal = c.personalChannel;
  const names: string[] = [];
  for (const [name, shared] of c.channels) {
    if (shared.state !== "pending") continue;
    if (name === personal) {
      shared.subscribed({ channel: name, recovered: undefined, position: c.positions.get(name) });
      continue;
    }
    names.push(name);
  }
  if (names.length === 0) return;
  // A one-way transport subscribes by asking again, with the new channel set.
  if (c.oneWay) {
    c.socket?.update();
    return;
  }
  const asked = ask(c, names);
  const since = Object.keys(asked.since).length > 0 ? asked.since : undefined;
  const frame: ClientFrame = since ? { type: "subscribe", channels: names, since } : { type: "subscribe", channels: names };
  request<SubscribedFrame>(c, frame, "subscribed", false).then(
    (reply) => onSubscribed(c, reply, asked),
    () => {
      // Lost with the connection: the channels are subscribed again on the next one.
    },
  );
}

/**
 * Marks `names` as being subscribed and notes from where: the reply applies to these very
 * channel objects, not to ones made again since.
 */
function ask(c: Connection, names: string[]): Asked {
  const sent = new Map<string, SharedChannel | undefined>();
  for (const name of names) {
    const shared = c.channels.get(name);
    if (shared?.state === "pending") shared.state = "subscribing";
    sent.set(name, shared);
  }
  return { since: c.positions.since(names) ?? {}, sent };
}

/** What a one-way transport asks for now: every channel, from the client's positions. */
export function oneWayRequest(c: Connection): OneWayRequest {
  const channels = serverChannels(c);
  c.asked = ask(c, channels);
  const personal = c.personalChannel;
  const positions = c.positions.since(personal === undefined ? channels : [...channels, personal]);
  return { token: c.token ?? "", channels, cursor: positions && encodeCursor(positions) };
}

/**
 * A poll's answer: its cursor holds the positions the server started channels from where it
 * said nothing (a channel added to a poll is confirmed only by the answer), so take those the
 * client has none of; the channels asked for are subscribed now.
 */
export function foldCursor(c: Connection, cursor: string): void {
  const positions = decodeCursor(cursor) ?? {};
  for (const [name, position] of Object.entries(positions)) {
    if ((c.channels.has(name) || name === c.personalChannel) && !c.positions.get(name)) c.positions.set(name, position);
  }
  for (const [name, shared] of c.asked?.sent ?? []) {
    if (shared?.state === "subscribing" && c.channels.get(name) === shared) {
      shared.subscribed({ channel: name, recovered: undefined, position: c.positions.get(name) });
    }
  }
}

export function onSubscribed(c: Connection, reply: SubscribedFrame, asked: Asked): void {
  const { since, sent } = asked;
  // Replies of one-way transports repeat channels already subscribed: only a reload is news then.
  const current = (name: string): SharedChannel | undefined => {
    const shared = c.channels.get(name);
    return shared && shared === sent.get(name) && shared.state !== "rejected" ? shared : undefined;
  };
  for (const name of reply.channels) {
    const shared = current(name);
    if (!shared) continue;
    const recovered = reply.recovered?.[name];
    const position = reply.positions?.[name];
    if (recovered === false && position) {
      reloadChannel(c, name, position);
    } else if (position && since[name] === undefined && !c.positions.get(name)) {
      c.positions.set(name, position);
    }
    if (shared.state === "subscribing") shared.subscribed({ channel: name, recovered, position });
  }
  for (const rejection of reply.rejected) {
    const shared = current(rejection.channel);
    if (shared?.state !== "subscribing") continue;
    const error = new GatewayError(
      rejection.code,
      `subscription to ${rejection.channel} refused (${rejection.code})${rejection.message ? `: ${rejection.message}` : ""}`,
      rejection.channel,
    );
    // A server failure is retried on the next connection; a refusal is final.
    shared.fail(error, rejection.code === "internal" ? "pending" : "rejected");
    c.emit("error", error);
  }
}
