// The fleet's queue: what a job is, its id, enqueueing, job schedulers and the status table.
//
//   job id = <model slug>@<revision | "default">~<first 16 hex digits of settingsHash(settings)>
//
// settingsHash covers the model, its revision and every result-affecting setting, so the same model
// with the same settings maps to the same id (BullMQ ignores an add whose id exists: re-enqueueing is a
// no-op while the job is kept), and a changed setting is a new job. Job data is the resolved Settings
// with absolute paths, never a token (workers read their own HF_TOKEN). Schedulers (BullMQ
// upsertJobScheduler) are keyed by the model alone, so registering again, or from another machine,
// keeps one per model and a changed cron or setting updates it in place.
import { Queue, type Job, type JobsOptions } from "bullmq";
import { basename } from "node:path";
import { settingsHash, type Settings } from "../steps/settings.ts";
import { sha256Hex } from "../util/fs.ts";
import { connectionOptions } from "./redis.ts";

export const DEFAULT_QUEUE = "realign";
/** Job name of a realign run (the only kind of job on the queue). */
export const JOB_NAME = "realign-run";
const SCHEDULER_PREFIX = "sched~";

/** What a job carries: the run's settings (absolute paths) and where they came from. */
export interface FleetJobData {
  settings: Settings;
  /** The models.yaml they were resolved from (for the status table). */
  source: string;
  /**
   * Set by a worker after an attempt ran out of memory: the REALIGN_MAX_BATCH of the next attempt
   * (fleet/classify.ts nextBatchCap). Absent: batches as the pipeline chooses them.
   */
  maxBatch?: number;
}

/** What a finished job returns (the job's return value). */
export interface FleetJobResult {
  out: string;
  /** Published repo (or folder); null when not published (then `unpublished` says why). */
  published: string | null;
  unpublished: string | null;
  /** "up to date": every step was cached; "ran": at least one step ran. */
  work: "ran" | "up to date";
  worker: string;
}

/** What a worker reports into the job while it runs (job.progress). */
export interface FleetProgress {
  step: string;
  percent: number;
  /** When the step started (ISO). */
  since: string;
  worker: string;
  attempt: number;
}

export interface RetryPolicy {
  /** Tries in all (first run included). */
  attempts: number;
  /** First back-off delay (ms); doubled at each retry. */
  backoffMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, backoffMs: 30_000 };

/** A model name as a job-id part: "owner/name" → "owner--name"; a path → its last part. */
function slug(model: string): string {
  const raw = model.startsWith("/") || model.startsWith(".") || model.startsWith("~") ? basename(model) : model.replace("/", "--");
  return raw.replace(/[^A-Za-z0-9._-]+/g, "_") || "model";
}

/** The job id of a run (see the file's header). No ":" (BullMQ reserves it) and never an integer. */
export function jobIdFor(settings: Settings, hash = settingsHash(settings)): string {
  const rev = (settings.revision ?? "default").replace(/[^A-Za-z0-9._-]+/g, "_");
  return `${slug(settings.model)}@${rev}~${hash.slice(0, 16)}`;
}

/** The scheduler id of a model: stable across settings and crons, so upserting replaces. */
export function schedulerIdFor(model: string): string {
  return `${SCHEDULER_PREFIX}${slug(model)}~${sha256Hex(model).slice(0, 8)}`;
}

export function jobOptions(retry: RetryPolicy): JobsOptions {
  return {
    attempts: retry.attempts,
    backoff: { type: "exponential", delay: retry.backoffMs },
    // Kept so that re-enqueueing is a no-op and `realign queue` can show them.
    removeOnComplete: { age: 7 * 24 * 3600, count: 1000 },
    removeOnFail: { age: 30 * 24 * 3600, count: 1000 },
  };
}

export function openQueue(redisUrl: string, name: string): Queue<FleetJobData, FleetJobResult> {
  return new Queue<FleetJobData, FleetJobResult>(name, { connection: connectionOptions(redisUrl, "command") });
}

export type EnqueueOutcome =
  | { id: string; model: string; action: "added" }
  | { id: string; model: string; action: "exists"; state: string }
  | { id: string; model: string; action: "retried"; state: "failed" };

/**
 * Adds one job per entry; an id that exists is left alone (or, with retryFailed, a failed one is
 * retried). Entries are checked by the caller before any is added.
 */
