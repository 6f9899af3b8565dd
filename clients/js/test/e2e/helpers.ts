/** A Node client of the package under test, and what it saw. */

import WebSocket from "ws";

import {
  type ConnectionState,
  type DisconnectInfo,
  GatewayClient,
  type GatewayClientOptions,
  type GatewayEvent,
  type TransportName,
} from "../../src/index.js";
import { waitFor } from "../harness.js";

export interface Recorder {
  events: GatewayEvent[];
  states: ConnectionState[];
  disconnects: (DisconnectInfo & { at: number })[];
  /** When each state was entered. */
  stateTimes: { state: ConnectionState; at: number }[];
  nodes: string[];
  /** The transport of each connection, in order. */
  transports: TransportName[];
}

export function nodeClient(options: Omit<GatewayClientOptions, "WebSocket">): GatewayClient {
  return new GatewayClient({ ...options, WebSocket });
}

export function record(client: GatewayClient): Recorder {
  const recorder: Recorder = { events: [], states: [], disconnects: [], stateTimes: [], nodes: [], transports: [] };
  client.on("event", (event) => recorder.events.push(event));
  client.on("state", (state) => {
    recorder.states.push(state);
    recorder.stateTimes.push({ state, at: Date.now() });
  });
  client.on("disconnected", (info) => recorder.disconnects.push({ ...info, at: Date.now() }));
  client.on("connected", (info) => {
    recorder.nodes.push(info.nodeId);
    recorder.transports.push(info.transport);
  });
  return recorder;
}

export async function connected(client: GatewayClient, timeoutMs = 20_000): Promise<void> {
  await waitFor("the client to be connected", () => client.state === "connected", timeoutMs);
}

/** The `data.i` of each event of `type`, in the order received. */
export function sequence(events: GatewayEvent[], type: string, channel?: string): number[] {
  return events
    .filter((e) => e.type === type && (channel === undefined || e.channel === channel))
    .map((e) => (e.data as { i: number }).i);
}

export function range(from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, k) => from + k);
}
