/**
 * Real processes for the end-to-end and browser tests: a throwaway `redis-server` (or a Redis
 * Cluster of them, or one behind a sentinel), gateway replicas (the Rust binary) and nginx in
 * front of them, each on free loopback ports, killed when the test ends — and when the test
 * process exits, however it exits.
 *
 *   const cluster = await Cluster.start({ replicas: 2, toml });
 *   cluster.url                      // ws://127.0.0.1:<nginx>/ws
 *   await cluster.publish({ channel: "jobs", event: "job_progress", data: {…} });
 *   cluster.replica(nodeId).kill()   // SIGKILL
 *   await cluster.stop();
 */

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** clients/js, from build/test/harness.js. */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const REPO_DIR = resolve(PACKAGE_DIR, "../..");

export const JWT_SECRET = "js-e2e-secret-" + randomBytes(8).toString("hex");
export const API_KEY = "js-e2e-key-" + randomBytes(8).toString("hex");

/** Namespaces that keep history, as most tests need. */
export const HISTORY_TOML = `
[namespaces.default]
subscribe = "public"
history_size = 1000
history_ttl = "10m"
[namespaces.personal]
history_size = 1000
history_ttl = "10m"
[namespaces.short]
subscribe = "public"
history_size = 3
history_ttl = "10m"
[namespaces.room]
subscribe = "public"
client_publish = true
history_size = 100
history_ttl = "10m"
`;

/** Every process started and scratch directory made, for the last-resort cleanup on exit. */
const children = new Set<ChildProcess>();
const groups = new WeakSet<ChildProcess>();
const dirs = new Set<string>();

/** SIGKILL to the child, or to its whole process group (nginx: the master and its workers). */
function killHard(child: ChildProcess): void {
  if (child.exitCode !== null || child.signalCode !== null) return;
  if (groups.has(child) && child.pid !== undefined) {
    try {
      process.kill(-child.pid, "SIGKILL");
      return;
    } catch {
      // the group is gone already
    }
  }
  child.kill("SIGKILL");
}

function killAll(): void {
  for (const child of children) killHard(child);
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}
process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits until `check` returns true, polling; throws with `what` after `timeoutMs`. */
export async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 JWT for `sub`, expiring `ttlSeconds` from now (negative: already expired). */
export function signToken(sub: string, ttlSeconds = 3600, secret = JWT_SECRET, extra: Record<string, unknown> = {}): string {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds, ...extra }));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `gw-js-${name}-`));
  dirs.add(dir);
  return dir;
}

function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

/** Tracks `child` for the cleanup on exit; `group`: it was spawned detached, as a process group. */
function track(child: ChildProcess, group = false): ChildProcess {
  children.add(child);
  if (group) groups.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

function tail(path: string, lines = 40): string {
  try {
    return readFileSync(path, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

async function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.once("error", () => done(false));
    socket.connect(port, "127.0.0.1", () => socket.write("PING\r\n"));
    socket.once("data", (data) => done(data.toString().startsWith("+PONG")));
  });
}

/** The status of a plain GET of `url` (0 when nothing answers). */
async function httpStatus(url: string): Promise<number> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await response.arrayBuffer();
    return response.status;
  } catch {
    return 0;
  }
}

export class TestRedis {
  private constructor(
    readonly port: number,
    private child: ChildProcess,
    readonly dir: string,
  ) {}

  static async start(): Promise<TestRedis> {
    const port = await freePort();
    const dir = tempDir("redis");
    const redis = new TestRedis(port, TestRedis.spawn(port, dir), dir);
    await waitFor(`redis-server on port ${port}`, () => redisPing(port), 10_000);
    return redis;
  }

  /** Kills the server and starts it again on the same port, empty: every history is lost. */
  async restart(): Promise<void> {
    this.child.kill("SIGKILL");
    await exited(this.child);
    this.child = TestRedis.spawn(this.port, this.dir);
    await waitFor(`redis-server on port ${this.port} again`, () => redisPing(this.port), 10_000);
  }

  private static spawn(port: number, dir: string): ChildProcess {
    return track(
      spawn(
        "redis-server",
        ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--logfile", join(dir, "redis.log")],
        { stdio: "ignore" },
      ),
    );
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    this.child.kill("SIGKILL");
    await exited(this.child);
    removeDir(this.dir);
  }
}

