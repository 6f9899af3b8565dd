/**
 * React hooks over one {@link GatewayClient}:
 *
 *   <GatewayProvider options={{ url: "/ws", token: fetchToken }}>…</GatewayProvider>
 *   const client = useGateway();
 *   const state = useConnectionState();           // "connecting" | "connected" | …
 *   useChannel("jobs", (event) => …, { onReload }); // subscribed while mounted
 *   useEvent("photo:updated", (event) => …);        // every event of that type, any channel
 *
 * Handlers are held in refs, so re-rendering with a new function never resubscribes; every
 * hook cleans up on unmount, which also makes StrictMode's mount–unmount–mount harmless.
 * Components that use one channel share its one server subscription.
 */

import {
  createContext,
  createElement,
  type ReactElement,
  type ReactNode,
  useCallback,
  useContext,
  useEffect,
  useLayoutEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";

import { type ConnectionState, GatewayClient, type GatewayClientOptions } from "./client.js";
import type { GatewayEvent, Position } from "./frames.js";
import type { SubscribedInfo } from "./subscription.js";
import type { GatewayError } from "./errors.js";

const GatewayContext = createContext<GatewayClient | null>(null);

export type GatewayProviderProps = {
  children?: ReactNode;
} & (
  | {
      /** A client the app made: connected on mount, left open on unmount (the app closes it). */
      client: GatewayClient;
      options?: undefined;
    }
  | {
      /** Options of a client the provider makes, connects on mount and closes on unmount. */
      options: GatewayClientOptions;
      client?: undefined;
    }
);

/** Holds one client for the hooks below it. With `options`, it owns the client. */
export function GatewayProvider(props: GatewayProviderProps): ReactElement {
  // Made once (the first render's options win); constructing a client has no side effects, so
  // StrictMode's second call of this initializer leaves nothing behind.
  const [owned] = useState(() => (props.client ? undefined : new GatewayClient(props.options)));
  const client = props.client ?? owned;
  if (!client) throw new Error("GatewayProvider needs a client or options");
  useEffect(() => {
    client.connect();
    if (client !== owned) return undefined;
    return () => client.close();
  }, [client, owned]);
  return createElement(GatewayContext.Provider, { value: client }, props.children);
}

/** The provider's client. */
export function useGateway(): GatewayClient {
  const client = useContext(GatewayContext);
  if (!client) throw new Error("useGateway must be used inside a <GatewayProvider>");
  return client;
}

/** The connection's state, re-rendering on every change. */
export function useConnectionState(): ConnectionState {
  const client = useGateway();
  const subscribe = useCallback((onChange: () => void) => client.on("state", onChange), [client]);
  const snapshot = () => client.state;
  return useSyncExternalStore(subscribe, snapshot, snapshot);
}

const useIsomorphicLayoutEffect = typeof document === "undefined" ? useEffect : useLayoutEffect;

/** A ref that always holds the latest value given, updated before effects run. */
function useLatest<T>(value: T): { readonly current: T } {
  const ref = useRef(value);
  useIsomorphicLayoutEffect(() => {
    ref.current = value;
  });
  return ref;
}

export interface UseChannelOptions {
  onReload?(position: Position): void;
  onSubscribed?(info: SubscribedInfo): void;
  onError?(error: GatewayError): void;
}

/**
 * Subscribes to `channel` while the component is mounted (none while `channel` is null).
 * `onEvent` gets each new event once, in order.
 */
export function useChannel<T = unknown>(
  channel: string | null | undefined,
  onEvent: (event: GatewayEvent<T>) => void,
  options: UseChannelOptions = {},
): void {
  const client = useGateway();
  const handlers = useLatest({ onEvent, ...options });
  useEffect(() => {
    if (!channel) return undefined;
    const subscription = client.subscribe<T>(channel, {
      onEvent: (event) => handlers.current.onEvent(event),
      onReload: (position) => handlers.current.onReload?.(position),
      onSubscribed: (info) => handlers.current.onSubscribed?.(info),
      onError: (error) => handlers.current.onError?.(error),
    });
    return () => subscription.unsubscribe();
  }, [client, channel, handlers]);
}

/** Calls `onEvent` for every event named `type` (`"*"`: every event), on any channel or none. */
export function useEvent<T = unknown>(type: string, onEvent: (event: GatewayEvent<T>) => void): void {
  const client = useGateway();
  const handler = useLatest(onEvent);
  useEffect(
    () =>
      client.on("event", (event) => {
        if (type === "*" || event.type === type) handler.current(event as GatewayEvent<T>);
      }),
    [client, type, handler],
  );
}
