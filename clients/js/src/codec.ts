/**
 * How frames are written on the WebSocket (docs/protocol.md "Encodings"). JSON text frames are
 * the default and built in; MessagePack is `msgpack.ts`, its own entry point
 * (`@gateway/client/msgpack`), so that the core needs no MessagePack library. SSE and long-poll
 * are always JSON, whatever the codec.
 */

import type { ClientFrame } from "./frames.js";

/** An encoding of the WebSocket's frames: the value of the client's `format` option. */
export interface Codec {
  /** The format's name, as in `?format=`: `"json"`, `"msgpack"`. */
  readonly format: string;
  /** The WebSocket subprotocol that asks the server for it; undefined for JSON, which is the default and asks for nothing. */
  readonly protocol: string | undefined;
  /** Whether its frames are binary messages (the socket's `binaryType` is then `"arraybuffer"`). */
  readonly binary: boolean;
  encode(frame: ClientFrame): string | Uint8Array;
  /** One binary message, decoded; throws on garbage. (A text message is JSON in every format.) */
  decode(bytes: Uint8Array): unknown;
}

/** JSON text frames: the default. */
export const json: Codec = {
  format: "json",
  protocol: undefined,
  binary: false,
  encode: (frame) => JSON.stringify(frame),
  decode: (bytes): unknown => JSON.parse(new TextDecoder().decode(bytes)),
};

/** The codec of the `format` option; `"msgpack"` only from `@gateway/client/msgpack`. */
export function resolveCodec(format: "json" | Codec | undefined): Codec {
  if (format === undefined || format === "json") return json;
  // A name the core does not have, from plain JavaScript or a cast.
  const value: unknown = format;
  if (typeof value === "string") {
    throw new Error(`format "${value}" is not in the core: use the GatewayClient of @gateway/client/msgpack`);
  }
  return format;
}