/** `count` distinct free loopback ports. */
async function freePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

/** Runs `redis-cli` with `args`: its output, or a rejection with what it said. */
export async function redisCli(args: readonly string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile("redis-cli", [...args], { timeout: timeoutMs }, (error, stdout, stderr) => {
      if (error) reject(new Error(`redis-cli ${args.join(" ")}: ${error.message}\n${stdout}${stderr}`, { cause: error }));
      else resolve(stdout);
    });
  });
}

/**
 * A Redis Cluster of `masters` masters without replicas, each a `redis-server` on a free
 * loopback port (its cluster bus on another), its slots spread by `redis-cli --cluster create`.
 */
export class TestRedisCluster {
  private constructor(
    readonly ports: readonly number[],
    private readonly children: readonly ChildProcess[],
    readonly dir: string,
  ) {}

  static async start(masters = 3): Promise<TestRedisCluster> {
    const dir = tempDir("cluster");
    const free = await freePorts(masters * 2);
    const ports = free.slice(0, masters);
    const children = ports.map((port, i) =>
      track(
        spawn(
          "redis-server",
          [
            ...["--cluster-enabled", "yes", "--cluster-config-file", join(dir, `nodes-${port}.conf`)],
            // The bus port is named: port + 10000, the default, may be taken or past 65535.
            ...["--port", String(port), "--cluster-port", String(free[masters + i])],
            ...["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, "--logfile", join(dir, `redis-${port}.log`)],
          ],
          { stdio: "ignore" },
        ),
      ),
    );
    const cluster = new TestRedisCluster(ports, children, dir);
    try {
      await Promise.all(ports.map((port) => waitFor(`cluster node on port ${port}`, () => redisPing(port), 10_000)));
      await redisCli(["--cluster", "create", ...ports.map((port) => `127.0.0.1:${port}`), "--cluster-replicas", "0", "--cluster-yes"]);
      await waitFor(
        "cluster_state:ok on every node",
        async () => {
          const infos = await Promise.all(ports.map((port) => redisCli(["-p", String(port), "cluster", "info"])));
          return infos.every((info) => info.includes("cluster_state:ok") && info.includes(`cluster_known_nodes:${masters}`));
        },
        30_000,
      );
      return cluster;
    } catch (error) {
      const logText = tail(join(dir, `redis-${ports[0] ?? 0}.log`));
      await cluster.stop();
      throw new Error(`${String(error)}\n${logText}`, { cause: error });
    }
  }

  /** The seed nodes, as the publisher's `url` takes them: every node, comma-separated. */
  get url(): string {
    return this.ports.map((port) => `redis://127.0.0.1:${port}`).join(",");
  }

  async stop(): Promise<void> {
    for (const child of this.children) child.kill("SIGKILL");
    await Promise.all(this.children.map(exited));
    removeDir(this.dir);
  }
}

/** A master `redis-server` and one sentinel watching it as `name` (a quorum of 1), on free loopback ports. */
export class TestSentinel {
  private constructor(
    readonly master: TestRedis,
    readonly port: number,
    readonly name: string,
    private readonly child: ChildProcess,
    readonly dir: string,
  ) {}

  static async start(name = "mymaster"): Promise<TestSentinel> {
    const master = await TestRedis.start();
    const port = await freePort();
    const dir = tempDir("sentinel");
    // A sentinel rewrites its configuration file: it must be its own, and writable.
    const config = join(dir, "sentinel.conf");
    writeFileSync(config, [`port ${port}`, "bind 127.0.0.1", `dir ${dir}`, `sentinel monitor ${name} 127.0.0.1 ${master.port} 1`, ""].join("\n"));
    const log = join(dir, "sentinel.log");
    const child = track(spawn("redis-server", [config, "--sentinel", "--logfile", log], { stdio: "ignore" }));
    const sentinel = new TestSentinel(master, port, name, child, dir);
    try {
      await waitFor(
        `the sentinel on port ${port} to name ${name}`,
        async () => {
          const reply = await redisCli(["-p", String(port), "sentinel", "get-master-addr-by-name", name]).catch(() => "");
          return reply.split("\n").includes(String(master.port));
        },
        10_000,
      );
      return sentinel;
    } catch (error) {
      const logText = tail(log);
      await sentinel.stop();
      throw new Error(`${String(error)}\n${logText}`, { cause: error });
    }
  }

