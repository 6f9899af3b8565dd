/**
 * A TCP proxy that reads what passes through it without changing a byte: the HTTP head of each
 * WebSocket upgrade and its answer, then the header of every frame either side sends — enough to
 * see whether permessage-deflate was agreed and which messages went compressed (RSV1). Plain HTTP
 * connections (a page and its scripts) pass through unread.
 *
 *   const tap = await WireTap.start(cluster.nginx.port);
 *   tap.url                                  // ws://127.0.0.1:<tap>/ws
 *   tap.upgrades[0].header("sec-websocket-extensions")
 *   tap.upgrades[0].frames.filter((f) => f.from === "server" && f.compressed)
 */

import { connect, createServer, type Server, type Socket } from "node:net";

export interface TappedFrame {
  from: "client" | "server";
  /** 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong. */
  opcode: number;
  fin: boolean;
  /** RSV1: on the first frame of a message, the message is compressed. */
  compressed: boolean;
  /** The payload's length on the wire (compressed, where it is). */
  length: number;
}

const CLOSE = 8;

/** One WebSocket connection through the tap. */
export class TappedUpgrade {
  /** The server's answer to the upgrade; empty until it came. */
  response = "";
  readonly frames: TappedFrame[] = [];

  constructor(readonly request: string) {}

  /** The value of `name` in the server's answer (case-insensitive); undefined when absent. */
  header(name: string): string | undefined {
    return headerValue(this.response, name);
  }

  /** The value of `name` in the client's request. */
  requestHeader(name: string): string | undefined {
    return headerValue(this.request, name);
  }

  /** Data frames (text, binary, continuation) from `from`. */
  data(from: TappedFrame["from"]): TappedFrame[] {
    return this.frames.filter((f) => f.from === from && f.opcode < CLOSE);
  }
}

function headerValue(head: string, name: string): string | undefined {
  const lower = name.toLowerCase();
  for (const line of head.split("\r\n").slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0 && line.slice(0, colon).trim().toLowerCase() === lower) return line.slice(colon + 1).trim();
  }
  return undefined;
}

/** Reads frame headers out of one direction's bytes as they come, however they are split. */
class FrameReader {
  private buffered: Buffer = Buffer.alloc(0);

  constructor(
    private readonly from: TappedFrame["from"],
    private readonly frames: TappedFrame[],
  ) {}

  push(chunk: Buffer): void {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    for (;;) {
      const buffer = this.buffered;
      if (buffer.length < 2) return;
      const first = buffer[0] ?? 0;
      const second = buffer[1] ?? 0;
      let length = second & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (buffer.length < 4) return;
        length = buffer.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (buffer.length < 10) return;
        length = Number(buffer.readBigUInt64BE(2));
        offset = 10;
      }
      if (second & 0x80) offset += 4; // the mask key
      if (buffer.length < offset + length) return;
      this.frames.push({ from: this.from, opcode: first & 0x0f, fin: (first & 0x80) !== 0, compressed: (first & 0x40) !== 0, length });
      this.buffered = buffer.subarray(offset + length);
    }
  }
}

const HEAD_END = Buffer.from("\r\n\r\n");

/**
 * Collects an HTTP head from the start of a stream: `onHead` gets it and the bytes after it,
 * once; later chunks go to `onRest`.
 */
function headThenRest(onHead: (head: string, rest: Buffer) => void, onRest: (chunk: Buffer) => void): (chunk: Buffer) => void {
  let pending: Buffer | undefined = Buffer.alloc(0);
  return (chunk) => {
    if (pending === undefined) return onRest(chunk);
    pending = Buffer.concat([pending, chunk]);
    const end = pending.indexOf(HEAD_END);
    if (end < 0) return;
    const head = pending.subarray(0, end).toString("latin1");
    const rest = pending.subarray(end + HEAD_END.length);
    pending = undefined;
    onHead(head, rest);
  };
}

export class WireTap {
  /** Every WebSocket upgrade that went through, in the order the requests came. */
  readonly upgrades: TappedUpgrade[] = [];
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** A tap on a free loopback port in front of `127.0.0.1:targetPort`. */
  static async start(targetPort: number): Promise<WireTap> {
    // Half-open both ways, so that a close handshake's FINs pass as they were sent.
    const server = createServer({ allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const address = server.address();
    const tap = new WireTap(server, typeof address === "object" && address ? address.port : 0);
    server.on("connection", (client) => tap.relay(client, targetPort));
    return tap;
  }

  /** `ws://127.0.0.1:<tap>/ws` */
  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** `http://127.0.0.1:<tap>` */
  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private relay(client: Socket, targetPort: number): void {
    const upstream = connect({ port: targetPort, host: "127.0.0.1", allowHalfOpen: true });
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
    }
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());

    // Each direction: an HTTP head, then frames, where the head is a WebSocket upgrade and its 101.
    let toServerFrames: ((chunk: Buffer) => void) | undefined;
    let toClientFrames: ((chunk: Buffer) => void) | undefined;
    let fromServer: ((chunk: Buffer) => void) | undefined;
    const fromClient = headThenRest(
      (request, rest) => {
        if (!/^GET /.test(request) || !/^upgrade:\s*websocket\s*$/im.test(request)) return; // plain HTTP: not read further
        const upgrade = new TappedUpgrade(request);
        this.upgrades.push(upgrade);
        const clientFrames = new FrameReader("client", upgrade.frames);
        const serverFrames = new FrameReader("server", upgrade.frames);
        toServerFrames = (chunk) => clientFrames.push(chunk);
        toServerFrames(rest);
        fromServer = headThenRest(
          (response, after) => {
            upgrade.response = response;
            if (!/^HTTP\/1\.1 101/.test(response)) return;
            toClientFrames = (chunk) => serverFrames.push(chunk);
            toClientFrames(after);
          },
          (chunk) => toClientFrames?.(chunk),
        );
      },
      (chunk) => toServerFrames?.(chunk),
    );
    client.on("data", (chunk: Buffer) => fromClient(chunk));
    upstream.on("data", (chunk: Buffer) => fromServer?.(chunk));
    client.pipe(upstream);
    upstream.pipe(client);
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
