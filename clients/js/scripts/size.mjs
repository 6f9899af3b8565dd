// The core's size as a browser app ships it: dist/index.js bundled and minified by esbuild,
// then gzipped. Fails above the 10 KB budget, if any browser bundle takes in the Node publisher
// or its Redis client, and if the core or the hooks take in MessagePack (only dist/msgpack.js
// may). Also prints the React hooks (react excluded) and the MessagePack entry.
import { gzipSync } from "node:zlib";

import { build } from "esbuild";

const BUDGET = 10 * 1024;
const NODE_ONLY = /(^|\/)(publisher|node_modules\/(redis|@redis)\/)/;
const MSGPACK = /(^|\/)(msgpack\.js$|node_modules\/@msgpack\/)/;

async function size(entry, { external = [], refuse = [NODE_ONLY, MSGPACK] } = {}) {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    external,
    write: false,
    metafile: true,
  });
  const inputs = Object.keys(result.metafile.inputs);
  for (const pattern of refuse) {
    const unwanted = inputs.filter((input) => pattern.test(input));
    if (unwanted.length > 0) {
      const what = pattern === NODE_ONLY ? "what only the Node publisher needs" : "MessagePack, which only dist/msgpack.js may";
      console.error(`${entry} bundles ${what}: ${unwanted.join(", ")}`);
      process.exit(1);
    }
  }
  const code = result.outputFiles[0].contents;
  return { minified: code.length, gzipped: gzipSync(code, { level: 9 }).length };
}

const kb = (bytes) => `${(bytes / 1024).toFixed(1)} KB`;
const core = await size("dist/index.js");
const react = await size("dist/react.js", { external: ["react"] });
const msgpack = await size("dist/msgpack.js", { refuse: [NODE_ONLY] });
console.log(`core    dist/index.js: ${kb(core.minified)} minified, ${kb(core.gzipped)} minified+gzipped (budget ${kb(BUDGET)})`);
console.log(`react   dist/react.js: ${kb(react.minified)} minified, ${kb(react.gzipped)} minified+gzipped (core included, react excluded)`);
console.log(`msgpack dist/msgpack.js: ${kb(msgpack.minified)} minified, ${kb(msgpack.gzipped)} minified+gzipped (core and @msgpack/msgpack included)`);
if (core.gzipped > BUDGET) {
  console.error(`the core is over its budget by ${core.gzipped - BUDGET} bytes`);
  process.exit(1);
}
