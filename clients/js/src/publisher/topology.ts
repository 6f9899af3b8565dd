/**
 * Where the gateways' Redis is and how it is laid out, as the gateways' settings say it
 * (`GATEWAY_REDIS_MODE`, `GATEWAY_REDIS_URL`, `GATEWAY_REDIS_SENTINEL_MASTER`), checked with the
 * rules of the Rust crate's `publisher/src/topology.rs`:
 *
 *   standalone  one URL: one Redis server (or a proxy that looks like one)
 *   cluster     the comma-separated URLs of some of a Redis Cluster's nodes (its seeds)
 *   sentinel    the comma-separated URLs of the sentinels, and the name of the master they watch
 */

import { InvalidConfiguration } from "./errors.js";

/** How the gateways' Redis is laid out: the gateways' `GATEWAY_REDIS_MODE`. */
export type RedisMode = "standalone" | "cluster" | "sentinel";

/** Every {@link RedisMode}. */
export const REDIS_MODES: readonly RedisMode[] = ["standalone", "cluster", "sentinel"];

/** The gateways' Redis: its mode, its URLs and, in sentinel mode, the master's name. */
export interface Topology {
  readonly mode: RedisMode;
  /** One server's URL, the cluster's seed nodes, or the sentinels; at least one. */
  readonly urls: readonly string[];
  /** The name of the master the sentinels watch: in sentinel mode only. */
  readonly sentinelMaster: string | null;
}

function isMode(mode: unknown): mode is RedisMode {
  return REDIS_MODES.includes(mode as RedisMode);
}

/**
 * Reads the settings: `url` is one URL (standalone), or a comma-separated list of the cluster's
 * seed nodes or of the sentinels (blanks around commas are ignored); `sentinelMaster` names the
 * master the sentinels watch, and is required in sentinel mode only. Throws
 * {@link InvalidConfiguration} where they do not fit together.
 */
export function parseTopology(mode: unknown, url: unknown, sentinelMaster?: unknown): Topology {
  const chosen = mode ?? "standalone";
  if (!isMode(chosen)) {
    const shown = typeof chosen === "string" ? JSON.stringify(chosen) : `of type ${typeof chosen}`;
    throw new InvalidConfiguration(`unknown Redis mode ${shown}: standalone, cluster or sentinel`);
  }
  if (typeof url !== "string") throw new InvalidConfiguration("the Redis url must be a string");
  const urls = url
    .split(",")
    .map((part) => part.trim())
    .filter((part) => part !== "");
  if (urls.length === 0) throw new InvalidConfiguration("the Redis url is empty");
  const foreign = urls.find((part) => !(part.startsWith("redis://") || part.startsWith("rediss://")));
  if (foreign !== undefined) {
    throw new InvalidConfiguration(`every Redis url must start with redis:// or rediss://, got ${JSON.stringify(foreign)}`);
  }
  if (chosen === "standalone" && urls.length > 1) {
    throw new InvalidConfiguration('several Redis urls need mode "cluster" (seed nodes) or "sentinel" (sentinels)');
  }
  if (sentinelMaster !== undefined && sentinelMaster !== null && typeof sentinelMaster !== "string") {
    throw new InvalidConfiguration("sentinelMaster must be a string");
  }
  const master = typeof sentinelMaster === "string" && sentinelMaster.trim() !== "" ? sentinelMaster.trim() : null;
  if (chosen === "sentinel" && master === null) {
    throw new InvalidConfiguration('mode "sentinel" needs the name of the master the sentinels watch (sentinelMaster)');
  }
  if (chosen !== "sentinel" && master !== null) {
    throw new InvalidConfiguration(`sentinelMaster is for mode "sentinel" only, not ${JSON.stringify(chosen)}`);
  }
  return { mode: chosen, urls, sentinelMaster: master };
}
