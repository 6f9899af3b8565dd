/** The shared test vectors, `publisher/vectors/publish.json`, as the tests read them. */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import { readNamespaces } from "../../src/publisher/namespaces.js";
import { pipelines } from "../../src/publisher/pipelines.js";
import type { RedisMode } from "../../src/publisher/topology.js";
import { build, fromFields } from "../../src/publisher/wire.js";
import { REPO_DIR } from "../harness.js";

export interface Case {
  name: string;
  prefix?: string;
  publish?: unknown;
  batch?: unknown[];
  commands?: string[][];
  /** On a Redis Cluster: one pipeline per hash slot, instead of `commands`. */
  pipelines?: string[][][];
  /** `cluster` for a Redis Cluster; standalone otherwise. */
  mode?: RedisMode;
  error?: string;
}

export interface Vectors {
  description: string;
  prefix: string;
  timestamp: string;
  script_sha1: string;
  namespaces: Record<string, string>;
  cases: Case[];
}

export const VECTORS_PATH = join(REPO_DIR, "publisher/vectors/publish.json");
export const REPO_SCRIPT = join(REPO_DIR, "publisher/src/publish.lua");
export const VECTORS = JSON.parse(readFileSync(VECTORS_PATH, "utf8")) as Vectors;
export const CASES = VECTORS.cases;

/** The publish fields of a case: its batch, or its one publish. */
export function itemsOf(c: Case): unknown[] {
  return c.batch ?? [c.publish];
}

/**
 * The pipelines the publisher's pure functions make of a case, at the vectors' timestamp and
 * namespaces, in the case's mode: each a list of commands.
 */
export function pipelinesOf(c: Case): string[][][] {
  const publishes = itemsOf(c).map((item) => fromFields(item));
  const mode = c.mode ?? "standalone";
  const messages = build(publishes, {
    prefix: c.prefix ?? VECTORS.prefix,
    timestamp: VECTORS.timestamp,
    namespaces: readNamespaces(VECTORS.namespaces),
    mode,
  }).flat();
  return pipelines(messages, mode).map((indexes) => indexes.map((index) => [...(messages[index]?.command ?? [])]));
}

/** The commands of a case in one list: its one pipeline, or its cluster pipelines one after the other. */
export function commandsOf(c: Case): string[][] {
  return pipelinesOf(c).flat();
}

/** What a case expects: its pipelines, or its commands as one pipeline (none for no commands). */
export function expectedPipelines(c: Case): string[][][] | undefined {
  if (c.pipelines !== undefined) return c.pipelines;
  if (c.commands === undefined) return undefined;
  return c.commands.length === 0 ? [] : [c.commands];
}

const TIMESTAMP = /"timestamp":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"/g;

/** The commands with their one timestamp (one per call) replaced by the vectors'. */
export function withFixedTimestamp(commands: string[][]): string[][] {
  const stamps = new Set(commands.flatMap((command) => command.flatMap((arg) => [...arg.matchAll(TIMESTAMP)].map((m) => m[1]))));
  assert.ok(stamps.size <= 1, `one timestamp per call: ${[...stamps].join(", ")}`);
  return commands.map((command) => command.map((arg) => arg.replace(TIMESTAMP, `"timestamp":"${VECTORS.timestamp}"`)));
}
