// The core's size as a browser app ships it: dist/index.js bundled and minified by esbuild,
// then gzipped. Fails above the 10 KB budget, and if either bundle takes in the Node publisher or
// its Redis client. Also prints the React hooks (react excluded).
import { gzipSync } from "node:zlib";

import { build } from "esbuild";

const BUDGET = 10 * 1024;

async function size(entry, external = []) {
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
  const nodeOnly = Object.keys(result.metafile.inputs).filter((input) => /(^|\/)(publisher|node_modules\/(redis|@redis)\/)/.test(input));
  if (nodeOnly.length > 0) {
    console.error(`${entry} bundles what only the Node publisher needs: ${nodeOnly.join(", ")}`);
    process.exit(1);
  }
  const code = result.outputFiles[0].contents;
  return { minified: code.length, gzipped: gzipSync(code, { level: 9 }).length };
}

const kb = (bytes) => `${(bytes / 1024).toFixed(1)} KB`;
const core = await size("dist/index.js");
const react = await size("dist/react.js", ["react"]);
console.log(`core  dist/index.js: ${kb(core.minified)} minified, ${kb(core.gzipped)} minified+gzipped (budget ${kb(BUDGET)})`);
console.log(`react dist/react.js: ${kb(react.minified)} minified, ${kb(react.gzipped)} minified+gzipped (core included, react excluded)`);
if (core.gzipped > BUDGET) {
  console.error(`the core is over its budget by ${core.gzipped - BUDGET} bytes`);
  process.exit(1);
}
