/** Reads what Redis was sent, from `MONITOR`: the proof of what the publisher writes. */

import { Socket } from "node:net";

import { waitFor } from "../harness.js";

const LINE = /^\+?[0-9.]+ \[(\d+) ([^\]]+)\] (.*)$/s;
/** What a client sends when it connects, before any command of its user. */
const HANDSHAKE = new Set(["HELLO", "CLIENT", "AUTH", "SELECT", "INFO"]);
const ESCAPES: Record<string, number> = { n: 0x0a, r: 0x0d, t: 0x09, a: 0x07, b: 0x08 };

/** The arguments of one MONITOR line, each quoted as Redis' `sdscatrepr` writes it. */
export function parseArgs(text: Buffer): Buffer[] {
  const args: Buffer[] = [];
  let i = 0;
  while (i < text.length) {
    if (text[i] === 0x20) {
      i++;
      continue;
    }
    if (text[i] !== 0x22) throw new Error(`unquoted argument at ${i}: ${text.toString()}`);
    i++;
    const arg: number[] = [];
    while (text[i] !== 0x22) {
      if (i >= text.length) throw new Error(`unterminated argument: ${text.toString()}`);
      if (text[i] === 0x5c) {
        const escape = String.fromCharCode(text[i + 1] ?? 0);
        if (escape === "x") {
          arg.push(parseInt(text.subarray(i + 2, i + 4).toString(), 16));
          i += 4;
          continue;
        }
        arg.push(ESCAPES[escape] ?? escape.charCodeAt(0));
        i += 2;
        continue;
      }
      arg.push(text[i] ?? 0);
      i++;
    }
    args.push(Buffer.from(arg));
    i++;
  }
  return args;
}

/** One command Redis ran: who sent it (`127.0.0.1:PORT`, or `lua` from a script). */
export interface Command {
  client: string;
  args: string[];
}

/** A `MONITOR` connection that records every command until closed. */
export class Monitor {
  private readonly commands: Command[] = [];
  private buffer = Buffer.alloc(0);

  private constructor(private readonly socket: Socket) {}

  static async start(port: number): Promise<Monitor> {
    const socket = new Socket();
    const monitor = new Monitor(socket);
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.connect(port, "127.0.0.1", () => socket.write("MONITOR\r\n"));
      const first = (chunk: Buffer) => {
        monitor.buffer = Buffer.concat([monitor.buffer, chunk]);
        const end = monitor.buffer.indexOf("\r\n");
        if (end === -1) return;
        const line = monitor.buffer.subarray(0, end).toString();
        monitor.buffer = monitor.buffer.subarray(end + 2);
        socket.off("data", first);
        socket.off("error", reject);
        if (line !== "+OK") {
          reject(new Error(`MONITOR answered ${line}`));
          return;
        }
        socket.on("data", (data: Buffer) => monitor.read(data));
        socket.on("error", () => undefined);
        monitor.read(Buffer.alloc(0));
        resolve();
      };
      socket.on("data", first);
    });
    return monitor;
  }

  private read(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (let end = this.buffer.indexOf("\r\n"); end !== -1; end = this.buffer.indexOf("\r\n")) {
      const line = this.buffer.subarray(0, end);
      this.buffer = this.buffer.subarray(end + 2);
      const match = LINE.exec(line.toString("latin1"));
      if (!match) continue;
      const [, , client = "", rest = ""] = match;
      const args = parseArgs(Buffer.from(rest, "latin1")).map((arg) => arg.toString("utf8"));
      this.commands.push({ client, args });
    }
  }

  /** The commands clients sent (without those scripts ran, and without connection handshakes), in order. */
  sent(byClients = true): string[][] {
    return this.commands
      .filter((c) => !HANDSHAKE.has((c.args[0] ?? "").toUpperCase()) && !(byClients && c.client === "lua"))
      .map((c) => c.args);
  }

  /** Waits until `count` commands (from clients, not scripts) have been seen. */
  async waitFor(count: number, timeoutMs = 10_000): Promise<string[][]> {
    try {
      await waitFor(`${count} commands in MONITOR`, () => this.sent().length >= count, timeoutMs);
    } catch (error) {
      throw new Error(`${String(error)}; MONITOR saw ${JSON.stringify(this.sent())}`, { cause: error });
    }
    return this.sent();
  }

  close(): void {
    this.socket.destroy();
  }
}