  /** The sentinel, as the publisher's `url` takes it in sentinel mode. */
  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    this.child.kill("SIGKILL");
    await exited(this.child);
    removeDir(this.dir);
    await this.master.stop();
  }
}

export function gatewayBinary(): string {
  const binary = process.env["GATEWAY_BIN"] ?? join(REPO_DIR, "target/debug/gateway");
  if (!existsSync(binary)) {
    throw new Error(`no gateway binary at ${binary}: run \`cargo build -p gateway\` or set GATEWAY_BIN`);
  }
  return binary;
}

export interface GatewayOptions {
  redisUrl: string;
  nodeId: string;
  toml?: string;
  env?: Record<string, string>;
}

export class TestGateway {
  private constructor(
    readonly nodeId: string,
    readonly port: number,
    readonly adminPort: number,
    private readonly child: ChildProcess,
    readonly dir: string,
  ) {}

  static async start(options: GatewayOptions): Promise<TestGateway> {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const adminPort = await freePort();
      const dir = tempDir(`gateway-${options.nodeId}`);
      const config = join(dir, "gateway.toml");
      writeFileSync(config, options.toml ?? HISTORY_TOML);
      const log = openSync(join(dir, "gateway.log"), "a");
      const child = track(
        spawn(gatewayBinary(), [], {
          stdio: ["ignore", log, log],
          env: {
            PATH: process.env["PATH"] ?? "/usr/bin:/bin",
            GATEWAY_LISTEN: `127.0.0.1:${port}`,
            GATEWAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
            GATEWAY_REDIS_URL: options.redisUrl,
            GATEWAY_JWT_SECRET: JWT_SECRET,
            GATEWAY_API_KEY: API_KEY,
            GATEWAY_NODE_ID: options.nodeId,
            GATEWAY_CONFIG: config,
            GATEWAY_LOG: process.env["E2E_GATEWAY_LOG"] ?? "info",
            ...options.env,
          },
        }),
      );
      const gateway = new TestGateway(options.nodeId, port, adminPort, child, dir);
      try {
        await waitFor(
          `gateway ${options.nodeId} ready`,
          async () => {
            if (child.exitCode !== null) throw new Error(`gateway ${options.nodeId} exited with ${child.exitCode}`);
            return (await gateway.ready()) === 200;
          },
          30_000,
        );
        return gateway;
      } catch (error) {
        child.kill("SIGKILL");
        await exited(child);
        const logText = tail(join(dir, "gateway.log"));
        removeDir(dir);
        if (attempt < 3 && /in use|AddrInUse/.test(logText)) continue;
        throw new Error(`${String(error)}\n${logText}`, { cause: error });
      }
    }
  }

  get adminUrl(): string {
    return `http://127.0.0.1:${this.adminPort}`;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async ready(): Promise<number> {
    try {
      const response = await fetch(`${this.adminUrl}/readyz`, { signal: AbortSignal.timeout(2000) });
      await response.arrayBuffer();
      return response.status;
    } catch {
      return 0;
    }
  }

  /** Sends `signal`; SIGKILL and SIGSTOP take effect at once. */
  signal(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }

  /** SIGKILL, and waits until the process is gone. */
  async kill(): Promise<void> {
    this.child.kill("SIGKILL");
    await exited(this.child);
  }

  /** Waits for the process to exit by itself (e.g. after SIGTERM); its exit code. */
  async exited(timeoutMs = 30_000): Promise<number | null> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([exited(this.child), new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
    return this.child.exitCode;
  }

  log(): string {
    return tail(join(this.dir, "gateway.log"), 60);
  }

  async stop(): Promise<void> {
    await this.kill();
    removeDir(this.dir);
  }
}

/** The gateway's public paths that nginx can be told to refuse (`return 403`), as a proxy that blocks them would. */
export type GatewayPath = "ws" | "sse" | "poll";

export class TestNginx {
  private constructor(
    readonly port: number,
    private child: ChildProcess,
    readonly dir: string,
    private readonly upstreams: number[],
    private readonly staticRoot: string | undefined,
  ) {}

  /**
   * nginx on a free port: `/ws`, `/sse` and `/poll` to the gateways (those in `refuse` answered
   * 403 by nginx itself), `/` the files of `staticRoot` (if given).
   */
  static async start(upstreams: number[], staticRoot?: string, refuse: GatewayPath[] = []): Promise<TestNginx> {
    const port = await freePort();
    const dir = tempDir("nginx");
    writeFileSync(join(dir, "nginx.conf"), TestNginx.config(port, dir, upstreams, staticRoot, refuse));
    return new TestNginx(port, await TestNginx.spawn(port, dir), dir, upstreams, staticRoot);
  }

  /** Starts nginx on `port` with `dir`'s configuration and waits until it answers. */
  private static async spawn(port: number, dir: string): Promise<ChildProcess> {
    const nginx = existsSync("/usr/sbin/nginx") ? "/usr/sbin/nginx" : "nginx";
    // Its own process group: killing the group takes the workers too, which outlive a killed master.
    const child = track(
      spawn(nginx, ["-p", dir, "-c", join(dir, "nginx.conf")], { stdio: ["ignore", "ignore", "pipe"], detached: true }),
      true,
    );
    let stderr = "";
    child.stderr?.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      await waitFor(
        `nginx on port ${port}`,
        async () => {
          if (child.exitCode !== null) throw new Error(`nginx exited with ${child.exitCode}: ${stderr}`);
          return (await httpStatus(`http://127.0.0.1:${port}/healthz`)) === 200;
        },
        15_000,
      );
    } catch (error) {
      killHard(child);
      throw new Error(`${String(error)}\n${stderr}\n${tail(join(dir, "error.log"))}`, { cause: error });
    }
    return child;
  }

  private static config(port: number, dir: string, upstreams: number[], staticRoot: string | undefined, refuse: GatewayPath[]): string {
    const servers = upstreams.map((p) => `    server 127.0.0.1:${p} max_fails=1 fail_timeout=1s;`).join("\n");
    const root = staticRoot
      ? `    location / {\n      root ${staticRoot};\n      try_files $uri /index.html;\n    }`
      : "";
    const location = (path: GatewayPath) =>
      refuse.includes(path)
        ? `    location = /${path} {\n      return 403;\n    }`
        : `    location = /${path} {\n      include ${dir}/proxy.conf;\n    }`;
    // SSE streams and polls pass through unbuffered, with timeouts longer than a poll's wait.
    writeFileSync(
      join(dir, "proxy.conf"),
      `proxy_pass http://gateways;
proxy_http_version 1.1;
proxy_set_header Upgrade $http_upgrade;
proxy_set_header Connection $connection_upgrade;
proxy_set_header Host $host;
proxy_connect_timeout 2s;
proxy_read_timeout 1h;
proxy_send_timeout 1h;
proxy_buffering off;
# A draining replica answers upgrades, streams and polls with 503: try the other one.
proxy_next_upstream error timeout http_502 http_503;
`,
    );
    return `worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  include /etc/nginx/mime.types;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  upstream gateways {
    least_conn;
${servers}
  }
  server {
    listen 127.0.0.1:${port};
${location("ws")}
${location("sse")}
${location("poll")}
    location = /healthz {
      proxy_pass http://gateways;
    }
${root}
  }
}
`;
  }

  /** The status nginx answers a plain GET of `path` with (0 when it does not answer). */
  status(path: string): Promise<number> {
    return httpStatus(`http://127.0.0.1:${this.port}${path}`);
  }

  /** Kills nginx (every connection through it drops; new ones are refused) until {@link restart}. */
  async kill(): Promise<void> {
    killHard(this.child);
    await exited(this.child);
  }

  /** Starts nginx again on its port, after {@link kill}. */
  async restart(): Promise<void> {
    this.child = await TestNginx.spawn(this.port, this.dir);
  }

  /**
   * Reloads nginx refusing `refuse` from now on (SIGHUP: new workers take the new
   * configuration; the old ones finish the connections they hold).
   */
  async reconfigure(refuse: GatewayPath[]): Promise<void> {
    writeFileSync(join(this.dir, "nginx.conf"), TestNginx.config(this.port, this.dir, this.upstreams, this.staticRoot, refuse));
    this.child.kill("SIGHUP");
    // Without an upgrade or a token: 403 from nginx where refused, the gateway's 4xx where passed.
    const paths: GatewayPath[] = ["ws", "sse", "poll"];
    await waitFor(`nginx reloaded (${refuse.join(", ") || "nothing"} refused)`, async () => {
      const statuses = await Promise.all(paths.map((path) => this.status(`/${path}`)));
      return paths.every((path, i) => (statuses[i] === 403) === refuse.includes(path) && statuses[i] !== 0);
    });
  }

  async stop(): Promise<void> {
    killHard(this.child);
    await exited(this.child);
    removeDir(this.dir);
  }
}

