/**
 * Every error the Node publisher throws, the twins of the Python publisher's:
 *
 *   PublisherError                    anything the publisher throws
 *   ├── InvalidPublish                refused before anything was sent to Redis   bad_request
 *   │   ├── InvalidName                                                           invalid_name
 *   │   │   ├── InvalidChannel        1 to 255 bytes of [A-Za-z0-9_:#.@=,-]       invalid_channel
 *   │   │   ├── InvalidEvent          1 to 128 bytes of [A-Za-z0-9_.:-]           invalid_event
 *   │   │   │   └── ReservedEvent     a frame type of the protocol (pong, …)      reserved_event
 *   │   │   ├── InvalidUser           1 to 255 bytes, no space/control, # or ,    invalid_user
 *   │   │   └── InvalidClientType     1 to 64 bytes of [A-Za-z0-9_.-]             invalid_client_type
 *   │   ├── InvalidTarget             not exactly one target; no channels         invalid_target
 *   │   ├── InvalidIdempotencyKey     not 1 to 128 bytes; on a client type        invalid_idempotency_key
 *   │   └── InvalidData               not serialisable as JSON                    invalid_data
 *   ├── InvalidConfiguration          the publisher's options do not fit together invalid_configuration
 *   └── PublishFailed                 Redis failed or refused; `cause` says why   publish_failed
 *
 * Each has the `code` that the shared test vectors (`publisher/vectors/publish.json`) name.
 */

/** Base of every error of the publisher. */
export class PublisherError extends Error {
  /** What kind of error this is, as the test vectors name it. */
  readonly code: string = "publisher_error";

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A publish was refused before anything was sent to Redis. */
export class InvalidPublish extends PublisherError {
  override readonly code: string = "bad_request";
}

/** A channel, event, user id or client type does not follow the gateway's rules. */
export class InvalidName extends InvalidPublish {
  override readonly code: string = "invalid_name";
  /** The refused value, as given. */
  readonly value: unknown;

  constructor(message: string, value: unknown) {
    super(message);
    this.value = value;
  }
}

/** A channel name is not 1 to 255 bytes of `[A-Za-z0-9_:#.@=,-]`. */
export class InvalidChannel extends InvalidName {
  override readonly code: string = "invalid_channel";
}

/** An event name is not 1 to 128 bytes of `[A-Za-z0-9_.:-]`. */
export class InvalidEvent extends InvalidName {
  override readonly code: string = "invalid_event";
}

/** An event name is one of the protocol's frame types (`pong`, `subscribed`, …). */
export class ReservedEvent extends InvalidEvent {
  override readonly code: string = "reserved_event";
}

/** A user id is empty, over 255 bytes, or holds a space, a control character, `#` or `,`. */
export class InvalidUser extends InvalidName {
  override readonly code: string = "invalid_user";
}

/** A client type is not 1 to 64 bytes of `[A-Za-z0-9_.-]`. */
export class InvalidClientType extends InvalidName {
  override readonly code: string = "invalid_client_type";
}

/** A publish names no target, more than one, or an empty list of channels. */
export class InvalidTarget extends InvalidPublish {
  override readonly code: string = "invalid_target";
}

/** An idempotency key is not 1 to 128 bytes, or is given for a client type or a broadcast. */
export class InvalidIdempotencyKey extends InvalidPublish {
  override readonly code: string = "invalid_idempotency_key";
}

/** The event's data cannot be written as JSON (NaN, a BigInt, a cycle, a lone surrogate, a Map…). */
export class InvalidData extends InvalidPublish {
  override readonly code: string = "invalid_data";
}

/**
 * The publisher's options do not fit together: an unknown mode, several URLs outside cluster and
 * sentinel mode, sentinel mode without its master's name, a master's name outside it, a URL that
 * is not `redis://` or `rediss://`. Thrown by `new Publisher(…)`, before anything is connected.
 */
export class InvalidConfiguration extends PublisherError {
  override readonly code: string = "invalid_configuration";
}

/**
 * Redis failed or refused the publish; `cause` is the Redis client's error. In a batch, the
 * messages before and after the failing one may have been published.
 */
export class PublishFailed extends PublisherError {
  override readonly code: string = "publish_failed";
}
