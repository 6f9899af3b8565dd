/**
 * Positions per channel: the last offset and epoch delivered. They decide what is new (an event
 * at or below the last offset of the same epoch was delivered already and is dropped) and what
 * the client sends as `since` when it resubscribes after a reconnect.
 */

import type { GatewayEvent, Position } from "./frames.js";

/** Whether `event` is new on a channel at `position`, and the channel's position after it. */
export function advance(
  position: Position | undefined,
  event: Pick<GatewayEvent, "offset" | "epoch">,
): { fresh: boolean; position: Position | undefined } {
  if (event.offset === undefined) return { fresh: true, position };
  const next = { offset: event.offset, epoch: event.epoch ?? position?.epoch ?? "" };
  if (position === undefined || next.epoch !== position.epoch) return { fresh: true, position: next };
  if (event.offset <= position.offset) return { fresh: false, position };
  return { fresh: true, position: next };
}

export class Positions {
  private readonly byChannel = new Map<string, Position>();

  get(channel: string): Position | undefined {
    return this.byChannel.get(channel);
  }

  set(channel: string, position: Position): void {
    this.byChannel.set(channel, { offset: position.offset, epoch: position.epoch });
  }

  delete(channel: string): void {
    this.byChannel.delete(channel);
  }

  /** Records `event` on `channel`; false when it was delivered already (drop it). */
  accept(channel: string, event: Pick<GatewayEvent, "offset" | "epoch">): boolean {
    const { fresh, position } = advance(this.byChannel.get(channel), event);
    if (position) this.byChannel.set(channel, position);
    return fresh;
  }

  /** `since` for a subscribe frame: the known positions of `channels`. */
  since(channels: Iterable<string>): Record<string, Position> | undefined {
    let since: Record<string, Position> | undefined;
    for (const channel of channels) {
      const position = this.byChannel.get(channel);
      if (position) (since ??= {})[channel] = { ...position };
    }
    return since;
  }
}
