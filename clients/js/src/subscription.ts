/**
 * Subscriptions. Every `client.subscribe(channel)` returns its own {@link Subscription}; all the
 * local subscribers of one channel share one {@link SharedChannel}, and so one subscription on
 * the server: the first subscriber subscribes the channel, the last one to leave unsubscribes it.
 */

import { reportListenerError } from "./emitter.js";
import type { GatewayError } from "./errors.js";
import type { GatewayEvent, Position } from "./frames.js";

export interface SubscriptionHandlers<T = unknown> {
  /** Each new event of the channel, once, in order. */
  onEvent?(event: GatewayEvent<T>): void;
  /**
   * Events may have been missed (the server answered `recovered: false`, or sent `reload`):
   * reload the channel's state from your backend. Live events continue after `position`.
   */
  onReload?(position: Position): void;
  /** The server confirmed the subscription; `recovered` is set when it was resumed from a position. */
  onSubscribed?(info: SubscribedInfo): void;
  /** The server refused the channel (`forbidden`, `invalid_channel`, …) or unsubscribed it. */
  onError?(error: GatewayError): void;
}

export interface SubscribedInfo {
  channel: string;
  /** true: every missed event follows; false: see onReload; undefined: nothing to recover. */
  recovered: boolean | undefined;
  /** The channel's position where it keeps history. */
  position: Position | undefined;
}

/**
 * Where a channel's server subscription stands: `pending` (to be sent once connected),
 * `subscribing` (sent), `subscribed`, `rejected` (refused by the server; not retried).
 */
export type ChannelState = "pending" | "subscribing" | "subscribed" | "rejected";

export type SubscriptionState = ChannelState | "unsubscribed";

/** The client's side of a shared channel: how positions are read and a channel is dropped. */
export interface ChannelOwner {
  position(channel: string): Position | undefined;
  /** The last local subscriber left. */
  release(channel: string): void;
}

/** One channel's local subscribers and the state of its server subscription. */
export class SharedChannel {
  state: ChannelState = "pending";
  private readonly members = new Set<Subscription>();
  private lastSubscribed: SubscribedInfo | undefined;

  constructor(
    readonly name: string,
    private readonly owner: ChannelOwner,
  ) {}

  join<T>(handlers: SubscriptionHandlers<T>): Subscription<T> {
    const subscription = new Subscription<T>(this, handlers);
    this.members.add(subscription);
    const info = this.lastSubscribed;
    if (this.state === "subscribed" && info) {
      // A late subscriber of a channel that is already live hears it too, but not synchronously.
      queueMicrotask(() => {
        if (this.members.has(subscription)) call(() => subscription.handlers.onSubscribed?.(info));
      });
    }
    return subscription;
  }

  leave(subscription: Subscription): void {
    if (!this.members.delete(subscription)) return;
    if (this.members.size === 0) this.owner.release(this.name);
  }

  get size(): number {
    return this.members.size;
  }

  position(): Position | undefined {
    return this.owner.position(this.name);
  }

  /** Connection lost: subscribe again on the next one (refused channels stay refused). */
  reset(): void {
    if (this.state !== "rejected") this.state = "pending";
  }

  dispatch(event: GatewayEvent): void {
    for (const member of [...this.members]) call(() => member.handlers.onEvent?.(event));
  }

  reload(position: Position): void {
    for (const member of [...this.members]) call(() => member.handlers.onReload?.(position));
  }

  subscribed(info: SubscribedInfo): void {
    this.state = "subscribed";
    this.lastSubscribed = info;
    for (const member of [...this.members]) call(() => member.handlers.onSubscribed?.(info));
  }

  fail(error: GatewayError, state: ChannelState): void {
    this.state = state;
    for (const member of [...this.members]) call(() => member.handlers.onError?.(error));
  }

  /** The server ended the subscription: every member is told and detached. */
  end(error: GatewayError): void {
    const members = [...this.members];
    this.members.clear();
    for (const member of members) {
      member.detach();
      call(() => member.handlers.onError?.(error));
    }
  }
}

function call(fn: () => void): void {
  try {
    fn();
  } catch (error) {
    reportListenerError(error);
  }
}

/** One local subscriber of a channel. */
export class Subscription<T = unknown> {
  private shared: SharedChannel | undefined;

  /** @internal */
  constructor(
    shared: SharedChannel,
    /** @internal */
    readonly handlers: SubscriptionHandlers<T>,
  ) {
    this.shared = shared;
    this.channel = shared.name;
  }

  readonly channel: string;

  get state(): SubscriptionState {
    return this.shared?.state ?? "unsubscribed";
  }

  /** The last position delivered on this channel, where it keeps history. */
  get position(): Position | undefined {
    return this.shared?.position();
  }

  /** Stops this subscriber; the channel is unsubscribed on the server once none is left. */
  unsubscribe(): void {
    const shared = this.shared;
    this.shared = undefined;
    shared?.leave(this);
  }

  /** @internal */
  detach(): void {
    this.shared = undefined;
  }
}
