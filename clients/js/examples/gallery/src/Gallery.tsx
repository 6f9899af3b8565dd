import { type CSSProperties, useEffect, useState } from "react";

import type { GatewayEvent } from "@gateway/client";
import { useChannel, useConnectionState, useEvent, useGateway } from "@gateway/client/react";

/** Published on the shared `gallery` channel when someone likes a photo. */
interface PhotoLiked {
  photo_id: string;
}

/** What a worker publishes to the photo's owner when processing is done. */
interface PhotoUpdated {
  photo_id: string;
  status: "pending" | "completed";
}

interface Photo {
  id: string;
  status: PhotoUpdated["status"];
  /** How many `photo:updated` events this photo got: exactly one, however often the socket drops. */
  updates: number;
}

export function Gallery({ photos }: { photos: string[] }) {
  const [items, setItems] = useState<Photo[]>(() => photos.map((id) => ({ id, status: "pending", updates: 0 })));
  const [reloads, setReloads] = useState(0);
  const client = useGateway();

  useEvent<PhotoUpdated>("photo:updated", (event: GatewayEvent<PhotoUpdated>) => {
    const { photo_id, status } = event.data;
    setItems((current) => current.map((p) => (p.id === photo_id ? { ...p, status, updates: p.updates + 1 } : p)));
  });

  // The personal channel could not be recovered: a real app refetches its photos here.
  useEffect(() => client.on("reload", () => setReloads((n) => n + 1)), [client]);

  const done = items.filter((p) => p.status === "completed").length;
  return (
    <main>
      <header>
        <h1>Holiday 2026</h1>
        <p className="summary" data-testid="summary" data-completed={done} data-total={items.length}>
          {done} of {items.length} processed
        </p>
        <Connection />
      </header>
      {reloads > 0 && <p className="reload">The gallery was reloaded {reloads}×.</p>}
      <ul className="grid">
        {items.map((photo, index) => (
          <PhotoCard key={photo.id} photo={photo} hue={(index * 47) % 360} />
        ))}
      </ul>
    </main>
  );
}

/**
 * One photo. Every card listens to the `gallery` channel: twelve components, one server
 * subscription, shared by the client.
 */
function PhotoCard({ photo, hue }: { photo: Photo; hue: number }) {
  const [likes, setLikes] = useState(0);
  useChannel<PhotoLiked>("gallery", (event) => {
    if (event.type === "photo:liked" && event.data.photo_id === photo.id) setLikes((n) => n + 1);
  });
  return (
    <li className="card" data-testid="photo" data-photo={photo.id} data-status={photo.status} data-updates={photo.updates} data-likes={likes}>
      <div className="picture" style={{ "--hue": String(hue) } as CSSProperties}>
        <svg viewBox="0 0 64 40" aria-hidden="true">
          <circle cx="48" cy="11" r="5" />
          <path d="M0 40 L18 16 L30 30 L40 20 L64 40 Z" />
        </svg>
      </div>
      <div className="caption">
        <span>{photo.id}.jpg</span>
        {likes > 0 && <span className="likes">♥ {likes}</span>}
        <span className={`badge ${photo.status}`}>{photo.status}</span>
      </div>
    </li>
  );
}

function Connection() {
  const state = useConnectionState();
  const client = useGateway();
  // A move between transports (back to WebSocket) changes no state: follow `connected` too.
  const [, setConnection] = useState(client.connection);
  useEffect(() => client.on("connected", setConnection), [client]);
  const node = client.connection?.nodeId;
  const transport = client.transport;
  return (
    <p className={`connection ${state}`} data-testid="connection" data-state={state} data-node={node ?? ""} data-transport={transport ?? ""}>
      <span className="dot" />
      {state}
      {node ? ` · ${node}` : ""}
      {transport && transport !== "websocket" ? ` · ${transport}` : ""}
    </p>
  );
}
