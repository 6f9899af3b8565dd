import { StrictMode } from "react";
import { createRoot } from "react-dom/client";

import { GatewayProvider } from "@gateway/client/react";

import { Gallery } from "./Gallery";
import "./styles.css";

// The page's token: `?token=` here, for the demo and the tests. A real app would fetch it from its
// own backend, e.g. `token: () => fetch("/api/gateway-token").then((r) => r.text())`, which the
// client calls again before each connect and before the token expires.
const params = new URLSearchParams(window.location.search);
const token = params.get("token") ?? "";
const photos = (params.get("photos") ?? "p1,p2,p3,p4,p5,p6,p7,p8,p9,p10,p11,p12").split(",").filter(Boolean);

const root = document.getElementById("root");
if (!root) throw new Error("no #root element");

createRoot(root).render(
  <StrictMode>
    <GatewayProvider options={{ url: "/ws", token }}>
      <Gallery photos={photos} />
    </GatewayProvider>
  </StrictMode>,
);
