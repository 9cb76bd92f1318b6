// The fleet's parts on their own: job ids (model + revision + settings hash), which failures are
// retried, the REDIS_URL parsing and the Redis lock's mutual exclusion (that one needs REDIS_URL).
import { describe, expect, test } from "bun:test";
import { CheckpointError } from "../../engine/checkpoint.ts";
import { HubError } from "../../hub/errors.ts";
import { GateFailedError, StepFailedError } from "../../pipeline/errors.ts";
import { DEFAULTS, settingsHash, type Settings } from "../../steps/settings.ts";
import { ConfigError, UsageError } from "../../util/errors.ts";
import { childDiedReason, classifyFailure, nextBatchCap, ranOutOfMemory } from "../../fleet/classify.ts";
import { LARGEST_DEFAULT_BATCH } from "../../engine/batch-cap.ts";
import { jobIdFor, schedulerIdFor } from "../../fleet/jobs.ts";
import { withRedisLock } from "../../fleet/lock.ts";
import { checkRedis, redactUrl, redisOptions, RedisUnreachableError } from "../../fleet/redis.ts";
import { bullmqCron } from "../../cli/fleet.ts";

const base: Settings = { ...structuredClone(DEFAULTS), model: "acme/model", out: "/runs/acme--model", alpha: 4 };

describe("job ids", () => {
  test("the same model, revision and settings give the same id; each of them changes it", () => {
    const id = jobIdFor(base);
    expect(jobIdFor({ ...base, out: "/elsewhere", device: "cuda", publish: false })).toBe(id); // not hashed
    expect(id).toBe(`acme--model@default~${settingsHash(base).slice(0, 16)}`);
    expect(jobIdFor({ ...base, alpha: 5 })).not.toBe(id);
    expect(jobIdFor({ ...base, revision: "v2" })).toBe(`acme--model@v2~${settingsHash({ ...base, revision: "v2" }).slice(0, 16)}`);
    expect(jobIdFor({ ...base, model: "acme/other" })).not.toBe(id);
    // BullMQ refuses ":" in custom ids and reads an all-digit id as a number.
    expect(jobIdFor({ ...base, model: "/data/models/my:model", revision: "refs/pr/1" })).not.toContain(":");
  });

  test("a scheduler id depends on the model only (a changed setting or cron updates the same scheduler)", () => {
    expect(schedulerIdFor("acme/model")).toBe(schedulerIdFor("acme/model"));
    expect(schedulerIdFor("acme/model")).not.toBe(schedulerIdFor("acme/model2"));
    expect(schedulerIdFor("acme/model")).not.toContain(":");
  });

  test("cron macros are expanded for BullMQ, five-field crons pass as they are", () => {
    expect(bullmqCron("@daily")).toBe("0 0 * * *");
    expect(bullmqCron("@weekly")).toBe("0 0 * * 0");
    expect(bullmqCron(" 15 3 * * 1-5 ")).toBe("15 3 * * 1-5");
  });
});

describe("failure classes", () => {
  const kind = (e: unknown) => classifyFailure(e).kind;
  test("permanent: a failed gate, a usage or config error, a bad checkpoint, a Hub refusal", () => {
    expect(classifyFailure(new StepFailedError("validate", new GateFailedError(["harmful refusal too low"])))).toEqual({ kind: "permanent", reason: "gate failed: harmful refusal too low" });
    expect(kind(new UsageError("--alpha must not be 0"))).toBe("permanent");
    expect(kind(new ConfigError(["models.yaml:3: alpah: unknown key"]))).toBe("permanent");
    expect(kind(new StepFailedError("pull", new CheckpointError("model.safetensors: header is not JSON")))).toBe("permanent");
    expect(kind(new StepFailedError("publish", new HubError("auth", "token rejected", { status: 401 })))).toBe("permanent");
    expect(kind(new StepFailedError("pull", new HubError("not_found", "no such repo", { status: 404 })))).toBe("permanent");
  });
  test("transient: network, timeouts, Hub 5xx / 429, out of memory, a run directory held by a live run, anything else", () => {
    expect(kind(new StepFailedError("publish", new HubError("http", "committing failed (HTTP 500)", { status: 500 })))).toBe("transient");
    expect(kind(new StepFailedError("publish", new HubError("http", "rate limited", { status: 429 })))).toBe("transient");
    expect(kind(new StepFailedError("publish", new HubError("http", "bad request", { status: 400 })))).toBe("permanent");
    expect(kind(new StepFailedError("pull", new HubError("network", "connection refused")))).toBe("transient");
    expect(kind(new StepFailedError("pull", new HubError("timeout", "no data for 60000 ms")))).toBe("transient");
    expect(classifyFailure(new StepFailedError("validate", new Error("std::bad_alloc"))).reason).toStartWith("out of memory");
    expect(kind(new UsageError("another realign run (pid 4242) is using /runs/x; wait for it, or delete /runs/x/.lock if that process is not realign"))).toBe("transient");
    expect(kind(new Error("something unexpected"))).toBe("transient");
  });
});

