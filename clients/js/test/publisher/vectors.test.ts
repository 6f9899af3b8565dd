/**
 * The shared test vectors (`publisher/vectors/publish.json`): every case through the pure
 * command builder gives exactly the vector's commands, or its error; the shipped script is the
 * Rust crate's, byte for byte, under the vectors' SHA1.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";

import { InvalidPublish } from "../../src/publisher/errors.js";
import { SCRIPT, SCRIPT_SHA1 } from "../../src/publisher/script.js";
import { historyNamespaces } from "../../src/publisher/wire.js";
import { CASES, REPO_SCRIPT, VECTORS, commandsOf, itemsOf } from "./vectors.js";

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
        assert.deepEqual(commandsOf(c), c.commands);
      }
    });
  }

  it("every case has one outcome and a unique name", () => {
    const names = CASES.map((c) => c.name);
    assert.equal(new Set(names).size, names.length);
    for (const c of CASES) {
      assert.notEqual(c.commands === undefined, c.error === undefined, c.name);
      assert.notEqual(c.publish === undefined, c.batch === undefined, c.name);
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

  it("reads the vectors' namespaces: settings apart, size 0 keeps no history", () => {
    assert.deepEqual([...historyNamespaces(VECTORS.namespaces)].sort(), ["default", "personal"]);
    assert.deepEqual([...historyNamespaces(["jobs", "10 0", "room", "0 0", ":idempotency_window_ms", "1"])], ["jobs"]);
    assert.deepEqual([...historyNamespaces(new Map([[Buffer.from("jobs"), Buffer.from("10 0")]]))], ["jobs"]);
  });

  it("JSON.stringify writes the vectors' data as serde_json does", () => {
    // Each envelope's data, re-encoded from the parsed value, is the same text.
    for (const c of CASES) {
      for (const command of c.commands ?? []) {
        const envelope = command[0] === "PUBLISH" ? command[2] : command[8];
        const data = (JSON.parse(envelope ?? "") as { data: unknown }).data;
        assert.ok(envelope?.includes(`"data":${JSON.stringify(data)},"timestamp"`), `${c.name}: ${envelope}`);
      }
    }
  });
});
