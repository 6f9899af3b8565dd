/** A small typed event emitter: `on` returns the function that removes the listener. */

export type Listener<Args extends unknown[]> = (...args: Args) => void;

export class Emitter<Events extends Record<keyof Events, unknown[]>> {
  private readonly listeners: { [E in keyof Events]?: Set<Listener<Events[E]>> } = {};

  on<E extends keyof Events>(event: E, listener: Listener<Events[E]>): () => void {
    let set = this.listeners[event];
    if (!set) {
      set = new Set();
      this.listeners[event] = set;
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  off<E extends keyof Events>(event: E, listener: Listener<Events[E]>): void {
    this.listeners[event]?.delete(listener);
  }

  /** Calls every listener; one that throws is reported and does not stop the others. */
  protected emit<E extends keyof Events>(event: E, ...args: Events[E]): void {
    const set = this.listeners[event];
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }

}

/** An app's listener threw: rethrow it outside the client's own call stack. */
export function reportListenerError(error: unknown): void {
  setTimeout(() => {
    throw error;
  }, 0);
}
