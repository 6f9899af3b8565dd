/**
 * The shared test vectors (`publisher/vectors/publish.json`): every case through the pure
 * command builder and the pipeline grouping, in the case's mode, gives exactly the vector's
 * commands (on a cluster its pipelines), or its error; the shipped script is the Rust crate's,
 * byte for byte, under the vectors' SHA1.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";

import { InvalidPublish } from "../../src/publisher/errors.js";
import { SCRIPT, SCRIPT_SHA1 } from "../../src/publisher/script.js";
import { historyNamespaces, readNamespaces } from "../../src/publisher/namespaces.js";
import { slotOf } from "../../src/publisher/pipelines.js";
import { CASES, REPO_SCRIPT, VECTORS, commandsOf, expectedPipelines, itemsOf, pipelinesOf } from "./vectors.js";

/** The envelope a command sends: PUBLISH's and SPUBLISH's third argument, the script's ARGV[2]. */
function envelopeOf(command: readonly string[]): string {
  if (command[0] !== "EVALSHA") return command[2] ?? "";
  return command[Number(command[2]) + 4] ?? "";
}

/** The pub/sub topic a command publishes to: PUBLISH's and SPUBLISH's second argument, the script's ARGV[1]. */
function topicOf(command: readonly string[]): string {
  if (command[0] !== "EVALSHA") return command[1] ?? "";
  return command[Number(command[2]) + 3] ?? "";
}

const CLUSTER = CASES.filter((c) => c.mode === "cluster");

describe("publisher vectors", () => {
  for (const c of CASES) {
    it(c.name, () => {
      if (c.error !== undefined) {
        assert.throws(
          () => commandsOf(c),
          (error: unknown) => {
            assert.ok(error instanceof InvalidPublish, String(error));
            assert.equal(error.code, c.error);
            return true;
          },
        );
      } else {
        assert.deepEqual(pipelinesOf(c), expectedPipelines(c));
      }
    });
  }

  it("every case has one outcome and a unique name", () => {
    const names = CASES.map((c) => c.name);
    assert.equal(new Set(names).size, names.length);
    for (const c of CASES) {
      const outcomes = [c.commands, c.pipelines, c.error].filter((outcome) => outcome !== undefined);
      assert.equal(outcomes.length, 1, `${c.name}: commands, pipelines or error`);
      assert.notEqual(c.publish === undefined, c.batch === undefined, c.name);
      assert.ok(c.mode === undefined || c.mode === "cluster", `${c.name}: mode ${String(c.mode)}`);
      assert.equal(c.pipelines !== undefined, c.mode === "cluster" && c.error === undefined, `${c.name}: pipelines on a cluster only`);
    }
  });

  it("cover every kind of publish and error", () => {
    const published = CASES.flatMap(itemsOf) as Record<string, unknown>[];
    for (const field of ["channel", "channels", "user", "client_type", "broadcast", "exclude_client", "idempotency_key"]) {
      assert.ok(
        published.some((item) => field in item),
        field,
      );
    }
    const commands = new Set(CASES.flatMap((c) => c.commands ?? []).map((command) => command[0]));
    assert.deepEqual([...commands].sort(), ["EVALSHA", "PUBLISH"]);
    const cluster = new Set(CLUSTER.flatMap((c) => (c.pipelines ?? []).flat()).map((command) => command[0]));
    assert.deepEqual([...cluster].sort(), ["EVALSHA", "PUBLISH", "SPUBLISH"]);
    assert.ok(
      CLUSTER.some((c) => (c.pipelines ?? []).length > 1),
      "a cluster batch over several slots",
    );
    const errors = new Set(CASES.flatMap((c) => (c.error === undefined ? [] : [c.error])));
    assert.deepEqual(
      [...errors].sort(),
      ["invalid_channel", "invalid_client_type", "invalid_event", "invalid_target", "invalid_user", "reserved_event"],
    );
    assert.ok(CASES.some((c) => c.prefix !== undefined));
  });

  it("the shipped script is the Rust crate's, byte for byte, named by the vectors' SHA1", () => {
    const repoScript = readFileSync(REPO_SCRIPT);
    assert.ok(Buffer.from(SCRIPT, "utf8").equals(repoScript), "run `npm run sync-script`");
    assert.equal(createHash("sha1").update(SCRIPT, "utf8").digest("hex"), SCRIPT_SHA1);
    assert.equal(SCRIPT_SHA1, VECTORS.script_sha1);
  });

  it("on a cluster every pipeline stays in one slot, with the script's keys in its topic's", () => {
    for (const c of CLUSTER) {
      const slots = (c.pipelines ?? []).map((pipeline) => {
        const inPipeline = new Set(pipeline.map((command) => slotOf(topicOf(command))));
        assert.equal(inPipeline.size, 1, c.name);
        for (const command of pipeline.filter((command) => command[0] === "EVALSHA")) {
          const keys = command.slice(3, 3 + Number(command[2]));
          assert.deepEqual(new Set(keys.map(slotOf)), inPipeline, `${c.name}: ${keys.join(" ")}`);
        }
        return [...inPipeline][0];
      });
      assert.equal(new Set(slots).size, slots.length, `${c.name}: one pipeline per slot`);
    }
  });

  it("reads the vectors' namespaces: settings apart, size 0 keeps no history", () => {
    assert.deepEqual([...historyNamespaces(VECTORS.namespaces)].sort(), ["default", "personal"]);
    assert.deepEqual(readNamespaces(VECTORS.namespaces), {
      history: new Map([
        ["default", "100 600000"],
        ["personal", "50 300000"],
      ]),
      windowMs: "300000",
    });
    assert.equal(readNamespaces([]).windowMs, "300000", "no gateway wrote a window");
    assert.equal(readNamespaces([":idempotency_window_ms", "2000"]).windowMs, "2000");
    assert.equal(readNamespaces({ ":idempotency_window_ms": "02000" }).windowMs, "2000", "as a number, as Rust reads it");
    assert.equal(readNamespaces({ ":idempotency_window_ms": "soon" }).windowMs, "300000");
    assert.equal(readNamespaces({ ":idempotency_window_ms": "18446744073709551616" }).windowMs, "300000", "over u64");
    assert.deepEqual([...historyNamespaces(["jobs", "10 0", "room", "0 0", ":idempotency_window_ms", "1"])], ["jobs"]);
    assert.deepEqual([...historyNamespaces(new Map([[Buffer.from("jobs"), Buffer.from("10 0")]]))], ["jobs"]);
  });

  it("JSON.stringify writes the vectors' data as serde_json does", () => {
    // Each envelope's data, re-encoded from the parsed value, is the same text.
    for (const c of CASES) {
      for (const command of c.commands ?? c.pipelines?.flat() ?? []) {
        const envelope = envelopeOf(command);
        const data = (JSON.parse(envelope) as { data: unknown }).data;
        assert.ok(envelope.includes(`"data":${JSON.stringify(data)},"timestamp"`), `${c.name}: ${envelope}`);
      }
    }
  });
});
