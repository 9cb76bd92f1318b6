// The fleet commands: scale `realign batch` out over many GPU machines on BullMQ + Redis.
//
//   realign enqueue [models.yaml]   one job per enabled model (id = model + revision + settings hash)
//   realign worker                  on each GPU machine, one per GPU: runs jobs (fleet/worker.ts)
//   realign schedule [models.yaml]  one BullMQ job scheduler per enabled model, on the file's schedule:
//   realign queue [--json]          waiting / active (worker, step, since) / completed / failed
//
// Contract: every command checks Redis first (REDIS_URL, default redis://127.0.0.1:6379) and exits 1
// with one line when it is unreachable, before anything is enqueued, scheduled or started; enqueue and
// schedule check every model (settings, paths, prompt-set sizes, run directory) before adding any, so
// a bad models.yaml adds nothing (exit 2). Settings are resolved on the enqueueing machine with
// absolute paths (workers read them from shared storage); tokens never enter Redis.
//
// This file is also the child process that runs one job (`bun cli/fleet.ts --run-job`): it reads the
// worker's ChildRequest from stdin, runs the pipeline exactly as `realign batch` would for that model
// (the publish step inside a Redis lock), reports steps, percent and its outcome as protocol lines,
// and exits at once when stdin closes (its worker died).
import { writeSync } from "node:fs";
import { hostname } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { applyHfEnv, checkPublishable, checkPublishTarget, checkRunDir, publishFrom, realignRunDir } from "./batch.ts";
import { MACROS } from "./cron.ts";
import { loadModelsFile } from "./models-file.ts";
import { checkSettingsPaths, resolveSettings } from "./settings.ts";
import { exitCodeFor, EXIT_FAILED, EXIT_OK } from "./errors.ts";
import { checkPromptSetSizes } from "../evals/datasets.ts";
import { maxBatch, MAX_BATCH_ENV } from "../engine/batch-cap.ts";
import { DEVICES } from "../engine/device.ts";
import { isLocalModel, resolveToken } from "../hub/repo.ts";
import { InterruptedError } from "../pipeline/errors.ts";
import type { ProgressHandle, RunnerUI, Step } from "../pipeline/runner.ts";
import { runPipeline } from "../pipeline/runner.ts";
import { writeRunReport } from "../report/build.ts";
import { getSteps } from "../steps/index.ts";
import { defaultRepoName } from "../steps/publish.ts";
import { settingsHash, type Settings } from "../steps/settings.ts";
import { ConfigError, UsageError } from "../util/errors.ts";
import { DEFAULT_QUEUE, DEFAULT_RETRY, enqueueJobs, formatQueueStatus, openQueue, queueStatus, syncSchedulers, type FleetJobData, type RetryPolicy, type ScheduleEntry } from "../fleet/jobs.ts";
import { checkRedis, redactUrl, redisUrlFrom, RedisUnreachableError } from "../fleet/redis.ts";
import { withRedisLock } from "../fleet/lock.ts";
import { encodeChildMessage, startWorker, type ChildMessage, type ChildRequest } from "../fleet/worker.ts";
import { classifyFailure } from "../fleet/classify.ts";

type Opts = Record<string, unknown>;

export interface FleetDeps {
  env: Record<string, string | undefined>;
  cwd: string;
  /** Setting overrides from the command line (enqueue/schedule: --device, --no-publish, --hub-url, --offline). */
  overrides?: Record<string, unknown>;
  out?: (line: string) => void;
  err?: (line: string) => void;
}

const REPO_ROOT = resolve(import.meta.dir, "..");

// ---- options ----------------------------------------------------------------------------------------

function intOption(opts: Opts, key: string, flag: string, def: number, min: number): number {
  const v = opts[key];
  if (v === undefined) return def;
  const n = typeof v === "number" ? v : typeof v === "string" && /^\d+$/.test(v.trim()) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag}: expected an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  return n;
}

function queueName(opts: Opts): string {
  const q = opts.queue === undefined ? DEFAULT_QUEUE : String(opts.queue);
  if (!/^[A-Za-z0-9._-]+$/.test(q)) throw new UsageError(`--queue: letters, digits, ".", "_" and "-" only (no ":"), got ${JSON.stringify(q)}`);
  return q;
}

function retryPolicy(opts: Opts): RetryPolicy {
  return { attempts: intOption(opts, "attempts", "--attempts", DEFAULT_RETRY.attempts, 1), backoffMs: intOption(opts, "backoff", "--backoff", DEFAULT_RETRY.backoffMs, 0) };
}

/** Redis first: one clear line and exit 1 when it is not there (the caller prints it). */
async function redisOrExit(env: Record<string, string | undefined>): Promise<{ url: string; version: string }> {
  const url = redisUrlFrom(env);
  const version = await checkRedis(url);
  return { url, version };
}

