/**
 * What the app sends while the client is offline: held in order and sent once it is connected,
 * bounded in count and in bytes. When a new entry does not fit, the oldest entries are dropped
 * and their senders told, so memory stays bounded however long the client stays offline.
 */

export interface QueueOptions {
  /** Most entries held (default 100); 0 disables the queue. */
  maxEntries?: number;
  /** Most bytes held, counted as the UTF-8 size of each entry's JSON (default 256 KiB). */
  maxBytes?: number;
}

export const DEFAULT_QUEUE_ENTRIES = 100;
export const DEFAULT_QUEUE_BYTES = 256 * 1024;

export interface Queued<T> {
  readonly item: T;
  readonly bytes: number;
}

export type Offer<T> =
  /** Held; `dropped` are the oldest entries that made room for it. */
  | { accepted: true; dropped: T[] }
  /** Refused: larger than the whole queue may hold (or the queue is disabled). */
  | { accepted: false; dropped: T[] };

const encoder = new TextEncoder();

/** The UTF-8 size of a string. */
export function byteLength(text: string): number {
  return encoder.encode(text).length;
}

export class OfflineQueue<T> {
  private readonly entries: Queued<T>[] = [];
  private heldBytes = 0;
  readonly maxEntries: number;
  readonly maxBytes: number;

  constructor(options: QueueOptions = {}) {
    this.maxEntries = Math.max(0, options.maxEntries ?? DEFAULT_QUEUE_ENTRIES);
    this.maxBytes = Math.max(0, options.maxBytes ?? DEFAULT_QUEUE_BYTES);
  }

  /** Adds `item` of `bytes` at the end, dropping the oldest entries to make room. */
  offer(item: T, bytes: number): Offer<T> {
    if (this.maxEntries === 0 || bytes > this.maxBytes) return { accepted: false, dropped: [] };
    const dropped: T[] = [];
    while (this.entries.length >= this.maxEntries || this.heldBytes + bytes > this.maxBytes) {
      const oldest = this.entries.shift();
      if (!oldest) break;
      this.heldBytes -= oldest.bytes;
      dropped.push(oldest.item);
    }
    this.entries.push({ item, bytes });
    this.heldBytes += bytes;
    return { accepted: true, dropped };
  }

  /** Takes every entry out, oldest first. */
  drain(): T[] {
    const items = this.entries.map((e) => e.item);
    this.entries.length = 0;
    this.heldBytes = 0;
    return items;
  }

  /** Removes the entries for which `match` is true, and returns them. */
  remove(match: (item: T) => boolean): T[] {
    const removed: T[] = [];
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const entry = this.entries[i];
      if (entry && match(entry.item)) {
        this.entries.splice(i, 1);
        this.heldBytes -= entry.bytes;
        removed.unshift(entry.item);
      }
    }
    return removed;
  }

  get size(): number {
    return this.entries.length;
  }

  get bytes(): number {
    return this.heldBytes;
  }
}