export type PublishBody = Record<string, unknown> & { event: string };

export interface ClusterOptions {
  replicas?: number;
  toml?: string;
  env?: Record<string, string>;
  staticRoot?: string;
  /** Paths nginx refuses with 403. */
  refuse?: GatewayPath[];
}

/** Redis, gateway replicas `gw-a`, `gw-b`, … and nginx in front of them. */
export class Cluster {
  private constructor(
    readonly redis: TestRedis,
    readonly replicas: TestGateway[],
    readonly nginx: TestNginx,
  ) {}

  static async start(options: ClusterOptions = {}): Promise<Cluster> {
    const redis = await TestRedis.start();
    const replicas: TestGateway[] = [];
    try {
      const count = options.replicas ?? 2;
      for (let i = 0; i < count; i++) {
        const gatewayOptions: GatewayOptions = { redisUrl: redis.url, nodeId: `gw-${String.fromCharCode(97 + i)}` };
        if (options.toml !== undefined) gatewayOptions.toml = options.toml;
        if (options.env !== undefined) gatewayOptions.env = options.env;
        replicas.push(await TestGateway.start(gatewayOptions));
      }
      const nginx = await TestNginx.start(
        replicas.map((r) => r.port),
        options.staticRoot,
        options.refuse,
      );
      return new Cluster(redis, replicas, nginx);
    } catch (error) {
      await Promise.all(replicas.map((r) => r.stop()));
      await redis.stop();
      throw error;
    }
  }

