import { fileURLToPath } from "node:url";

import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));

// The example uses the package's sources, so one `npm ci` in clients/js serves both.
// `--mode development` builds with React's development build (StrictMode double-mounts there),
// into dist-dev/, for the browser test of the hooks under StrictMode.
export default defineConfig(({ mode }) => ({
  root: here("."),
  plugins: [react()],
  resolve: {
    alias: [
      { find: /^@gateway\/client\/react$/, replacement: here("../../src/react.ts") },
      { find: /^@gateway\/client\/msgpack$/, replacement: here("../../src/msgpack.ts") },
      { find: /^@gateway\/client$/, replacement: here("../../src/index.ts") },
    ],
  },
  build: { outDir: here(mode === "development" ? "dist-dev" : "dist"), emptyOutDir: true, minify: mode !== "development" },
  server: {
    proxy: {
      "/ws": { target: "ws://127.0.0.1:8080", ws: true },
      "/sse": { target: "http://127.0.0.1:8080" },
      "/poll": { target: "http://127.0.0.1:8080" },
    },
  },
}));