export async function enqueueJobs(queue: Queue<FleetJobData, FleetJobResult>, jobs: readonly FleetJobData[], retry: RetryPolicy, opts: { retryFailed?: boolean } = {}): Promise<EnqueueOutcome[]> {
  const out: EnqueueOutcome[] = [];
  for (const data of jobs) {
    const id = jobIdFor(data.settings);
    const model = data.settings.model;
    const existing = await queue.getJob(id);
    if (existing) {
      const state = await existing.getState();
      if (state === "failed" && opts.retryFailed) {
        await existing.retry("failed");
        out.push({ id, model, action: "retried", state: "failed" });
      } else out.push({ id, model, action: "exists", state });
      continue;
    }
    // Two enqueuers racing still make one job: BullMQ ignores an add whose id exists.
    await queue.add(JOB_NAME, data, { ...jobOptions(retry), jobId: id });
    out.push({ id, model, action: "added" });
  }
  return out;
}

export interface ScheduleEntry {
  data: FleetJobData;
  /** Five-field cron (macros expanded). */
  cron: string;
  /** IANA time zone the cron is read in (the scheduling machine's). */
  tz: string;
}

export type ScheduleOutcome =
  | { id: string; model: string; action: "created"; cron: string; next: number | null }
  | { id: string; model: string; action: "updated"; cron: string; previous: string | null; next: number | null }
  | { id: string; model: string; action: "unchanged"; cron: string; next: number | null }
  | { id: string; model: string | null; action: "removed"; cron: string | null };

/**
 * Makes the queue's realign schedulers those of `entries`: upserts each (one per model), and removes
 * realign schedulers of models no longer listed (or disabled). Others' schedulers are not touched.
 */
export async function syncSchedulers(queue: Queue<FleetJobData, FleetJobResult>, entries: readonly ScheduleEntry[], retry: RetryPolicy): Promise<ScheduleOutcome[]> {
  const out: ScheduleOutcome[] = [];
  const before = new Map((await queue.getJobSchedulers(0, -1)).map((s) => [s.key, s]));
  const keep = new Set<string>();
  for (const e of entries) {
    const id = schedulerIdFor(e.data.settings.model);
    keep.add(id);
    const prev = before.get(id);
    const prevHash = prev?.template?.data ? jobIdFor((prev.template.data as FleetJobData).settings) : null;
    const same = prev !== undefined && prev.pattern === e.cron && prev.tz === e.tz && prevHash === jobIdFor(e.data.settings);
    const { removeOnComplete, removeOnFail, ...opts } = jobOptions(retry);
    const job = await queue.upsertJobScheduler(id, { pattern: e.cron, tz: e.tz }, { name: JOB_NAME, data: e.data, opts: { ...opts, removeOnComplete, removeOnFail } });
    const next = job?.timestamp !== undefined ? job.timestamp + (job.opts.delay ?? 0) : null;
    const model = e.data.settings.model;
    if (!prev) out.push({ id, model, action: "created", cron: e.cron, next });
    else if (same) out.push({ id, model, action: "unchanged", cron: e.cron, next });
    else out.push({ id, model, action: "updated", cron: e.cron, previous: prev.pattern ?? null, next });
  }
  for (const [key, s] of before) {
    if (!key.startsWith(SCHEDULER_PREFIX) || keep.has(key)) continue;
    await queue.removeJobScheduler(key);
    const model = (s.template?.data as FleetJobData | undefined)?.settings?.model ?? null;
    out.push({ id: key, model, action: "removed", cron: s.pattern ?? null });
  }
  return out;
}

// ---- the status table ------------------------------------------------------------------------------

export interface JobRow {
  id: string;
  model: string | null;
  state: "waiting" | "active" | "delayed" | "completed" | "failed";
  attempts_made: number;
  attempts: number;
  /** Active: which worker, which step, since when. */
  worker: string | null;
  step: string | null;
  percent: number | null;
  since: string | null;
  /** Failed: why (the last attempt's reason). */
  reason: string | null;
  /** Completed: where it was published. */
  published: string | null;
  finished: string | null;
}

export interface QueueStatus {
  queue: string;
  counts: Record<"waiting" | "active" | "delayed" | "completed" | "failed", number>;
  jobs: JobRow[];
  schedulers: { id: string; model: string | null; cron: string | null; tz: string | null; next: string | null }[];
}

const iso = (ms: number | undefined | null) => (typeof ms === "number" && Number.isFinite(ms) ? new Date(ms).toISOString() : null);

