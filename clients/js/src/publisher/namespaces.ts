/**
 * The gateways' settings as a publisher reads them from the hash `<prefix>:namespaces`
 * (`{<prefix>}:namespaces` on a cluster): field = namespace, value = its history policy
 * `"<size> <ttl_ms>"`; the field `:idempotency_window_ms` holds the idempotency window. Fields
 * starting with `:` are settings, never namespaces.
 */

/** The field of the namespaces hash where the gateways write their idempotency window, in ms. */
export const IDEMPOTENCY_WINDOW_FIELD = ":idempotency_window_ms";

/** The idempotency window in ms where no gateway wrote one, as the script applies it. */
export const DEFAULT_IDEMPOTENCY_WINDOW_MS = "300000";

/** The policy passed to the script, on a cluster, for a namespace that keeps no history. */
export const NO_HISTORY = "0 0";

/** What the gateways wrote to the namespaces hash, as the publisher needs it. */
export interface Namespaces {
  /**
   * The namespaces that keep history (whose policy does not start with `"0 "`), each with its
   * policy `"<size> <ttl_ms>"` as the hash holds it.
   */
  readonly history: ReadonlyMap<string, string>;
  /** The idempotency window in ms, in decimal: the gateways', else {@link DEFAULT_IDEMPOTENCY_WINDOW_MS}. */
  readonly windowMs: string;
}

const U64_MAX = 2n ** 64n - 1n;

/** A reply's string: a string as it is, bytes as UTF-8, anything else through `String`. */
export function replyText(value: unknown): string {
  if (typeof value === "string") return value;
  if (value instanceof Uint8Array) return new TextDecoder().decode(value);
  return String(value);
}

/** The fields and values of an `HGETALL` reply: a flat array (RESP2), an object or a Map (RESP3). */
function entries(reply: unknown): [string, string][] {
  if (Array.isArray(reply)) {
    const pairs: [string, string][] = [];
    for (let i = 0; i + 1 < reply.length; i += 2) pairs.push([replyText(reply[i]), replyText(reply[i + 1])]);
    return pairs;
  }
  if (reply instanceof Map) return [...reply.entries()].map(([field, value]) => [replyText(field), replyText(value)]);
  if (typeof reply === "object" && reply !== null) return Object.entries(reply).map(([field, value]) => [field, replyText(value)]);
  throw new TypeError(`unexpected reply to HGETALL: ${String(reply)}`);
}

/** The window as the Rust crate reads it (a u64 of milliseconds), in decimal; else null. */
function windowOf(value: string): string | null {
  if (!/^\+?[0-9]+$/.test(value)) return null;
  const ms = BigInt(value);
  return ms <= U64_MAX ? ms.toString() : null;
}

/**
 * The settings in an `HGETALL` reply of the namespaces hash. Throws a TypeError for a reply
 * that is no hash's fields.
 */
export function readNamespaces(reply: unknown): Namespaces {
  const history = new Map<string, string>();
  let windowMs = DEFAULT_IDEMPOTENCY_WINDOW_MS;
  for (const [field, value] of entries(reply)) {
    if (field === IDEMPOTENCY_WINDOW_FIELD) {
      windowMs = windowOf(value) ?? DEFAULT_IDEMPOTENCY_WINDOW_MS;
    } else if (!field.startsWith(":") && !value.startsWith("0 ")) {
      history.set(field, value);
    }
  }
  return { history, windowMs };
}

/**
 * The namespaces that keep history, from an `HGETALL` reply of the namespaces hash: those whose
 * policy does not start with `"0 "`, the gateways' settings left out.
 */
export function historyNamespaces(reply: unknown): Set<string> {
  return new Set(readNamespaces(reply).history.keys());
}
