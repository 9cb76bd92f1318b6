// Where the fleet's Redis is and whether it answers. Contract: every fleet command calls
// `checkRedis(url)` first; it connects once with a short timeout and no reconnect loop, asks PING and
// the server version, and throws RedisUnreachableError (exit 1, one clear line, the password never
// shown) before anything is enqueued, scheduled or started. BullMQ needs Redis ≥ 5 (6.2+ advised).
// The connection options handed to BullMQ afterwards keep ioredis from retrying a request forever
// (`maxRetriesPerRequest: null` is what BullMQ's blocking worker connection requires; the short-lived
// commands give up after a few reconnects instead of looping).
import { Redis, type RedisOptions } from "ioredis";

export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379";
const MIN_REDIS_MAJOR = 5;

/** Redis is not there, or not one BullMQ can use. Exit code 1 (nothing was done). */
export class RedisUnreachableError extends Error {
  override name = "RedisUnreachableError";
}

/** REDIS_URL, or the default. */
export function redisUrlFrom(env: Record<string, string | undefined>): string {
  const v = env.REDIS_URL?.trim();
  return v ? v : DEFAULT_REDIS_URL;
}

/** The URL as messages may show it: user and password replaced. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString().replace(/\/$/, "");
  } catch {
    return "(unparseable REDIS_URL)";
  }
}

/** ioredis options from a redis:// or rediss:// URL; a bad URL is a RedisUnreachableError naming it. */
export function redisOptions(url: string): RedisOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RedisUnreachableError(`REDIS_URL ${JSON.stringify(redactUrl(url))} is not a URL: expected redis://host:port[/db]`);
  }
  if (u.protocol !== "redis:" && u.protocol !== "rediss:") throw new RedisUnreachableError(`REDIS_URL: expected a redis:// or rediss:// URL, got ${u.protocol}//…`);
  const db = u.pathname.replace(/^\//, "");
  if (db && !/^\d+$/.test(db)) throw new RedisUnreachableError(`REDIS_URL: the path must be a database number, got /${db}`);
  return {
    host: u.hostname || "127.0.0.1",
    port: u.port ? Number(u.port) : 6379,
    db: db ? Number(db) : 0,
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    tls: u.protocol === "rediss:" ? {} : undefined,
  };
}

export type ConnectionUse =
  /** enqueue, schedule, queue, the publish lock: give up after a few reconnects. */
  | "command"
  /** a long-running worker: Redis restarts are waited out (each retry ≤ 5 s apart). */
  | "worker";

/** Options for BullMQ's `connection` (or a plain client); retryStrategy: ms until the next reconnect, null: give up. */
export function connectionOptions(url: string, use: ConnectionUse): RedisOptions & { retryStrategy: (times: number) => number | null } {
  return {
    ...redisOptions(url),
    connectTimeout: 5000,
    maxRetriesPerRequest: use === "worker" ? null : 3,
    retryStrategy: use === "worker" ? (times: number) => Math.min(times * 500, 5000) : (times: number) => (times > 3 ? null : times * 200),
  };
}

/**
 * Connects once (timeout `timeoutMs`, no retries), PINGs and reads the server version. Throws
 * RedisUnreachableError with what to do; resolves with the version ("7.0.15").
 */
export async function checkRedis(url: string, timeoutMs = 3000): Promise<string> {
  const shown = redactUrl(url);
  const client = new Redis({ ...redisOptions(url), lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  // Without a listener ioredis prints every connection error itself.
  let lastError: Error | null = null;
  client.on("error", (e: Error) => (lastError = e));
  try {
    await withTimeout(client.connect(), timeoutMs + 500);
    const pong = await withTimeout(client.ping(), timeoutMs);
    if (pong !== "PONG") throw new Error(`PING answered ${JSON.stringify(pong)}`);
    const info = await withTimeout(client.info("server"), timeoutMs);
    const version = /redis_version:([^\r\n]+)/.exec(info)?.[1]?.trim() ?? "unknown";
    const major = Number.parseInt(version, 10);
    if (Number.isFinite(major) && major < MIN_REDIS_MAJOR) throw new RedisUnreachableError(`Redis at ${shown} is version ${version}; BullMQ needs Redis ≥ ${MIN_REDIS_MAJOR} (6.2 or later advised)`);
    return version;
  } catch (e) {
    if (e instanceof RedisUnreachableError) throw e;
    const cause = (lastError ?? e) as Error & { code?: string };
    const why = cause.code ?? cause.message ?? String(cause);
    throw new RedisUnreachableError(`cannot reach Redis at ${shown} (${why}): start redis-server there, or set REDIS_URL to the fleet's Redis (default ${DEFAULT_REDIS_URL})`);
  } finally {
    client.disconnect();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e) => (clearTimeout(t), reject(e)),
    );
  });
}