  /** `ws://127.0.0.1:<nginx>/ws` */
  get url(): string {
    return `ws://127.0.0.1:${this.nginx.port}/ws`;
  }

  /** `http://127.0.0.1:<nginx>` */
  get httpUrl(): string {
    return `http://127.0.0.1:${this.nginx.port}`;
  }

  replica(nodeId: string | undefined): TestGateway {
    const replica = this.replicas.find((r) => r.nodeId === nodeId);
    if (!replica) throw new Error(`no replica ${String(nodeId)}`);
    return replica;
  }

  /**
   * Publishes through the admin API of the first live replica (of `via`) that answers, trying the others
   * on failure until `timeoutMs`; give an `idempotency_key` so that a retry after a lost answer
   * cannot publish twice.
   */
  async publish(body: PublishBody, via: TestGateway[] = this.replicas, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    let lastError = "";
    for (let round = 0; Date.now() < deadline; round++) {
      for (const replica of via) {
        if (!replica.alive) continue;
        try {
          const response = await fetch(`${replica.adminUrl}/api/publish`, {
            method: "POST",
            headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
            body: JSON.stringify(body),
            signal: AbortSignal.timeout(3000),
          });
          const text = await response.text();
          if (response.ok) return JSON.parse(text) as Record<string, unknown>;
          lastError = `${response.status} ${text}`;
          if (response.status === 400 || response.status === 401) throw new Error(`publish refused: ${lastError}`);
        } catch (error) {
          if (String(error).includes("publish refused")) throw error;
          lastError = String(error);
        }
      }
      await sleep(Math.min(50 * (round + 1), 250));
    }
    throw new Error(`publish failed on every replica: ${lastError}`);
  }

  logs(): string {
    return this.replicas.map((r) => `--- ${r.nodeId} ---\n${r.log()}`).join("\n");
  }

  async stop(): Promise<void> {
    await this.nginx.stop();
    await Promise.all(this.replicas.map((r) => r.stop()));
    await this.redis.stop();
  }
}
