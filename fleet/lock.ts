// A Redis lock held around a critical section (the publish step), so that two workers never publish
// to the same target at once. Contract: acquire = SET key token NX PX ttl, retried every pollMs until
// `waitMs`; while held the lock is renewed every ttl/3 (compare-and-PEXPIRE: only our token's); release
// is compare-and-DEL, so a lock that expired and was taken by another holder is never deleted by us.
// A holder that dies leaves the lock for at most `ttlMs`. Mutual exclusion needs the section to finish
// or renew within ttl; the publish step's own idempotency check (the Hub card's settings_hash) covers
// the case where a holder is cut off mid-commit.
import { Redis } from "ioredis";
import { randomBytes } from "node:crypto";
import { connectionOptions } from "./redis.ts";

const RENEW = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end`;
const RELEASE = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`;

export class LockTimeoutError extends Error {
  override name = "LockTimeoutError";
}

export interface LockOptions {
  ttlMs?: number;
  /** Give up after this long (LockTimeoutError; a transient failure). */
  waitMs?: number;
  pollMs?: number;
  /** Told once when the lock is busy ("waiting for the publish lock held by …"). */
  onWait?: (holder: string) => void;
}

/** Runs `fn` while holding `key`; `holder` is stored as the lock's value prefix (who holds it). */
export async function withRedisLock<T>(redisUrl: string, key: string, holder: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const ttl = opts.ttlMs ?? 60_000;
  const waitMs = opts.waitMs ?? 30 * 60_000;
  const poll = opts.pollMs ?? 250;
  const token = `${holder}#${randomBytes(8).toString("hex")}`;
  const client = new Redis(connectionOptions(redisUrl, "command"));
  client.on("error", () => {}); // reported through the failing command
  try {
    const start = Date.now();
    let told = false;
    for (;;) {
      if ((await client.set(key, token, "PX", ttl, "NX")) === "OK") break;
      if (!told) {
        told = true;
        opts.onWait?.(((await client.get(key)) ?? "?").replace(/#[0-9a-f]+$/, ""));
      }
      if (Date.now() - start > waitMs) throw new LockTimeoutError(`the lock ${key} stayed taken for ${Math.round(waitMs / 1000)} s`);
      await new Promise((r) => setTimeout(r, poll));
    }
    const timer = setInterval(() => void client.eval(RENEW, 1, key, token, String(ttl)).catch(() => {}), Math.max(50, Math.floor(ttl / 3)));
    try {
      return await fn();
    } finally {
      clearInterval(timer);
      await client.eval(RELEASE, 1, key, token).catch(() => {});
    }
  } finally {
    client.disconnect();
  }
}