function rowOf(job: Job<FleetJobData, FleetJobResult>, state: JobRow["state"]): JobRow {
  const p = (job.progress && typeof job.progress === "object" ? job.progress : null) as Partial<FleetProgress> | null;
  const result = job.returnvalue as FleetJobResult | null | undefined;
  return {
    id: String(job.id),
    model: job.data?.settings?.model ?? null,
    state,
    attempts_made: job.attemptsMade,
    attempts: job.opts.attempts ?? 1,
    worker: state === "active" ? (p?.worker ?? job.processedBy ?? null) : state === "completed" ? (result?.worker ?? job.processedBy ?? null) : (job.processedBy ?? null),
    step: state === "active" ? (p?.step ?? null) : null,
    percent: state === "active" && typeof p?.percent === "number" ? p.percent : null,
    since: state === "active" ? (p?.since ?? iso(job.processedOn)) : null,
    reason: state === "failed" || (state === "delayed" && job.failedReason) ? job.failedReason || null : null,
    published: state === "completed" ? (result?.published ?? null) : null,
    finished: iso(job.finishedOn),
  };
}

/** Counts, and up to `limit` jobs per state (newest first), and the schedulers. */
export async function queueStatus(queue: Queue<FleetJobData, FleetJobResult>, limit = 20): Promise<QueueStatus> {
  const c = await queue.getJobCounts("waiting", "active", "delayed", "completed", "failed", "prioritized");
  const counts = {
    waiting: (c.waiting ?? 0) + (c.prioritized ?? 0),
    active: c.active ?? 0,
    delayed: c.delayed ?? 0,
    completed: c.completed ?? 0,
    failed: c.failed ?? 0,
  };
  const jobs: JobRow[] = [];
  for (const state of ["active", "waiting", "delayed", "failed", "completed"] as const) {
    const list = (await queue.getJobs(state === "waiting" ? ["waiting", "prioritized"] : [state], 0, limit - 1, false)) as Job<FleetJobData, FleetJobResult>[];
    for (const j of list) if (j) jobs.push(rowOf(j, state));
  }
  const schedulers = (await queue.getJobSchedulers(0, -1)).map((s) => ({
    id: s.key,
    model: (s.template?.data as FleetJobData | undefined)?.settings?.model ?? null,
    cron: s.pattern ?? null,
    tz: s.tz ?? null,
    next: iso(s.next),
  }));
  return { queue: queue.name, counts, jobs, schedulers };
}

/** The status as text lines. */
export function formatQueueStatus(st: QueueStatus, where: string): string[] {
  const c = st.counts;
  const lines = [`queue ${st.queue} on ${where}: ${c.waiting} waiting, ${c.active} active, ${c.delayed} delayed (retry back-off or scheduled), ${c.completed} completed, ${c.failed} failed; ${st.schedulers.length} scheduler(s)`];
  const section = (title: string, rows: JobRow[], cell: (r: JobRow) => string) => {
    if (!rows.length) return;
    lines.push(`${title}:`);
    const w = Math.max(...rows.map((r) => r.id.length));
    for (const r of rows) lines.push(`  ${r.id.padEnd(w)}  ${cell(r)}`.trimEnd());
  };
  const tries = (r: JobRow) => `attempt ${Math.max(1, r.attempts_made + (r.state === "active" ? 1 : 0))}/${r.attempts}`;
  section("active", st.jobs.filter((r) => r.state === "active"), (r) => `${r.worker ?? "?"}  ${r.step ?? "starting"}${r.percent !== null ? ` ${r.percent}%` : ""}  since ${r.since ?? "?"}  ${tries(r)}`);
  section("waiting", st.jobs.filter((r) => r.state === "waiting"), (r) => `${r.model ?? ""}`);
  section("delayed", st.jobs.filter((r) => r.state === "delayed"), (r) => `${r.model ?? ""}  ${r.attempts_made ? `${tries(r)}, last: ${r.reason ?? "?"}` : "scheduled"}`);
  section("failed", st.jobs.filter((r) => r.state === "failed"), (r) => `${tries(r)}: ${r.reason ?? "?"}`);
  section("completed", st.jobs.filter((r) => r.state === "completed"), (r) => `${r.worker ?? "?"}  ${r.finished ?? ""}  ${r.published ? `published ${r.published}` : "not published"}`);
  if (st.schedulers.length) {
    lines.push("schedulers:");
    const w = Math.max(...st.schedulers.map((s) => s.id.length));
    for (const s of st.schedulers) lines.push(`  ${s.id.padEnd(w)}  "${s.cron ?? "?"}"${s.tz ? ` (${s.tz})` : ""}  next ${s.next ?? "?"}  ${s.model ?? ""}`.trimEnd());
  }
  return lines;
}