/** Prints a RedisUnreachableError as one line (no stack hint) and returns exit 1; rethrows others. */
async function guarded(deps: FleetDeps, f: () => Promise<number>): Promise<number> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof RedisUnreachableError) {
      (deps.err ?? console.error)(`realign: ${e.message}`);
      return EXIT_FAILED;
    }
    throw e;
  }
}

// ---- the jobs of a models.yaml ---------------------------------------------------------------------

/**
 * Every enabled model's settings, resolved as `realign batch` resolves them, with absolute paths, and
 * checked; ConfigError names every model that fails (nothing is enqueued then).
 */
export async function fleetJobs(file: string | undefined, deps: FleetDeps): Promise<{ label: string; schedule: string | null; jobs: FleetJobData[] }> {
  const { env, cwd } = deps;
  const path = resolve(cwd, file ?? env.REALIGN_CONFIG ?? "models.yaml");
  const models = loadModelsFile(path);
  const steps = getSteps();
  const jobs: FleetJobData[] = [];
  const problems: string[] = [];
  for (const entry of models.models) {
    if (!entry.enabled) continue;
    try {
      const resolved = resolveSettings({ cli: deps.overrides, env, modelsYaml: models, repo: entry.repo, cwd });
      applyHfEnv(resolved, env);
      const s = resolved.settings;
      checkSettingsPaths(s, resolved.sources, cwd);
      // Workers run elsewhere: every path they read or write is made absolute here.
      if (isLocalModel(s.model, cwd)) s.model = resolve(cwd, s.model);
      s.out = resolve(cwd, s.out);
      if (s.pushTo?.startsWith("file:") && !isAbsolute(s.pushTo.slice(5))) s.pushTo = `file:${resolve(cwd, s.pushTo.slice(5))}`;
      await checkPromptSetSizes(s);
      checkPublishTarget(s);
      checkRunDir(s, steps, "run directory");
      jobs.push({ settings: s, source: models.path });
    } catch (e) {
      const msg = e instanceof ConfigError ? e.problems.join("; ") : e instanceof Error ? e.message : String(e);
      problems.push(`${entry.repo}: ${msg}`);
    }
  }
  if (problems.length) throw new ConfigError([...problems, "nothing was enqueued or scheduled"]);
  return { label: models.label, schedule: models.schedule, jobs };
}

// ---- commands --------------------------------------------------------------------------------------

/** Runs `use` on the named queue and closes the queue's connection whatever happens. */
async function withQueue<T>(url: string, name: string, use: (queue: ReturnType<typeof openQueue>) => Promise<T>): Promise<T> {
  const queue = openQueue(url, name);
  try {
    return await use(queue);
  } finally {
    await queue.close();
  }
}

export async function enqueueCommand(file: string | undefined, opts: Opts, deps: FleetDeps): Promise<number> {
  const out = deps.out ?? console.log;
  return guarded(deps, async () => {
    const retry = retryPolicy(opts);
    const name = queueName(opts);
    const { url } = await redisOrExit(deps.env);
    const { label, jobs } = await fleetJobs(file, deps);
    return withQueue(url, name, async (queue) => {
      const results = await enqueueJobs(queue, jobs, retry, { retryFailed: opts.retryFailed === true });
      for (const r of results) {
        if (r.action === "added") out(`added     ${r.id}  ${r.model}`);
        else if (r.action === "retried") out(`retried   ${r.id}  ${r.model} (it had failed)`);
        else out(`exists    ${r.id}  ${r.model} (${r.state}; same model, revision and settings: not added again)`);
      }
      const added = results.filter((r) => r.action !== "exists").length;
      out(`${added} job(s) added to queue ${name} on ${redactUrl(url)} from ${label}; ${results.length - added} already there`);
      return EXIT_OK;
    });
  });
}

/** A five-field cron for BullMQ from models.yaml's schedule: (macros expanded; the file checked it already). */
export function bullmqCron(schedule: string): string {
  const s = schedule.trim();
  return MACROS[s.toLowerCase()] ?? s;
}

