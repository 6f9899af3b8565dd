/**
 * Which messages of a call go out together: all in one pipeline, or on a Redis Cluster one
 * pipeline per hash slot of the messages' topics (a channel's topic is in the slot of its
 * history keys), as the Rust crate's `Publisher::groups` does it.
 */

import calculateSlot from "cluster-key-slot";

import type { RedisMode } from "./topology.js";
import type { Message } from "./wire.js";

/** The hash slot of `key` on a Redis Cluster (0 to 16383), by its hash tag where it has one. */
export function slotOf(key: string): number {
  return calculateSlot(key);
}

/**
 * The indexes of `messages` in pipelines: one with all of them, or on a cluster one per hash
 * slot of their topics, in the order of each one's first message, each in the messages' order.
 */
export function pipelines(messages: readonly Message[], mode: RedisMode = "standalone"): number[][] {
  if (mode !== "cluster") return messages.length === 0 ? [] : [messages.map((_, index) => index)];
  const bySlot = new Map<number, number[]>();
  messages.forEach((message, index) => {
    const slot = slotOf(message.topic);
    const group = bySlot.get(slot);
    if (group === undefined) bySlot.set(slot, [index]);
    else group.push(index);
  });
  // A Map keeps its keys in the order they were first set: that of each group's first message.
  return [...bySlot.values()];
}
