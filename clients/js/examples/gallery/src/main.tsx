import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import type { GatewayClientOptions } from "@gateway/client";
import { GatewayProvider } from "@gateway/client/react";

import { Gallery } from "./Gallery";
import "./styles.css";

// The page's token: `?token=` here, for the demo and the tests. A real app would fetch it from its
// own backend, e.g. `token: () => fetch("/api/gateway-token").then((r) => r.text())`, which the
// client calls again before each connect and before the token expires.
const params = new URLSearchParams(window.location.search);
const token = params.get("token") ?? "";
const photos = (params.get("photos") ?? "p1,p2,p3,p4,p5,p6,p7,p8,p9,p10,p11,p12").split(",").filter(Boolean);

// `?format=msgpack`: MessagePack frames on the WebSocket, with the codec of the package's extra
// entry, which is loaded only then.
async function clientOptions(): Promise<GatewayClientOptions> {
  if (params.get("format") !== "msgpack") return { url: "/ws", token };
  const { msgpack } = await import("@gateway/client/msgpack");
  return { url: "/ws", token, format: msgpack };
}

const root = document.getElementById("root");
if (!root) throw new Error("no #root element");

void clientOptions().then((options) =>
  createRoot(root).render(
    <StrictMode>
      <GatewayProvider options={options}>
        <Gallery photos={photos} />
      </GatewayProvider>
    </StrictMode>,
  ),
);