export async function scheduleCommand(file: string | undefined, opts: Opts, deps: FleetDeps): Promise<number> {
  const out = deps.out ?? console.log;
  return guarded(deps, async () => {
    const retry = retryPolicy(opts);
    const name = queueName(opts);
    const { url } = await redisOrExit(deps.env);
    const { label, schedule, jobs } = await fleetJobs(file, deps);
    if (!schedule) throw new UsageError(`${label}: no schedule: set, so there is nothing to register (e.g. schedule: "0 3 * * 1")`);
    const tz = deps.env.TZ?.trim() || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    const entries: ScheduleEntry[] = jobs.map((data) => ({ data, cron: bullmqCron(schedule), tz }));
    return withQueue(url, name, async (queue) => {
      const results = await syncSchedulers(queue, entries, retry);
      const when = (ms: number | null) => (ms === null ? "" : `, next run ${new Date(ms).toISOString()}`);
      for (const r of results) {
        if (r.action === "created") out(`created    ${r.id}  ${r.model}  "${r.cron}"${when(r.next)}`);
        else if (r.action === "updated") out(`updated    ${r.id}  ${r.model}  "${r.previous ?? "?"}" → "${r.cron}"${when(r.next)}`);
        else if (r.action === "unchanged") out(`unchanged  ${r.id}  ${r.model}  "${r.cron}"${when(r.next)}`);
        else out(`removed    ${r.id}  ${r.model ?? ""} (no longer an enabled model of ${label})`);
      }
      out(`${jobs.length} scheduler(s) on queue ${name} (${tz}); each run goes to whichever worker is free`);
      return EXIT_OK;
    });
  });
}

export async function queueCommand(opts: Opts, deps: FleetDeps): Promise<number> {
  const out = deps.out ?? console.log;
  return guarded(deps, async () => {
    const name = queueName(opts);
    const limit = intOption(opts, "limit", "--limit", 20, 1);
    const { url } = await redisOrExit(deps.env);
    return withQueue(url, name, async (queue) => {
      const st = await queueStatus(queue, limit);
      if (opts.json === true) out(JSON.stringify(st, null, 2));
      else for (const l of formatQueueStatus(st, redactUrl(url))) out(l);
      return EXIT_OK;
    });
  });
}

export async function workerCommand(opts: Opts, deps: FleetDeps): Promise<number> {
  const out = deps.out ?? console.log;
  return guarded(deps, async () => {
    const name = queueName(opts);
    const concurrency = intOption(opts, "concurrency", "--concurrency", 1, 1);
    const lockDurationMs = intOption(opts, "lockDuration", "--lock-duration", 30_000, 1000);
    const stalledIntervalMs = intOption(opts, "stalledInterval", "--stalled-interval", 30_000, 500);
    const device = opts.device === undefined ? null : String(opts.device).toLowerCase();
    if (device !== null && !(DEVICES as readonly string[]).includes(device)) throw new UsageError(`--device: expected one of ${DEVICES.join(", ")}, got ${JSON.stringify(opts.device)}`);
    const workerName = typeof opts.name === "string" && opts.name.trim() ? opts.name.trim() : `${hostname()}:${process.pid}`;
    const { url, version } = await redisOrExit(deps.env);
    const fw = await startWorker({
      redisUrl: url,
      queue: name,
      name: workerName,
      concurrency,
      device,
      lockDurationMs,
      stalledIntervalMs,
      childArgv: [process.execPath, join(REPO_ROOT, "cli", "fleet.ts"), "--run-job"],
      env: deps.env,
      log: out,
    });
    out(`worker ${workerName} on queue ${name} at ${redactUrl(url)} (Redis ${version}), concurrency ${concurrency}${device ? `, device ${device}` : ""}; SIGTERM: finish the current step, then hand the job back`);
    let signals = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      signals++;
      out(signals === 1 ? `${sig}: finishing the current step, then handing the job back to the queue (${sig} again: stop the step now)` : `${sig}: stopping the current step now`);
      void fw.stop();
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    try {
      await fw.closed;
    } finally {
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    }
    out(`worker ${workerName} stopped`);
    return EXIT_OK;
  });
}

// ---- the child: one job's pipeline -----------------------------------------------------------------

const send = (m: ChildMessage) => void writeSync(1, encodeChildMessage(m));

/** The publish lock's key: one per target (a Hub repo, or a local folder), whatever the settings. */
export function publishLockKey(s: Settings): string {
  const target = s.pushTo?.startsWith("file:") ? `file:${resolve(s.pushTo.slice(5))}` : `${s.hubUrl}|${s.pushTo ?? `<token user>/${defaultRepoName(s.model)}`}`;
  return `realign:publish:${target}`;
}

async function readRequest(): Promise<ChildRequest> {
  return new Promise((resolveReq, reject) => {
    let buf = "";
    let got = false;
    process.stdin.setEncoding("utf8");
    process.stdin.on("data", (chunk: string) => {
      if (got) return;
      buf += chunk;
      const i = buf.indexOf("\n");
      if (i < 0) return;
      got = true;
      try {
        resolveReq(JSON.parse(buf.slice(0, i)) as ChildRequest);
      } catch (e) {
        reject(e);
      }
    });
    // The worker keeps stdin open for as long as it lives: EOF means it died. Stop writing at once;
    // the runner's commits are atomic, and the next worker cleans up this run's temporaries.
    process.stdin.on("end", () => process.exit(got ? 137 : 2));
  });
}