describe("a smaller batch after running out of memory", () => {
  const oom = classifyFailure(new StepFailedError("validate", new Error("Failed to allocate memory for requested buffer of size 1073741824"))).reason;
  test("out of memory (the child's reason, or a SIGKILL its worker did not send) halves the cap: first half the largest default batch, never below 1", () => {
    expect(oom).toStartWith("out of memory");
    expect(LARGEST_DEFAULT_BATCH).toBe(256);
    expect(nextBatchCap(oom, null)).toBe(128);
    expect(nextBatchCap(oom, 128)).toBe(64);
    expect(nextBatchCap(oom, 3)).toBe(1);
    expect(nextBatchCap(oom, 1)).toBe(1);
    expect(ranOutOfMemory(childDiedReason("killed by SIGKILL"))).toBe(true);
    expect(nextBatchCap(childDiedReason("killed by SIGKILL"), 64)).toBe(32);
  });
  test("any other failure keeps the cap as it was (none stays none)", () => {
    expect(nextBatchCap(null, null)).toBeNull();
    expect(nextBatchCap("committing failed (HTTP 500)", null)).toBeNull();
    expect(nextBatchCap("committing failed (HTTP 500)", 32)).toBe(32);
    expect(nextBatchCap(childDiedReason("killed by SIGSEGV"), null)).toBeNull();
    expect(nextBatchCap(childDiedReason("exit code 1"), 16)).toBe(16);
    expect(ranOutOfMemory("the model ran out of patience: out of memory")).toBe(false); // only a reason that starts so
  });
});

describe("REDIS_URL", () => {
  test("host, port, database and password are read; messages never show the password", () => {
    expect(redisOptions("redis://:s3cret@queue.example:6380/2")).toMatchObject({ host: "queue.example", port: 6380, db: 2, password: "s3cret" });
    expect(redactUrl("redis://user:s3cret@queue.example:6380/2")).not.toContain("s3cret");
    expect(() => redisOptions("http://queue.example")).toThrow(RedisUnreachableError);
    expect(() => redisOptions("redis://h/x")).toThrow("database number");
  });
});

const REDIS_URL = process.env.REDIS_URL ?? "";
const redisOk = REDIS_URL ? await checkRedis(REDIS_URL).then(() => true, () => false) : false;
if (!redisOk) console.warn("\n!!! no Redis at REDIS_URL: the Redis lock test is SKIPPED (.ci/run starts a Redis) !!!\n");

describe.skipIf(!redisOk)("the publish lock", () => {
  test("two holders of one key never overlap; once released it is taken without waiting", async () => {
    const key = `realign-test:lock:${process.pid}:${Date.now()}`;
    const events: string[] = [];
    const section = (who: string) => async () => {
      events.push(`${who} in`);
      await Bun.sleep(300);
      events.push(`${who} out`);
      return who;
    };
    const [a, b] = await Promise.all([withRedisLock(REDIS_URL, key, "a", section("a"), { pollMs: 20 }), withRedisLock(REDIS_URL, key, "b", section("b"), { pollMs: 20 })]);
    expect([a, b]).toEqual(["a", "b"]);
    // in/out strictly alternate: never two inside at once.
    expect(events.length).toBe(4);
    expect(events[0]!.endsWith(" in") && events[1] === events[0]!.replace(" in", " out")).toBe(true);
    expect(events[2]!.endsWith(" in") && events[3] === events[2]!.replace(" in", " out")).toBe(true);
    // The lock is released: taking it again does not wait.
    let waited = false;
    await withRedisLock(REDIS_URL, key, "c", async () => 1, { onWait: () => (waited = true) });
    expect(waited).toBe(false);
  });
});
