/** The shared test vectors, `publisher/vectors/publish.json`, as the tests read them. */

import { readFileSync } from "node:fs";
import { join } from "node:path";

import { build, fromFields, historyNamespaces } from "../../src/publisher/wire.js";
import { REPO_DIR } from "../harness.js";

export interface Case {
  name: string;
  prefix?: string;
  publish?: unknown;
  batch?: unknown[];
  commands?: string[][];
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

/** The commands the pure builder makes of a case, at the vectors' timestamp and namespaces. */
export function commandsOf(c: Case): string[][] {
  const publishes = itemsOf(c).map((item) => fromFields(item));
  const batch = build(publishes, {
    prefix: c.prefix ?? VECTORS.prefix,
    timestamp: VECTORS.timestamp,
    history: historyNamespaces(VECTORS.namespaces),
  });
  return batch.flat().map((message) => [...message.command]);
}