async function runJob(): Promise<number> {
  const req = await readRequest();
  const settings: Settings = { ...req.settings, device: (req.device ?? req.settings.device) as Settings["device"] };
  const ac = new AbortController();
  let stopAfterStep = false;
  let current: string | null = null;
  const onTerm = () => {
    if (!stopAfterStep && current) {
      stopAfterStep = true;
      send({ fleet: 1, t: "log", line: `stopping after ${current} (SIGTERM)` });
    } else ac.abort("SIGTERM");
  };
  process.on("SIGTERM", onTerm);
  // Ctrl-C reaches the whole process group: the worker turns it into SIGTERMs, so that the first
  // one lets the step finish here too.
  process.on("SIGINT", () => {});

  const registry = getSteps();
  const total = registry.length;
  const pct = (i: number, frac: number) => Math.min(100, Math.floor((100 * (i + Math.min(1, frac))) / total));
  const indexOf = new Map(registry.map((s, i) => [s.name, i]));
  const steps: Step<Settings>[] = registry.map((s, i) => ({
    ...s,
    run: async (ctx) => {
      current = s.name;
      send({ fleet: 1, t: "step", step: s.name, percent: pct(i, 0) });
      try {
        if (s.name !== "publish" || !ctx.settings.publish) return await s.run(ctx);
        // Two workers never publish one target at once; the step's Hub-card check makes a repeat a no-op.
        return await withRedisLock(req.redisUrl, publishLockKey(ctx.settings), `${req.worker} pid ${process.pid}`, () => s.run(ctx), {
          onWait: (holder) => send({ fleet: 1, t: "log", line: `waiting for the publish lock (held by ${holder})` }),
        });
      } finally {
        current = null;
        if (stopAfterStep) ac.abort("SIGTERM");
      }
    },
  }));
  let lastPct = -1;
  const ui: RunnerUI = {
    info: (line) => send({ fleet: 1, t: "log", line }),
    stepLog: (step, msg) => send({ fleet: 1, t: "log", line: `[${step}] ${msg}` }),
    progress(step, _label, total_): ProgressHandle {
      let value = 0;
      return {
        tick(n = 1) {
          value += n;
          const p = pct(indexOf.get(step) ?? 0, total_ > 0 ? value / total_ : 1);
          if (p !== lastPct) {
            lastPct = p;
            send({ fleet: 1, t: "progress", percent: p });
          }
        },
        done() {},
      };
    },
    close() {},
  };

  try {
    const cap = maxBatch();
    if (cap !== null) send({ fleet: 1, t: "log", line: `batches of at most ${cap} rows (${MAX_BATCH_ENV}; results can differ from uncapped ones in the last float digits)` });
    checkSettingsPaths(settings);
    await checkPromptSetSizes(settings);
    checkPublishTarget(settings);
    checkRunDir(settings, steps, "run directory");
    const token = resolveToken(null, process.env);
    const outcome = await runPipeline({
      steps,
      settings,
      outDir: settings.out,
      from: publishFrom(settings, token, null),
      signal: ac.signal,
      ui,
      secrets: { hfToken: token },
      owner: realignRunDir(settings, "run directory"),
      removeCreatedDir: true,
    });
    const report = writeRunReport({ outDir: settings.out, run: outcome, base: { model: settings.model, revision: settings.revision, settings_hash: settingsHash(settings) } });
    if (outcome.gateFailed) {
      send({ fleet: 1, t: "failed", kind: "permanent", reason: `gate failed: ${outcome.gateFailed.join("; ")}` });
      return 3;
    }
    send({
      fleet: 1,
      t: "done",
      result: {
        out: settings.out,
        published: report.published?.repo ?? null,
        unpublished: checkPublishable(settings, token),
        work: outcome.steps.some((s) => s.status === "ran") ? "ran" : "up to date",
      },
    });
    return EXIT_OK;
  } catch (e) {
    if (e instanceof InterruptedError || ac.signal.aborted) {
      send({ fleet: 1, t: "stopped" });
      return 143;
    }
    const f = classifyFailure(e);
    send({ fleet: 1, t: "failed", kind: f.kind, reason: f.reason });
    return exitCodeFor(e);
  }
}

if (import.meta.main && process.argv.includes("--run-job")) {
  const code = await runJob().catch((e: unknown) => {
    send({ fleet: 1, t: "failed", kind: "transient", reason: e instanceof Error ? e.message : String(e) });
    return EXIT_FAILED;
  });
  process.exit(code);
}
