/**
 * The gateway's client for browsers and Node.
 *
 *   client.ts        GatewayClient, the public class: options, events, methods
 *   connection.ts    the connection state machine and reconnect backoff, behind GatewayClient
 *   transports.ts    the transport in use: falling back, the probe back to WebSocket
 *   requests.ts      requests: replies by id, timeouts, the offline queue
 *   channels.ts      subscriptions and every channel's position
 *   liveness.ts      heartbeats; the browser's online, offline and visibility events
 *   refresh.ts       refreshing the token before it expires
 *   subscription.ts  Subscription (one local subscriber) and the channel they share
 *   transport.ts     the Transport interface and the WebSocket transport
 *   codec.ts         the WebSocket's encoding: JSON here, MessagePack in msgpack.ts (its own entry)
 *   sse.ts, poll.ts  the fallback transports over HTTP (http.ts: what they share)
 *   fallback.ts      when the client moves to the next transport
 *   cursor.ts        the HTTP transports' cursor: positions of every channel
 *   policy.ts        what each close code (and HTTP refusal) makes the client do
 *   backoff.ts       reconnect delays (full jitter, 0.5 s to 20 s)
 *   positions.ts     last offset and epoch per channel; duplicates dropped
 *   queue.ts         the offline queue, bounded in count and bytes
 *   token.ts         token sources; when to refresh
 *   frames.ts        the protocol's frames
 *   errors.ts        GatewayError
 *   emitter.ts       a small typed event emitter
 */

export {
  GatewayClient,
  type ClientEvents,
  type ConnectionInfo,
  type ConnectionState,
  type DisconnectInfo,
  type GatewayClientOptions,
  type HistoryOptions,
  type HistoryResult,
  type PublishResult,
} from "./client.js";
export { Subscription, type SubscribedInfo, type SubscriptionHandlers, type SubscriptionState } from "./subscription.js";
export { GatewayError, type ClientErrorCode } from "./errors.js";
export type { GatewayEvent, Position, PresenceClient } from "./frames.js";
export type { TokenSource } from "./token.js";
export type { Codec } from "./codec.js";
export type { BackoffOptions } from "./backoff.js";
export type { QueueOptions } from "./queue.js";
export {
  WebSocketTransport,
  type OneWayRequest,
  type OpenParams,
  type Transport,
  type TransportFactory,
  type TransportHandlers,
  type TransportName,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./transport.js";
export { closeAction, CLOSE_CODES, type CloseAction } from "./policy.js";
export { Emitter, type Listener } from "./emitter.js";
