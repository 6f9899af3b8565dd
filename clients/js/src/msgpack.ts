/**
 * MessagePack on the WebSocket: `@gateway/client/msgpack` (dist/msgpack.js), an entry of its own
 * so that the core (dist/index.js) needs no MessagePack library. It exports everything the core
 * does, with a `GatewayClient` that also takes `format: "msgpack"`, and the `msgpack` codec for
 * the core's `format` option (e.g. in `GatewayProvider`'s options):
 *
 *   import { GatewayClient } from "@gateway/client/msgpack";
 *   const client = new GatewayClient({ url, token, format: "msgpack" });
 *
 * The WebSocket then asks for the subprotocol `gateway.msgpack` and every frame is a binary
 * MessagePack map with the fields of its JSON form (docs/protocol.md "Encodings"): events,
 * replies and every API are the same as with JSON. SSE and long-poll stay JSON.
 */

import { Decoder, Encoder } from "@msgpack/msgpack";

import { GatewayClient as JsonGatewayClient, type GatewayClientOptions as CoreOptions } from "./client.js";
import type { Codec } from "./codec.js";

export * from "./index.js";

const encoder = new Encoder();
const decoder = new Decoder();

/** MessagePack frames, the gateway's `gateway.msgpack`. */
export const msgpack: Codec = {
  format: "msgpack",
  protocol: "gateway.msgpack",
  binary: true,
  // Written from the frame's JSON form, so that a frame means what it would as JSON: a Date goes
  // as its ISO string, undefined fields are left out, NaN is null, and what JSON cannot hold (a
  // BigInt, a cycle) throws as it would. Client frames are small; events come the other way.
  encode: (frame) => encoder.encode(JSON.parse(JSON.stringify(frame))),
  decode: (bytes) => decoder.decode(bytes),
};

export interface GatewayClientOptions extends Omit<CoreOptions, "format"> {
  /** The WebSocket's encoding: `"json"` (default), `"msgpack"`, or a codec. SSE and poll are always JSON. */
  format?: "json" | "msgpack" | Codec;
}

/** The core's `GatewayClient`, taking `format: "msgpack"` too. */
export class GatewayClient extends JsonGatewayClient {
  constructor(options: GatewayClientOptions) {
    super({ ...options, format: options.format === "msgpack" ? msgpack : options.format });
  }
}
