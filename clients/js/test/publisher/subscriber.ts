/**
 * A bare WebSocket client of one gateway replica (the `ws` package, not the SDK): it sees every
 * frame exactly as the gateway sends it.
 */

import WebSocket from "ws";

import { signToken, sleep } from "../harness.js";

export type Frame = Record<string, unknown> & { type: string };

export class Subscriber {
  readonly clientId: string;
  private readonly frames: Frame[] = [];
  private wake: (() => void) | null = null;
  private closed: string | null = null;
  private ids = 0;

  private constructor(
    private readonly ws: WebSocket,
    hello: Frame,
  ) {
    this.clientId = String(hello["client_id"]);
  }

  /** Connects to the replica on `port` as `user` and waits for `connection_established`. */
  static async connect(port: number, user: string, timeoutMs = 20_000): Promise<Subscriber> {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws?token=${signToken(user)}`);
    const early: Frame[] = [];
    const hello = await new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no connection_established for ${user}`)), timeoutMs);
      ws.on("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      ws.on("message", (data: Buffer) => {
        const frame = JSON.parse(data.toString()) as Frame;
        if (frame.type === "connection_established") {
          clearTimeout(timer);
          resolve(frame);
        } else {
          early.push(frame);
        }
      });
    });
    ws.removeAllListeners("message");
    const subscriber = new Subscriber(ws, hello);
    subscriber.frames.push(...early);
    ws.on("message", (data: Buffer) => subscriber.push(JSON.parse(data.toString()) as Frame));
    ws.on("close", (code) => {
      subscriber.closed = `closed with ${code}`;
      subscriber.wake?.();
    });
    ws.on("error", () => undefined);
    return subscriber;
  }

  private push(frame: Frame): void {
    this.frames.push(frame);
    this.wake?.();
  }

  /** The next frame, within `timeoutMs`. */
  async frame(timeoutMs = 10_000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const frame = this.frames.shift();
      if (frame) return frame;
      if (this.closed !== null) throw new Error(`the socket was ${this.closed}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no frame within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
    }
  }

  private async request(frame: Record<string, unknown>, replyType: string): Promise<Frame> {
    const id = ++this.ids;
    this.ws.send(JSON.stringify({ ...frame, id }));
    const reply = await this.frame();
    if (reply["id"] !== id || reply.type !== replyType) throw new Error(`expected ${replyType} #${id}, got ${JSON.stringify(reply)}`);
    return reply;
  }

  async subscribe(...channels: string[]): Promise<void> {
    const reply = await this.request({ type: "subscribe", channels }, "subscribed");
    if (JSON.stringify(reply["rejected"]) !== "[]") throw new Error(`subscription rejected: ${JSON.stringify(reply)}`);
  }

  async register(clientType: string): Promise<void> {
    await this.request({ type: "register", client_type: clientType }, "registered");
  }

  /** The next frame, which must be an event. */
  async event(timeoutMs = 10_000): Promise<Frame> {
    const frame = await this.frame(timeoutMs);
    if (["error", "reload", "disconnect"].includes(frame.type)) throw new Error(`not an event: ${JSON.stringify(frame)}`);
    return frame;
  }

  async events(count: number, timeoutMs = 10_000): Promise<Frame[]> {
    const events: Frame[] = [];
    for (let i = 0; i < count; i++) events.push(await this.event(timeoutMs));
    return events;
  }

  /** Throws if a frame arrives within `ms`. */
  async nothingWithin(ms: number): Promise<void> {
    await sleep(ms);
    const frame = this.frames.shift();
    if (frame) throw new Error(`unexpected frame: ${JSON.stringify(frame)}`);
  }

  close(): void {
    this.ws.terminate();
  }
}
