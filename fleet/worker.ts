// `realign worker`'s engine: a BullMQ worker that runs each job's pipeline in a child process.
//
// Why a child: onnxruntime-node's session.run() is synchronous native code (its promise wraps a
// blocking call in setImmediate), so a forward pass in the worker's own thread would stall BullMQ's
// lock renewal for as long as it lasts, and a long one would let another worker take the job while it
// still runs. The worker process only relays: it keeps the job's lock alive, writes the child's step
// and percent into the job's progress and its log lines into the job's log, and turns the child's
// last message into the job's outcome:
//
//   done     → completed, with FleetJobResult
//   failed   → permanent: UnrecoverableError (failed now, with the reason); transient: retried with
//              the job's exponential back-off
//   stopped  → moved back to wait (SIGTERM: the current step finished; no attempt is used up)
//   nothing  → the child died (killed, out of memory): transient
//
// Out of memory (classify.ts ranOutOfMemory: the child's reason starts with "out of memory", or the
// child was killed by a SIGKILL its worker did not send) also halves the batch: the next attempt's
// cap (nextBatchCap) is stored in the job's data (maxBatch) and logged, and whichever worker runs that
// attempt gives its child REALIGN_MAX_BATCH (engine/batch-cap.ts). The cap stays for later attempts.
//
// Protocol: the worker writes one ChildRequest JSON line to the child's stdin and keeps stdin open;
// the child answers with ChildMessage JSON lines (`"fleet":1`) on stdout, anything else on stdout or
// stderr is relayed as log text. The child exits when its stdin closes (the worker died, even by
// SIGKILL), so an orphan never keeps writing a run directory that another worker has taken over.
// A job whose lock renewal failed has its child killed for the same reason.
import { UnrecoverableError, WaitingError, Worker, type Job } from "bullmq";
import type { Subprocess } from "bun";
import type { Settings } from "../steps/settings.ts";
import { maxBatch, MAX_BATCH_ENV } from "../engine/batch-cap.ts";
import { childDiedReason, nextBatchCap, ranOutOfMemory, type FailureKind } from "./classify.ts";
import type { FleetJobData, FleetJobResult, FleetProgress } from "./jobs.ts";
import { connectionOptions } from "./redis.ts";

export interface ChildRequest {
  settings: Settings;
  jobId: string;
  attempt: number;
  worker: string;
  redisUrl: string;
  /** The worker's --device, which replaces the job's (device is not part of the settings hash). */
  device: string | null;
}

export type ChildMessage =
  | { fleet: 1; t: "step"; step: string; percent: number }
  | { fleet: 1; t: "progress"; percent: number }
  | { fleet: 1; t: "log"; line: string }
  | { fleet: 1; t: "done"; result: Omit<FleetJobResult, "worker"> }
  | { fleet: 1; t: "failed"; kind: FailureKind; reason: string }
  | { fleet: 1; t: "stopped" };

/** One protocol line (the child writes it to stdout). */
export function encodeChildMessage(m: ChildMessage): string {
  return JSON.stringify(m) + "\n";
}

export function parseChildMessage(line: string): ChildMessage | null {
  if (!line.startsWith('{"fleet":1')) return null;
  try {
    const m = JSON.parse(line) as ChildMessage;
    return m && m.fleet === 1 && typeof m.t === "string" ? m : null;
  } catch {
    return null;
  }
}

export interface FleetWorkerOptions {
  redisUrl: string;
  queue: string;
  /** This worker's name in progress, logs and the status table. */
  name: string;
  concurrency: number;
  device: string | null;
  /** BullMQ's job lock: how long a job stays taken without renewal (a killed worker's job waits this long). */
  lockDurationMs: number;
  /** How often stalled jobs (lock expired) are looked for and moved back to wait. */
  stalledIntervalMs: number;
  /** argv of the process that runs one job (reads a ChildRequest line on stdin). */
  childArgv: string[];
  env?: Record<string, string | undefined>;
  log: (line: string) => void;
}

export interface FleetWorker {
  /** First call: every child finishes its current step, its job goes back to wait; second call: children stop now. Resolves when the worker has closed. */
  stop(): Promise<void>;
  /** Resolves when the worker has closed. */
  closed: Promise<void>;
}

export async function startWorker(opts: FleetWorkerOptions): Promise<FleetWorker> {
  const children = new Map<string, Subprocess<"pipe", "pipe", "pipe">>();
  const lost = new Set<string>();
  const log = opts.log;
  // A cap in the worker's own environment applies to every job (and is halved from on out of memory).
  const baseCap = maxBatch(opts.env ?? process.env);

  const processor = async (job: Job<FleetJobData, FleetJobResult>, token?: string): Promise<FleetJobResult> => {
    const id = String(job.id);
    const attempt = job.attemptsMade + 1;
    const attempts = job.opts.attempts ?? 1;
    const settings = job.data?.settings;
    if (!settings || typeof settings.model !== "string" || typeof settings.out !== "string") throw new UnrecoverableError("the job carries no realign settings (was it added by realign enqueue?)");
    const jobCap = typeof job.data.maxBatch === "number" && Number.isInteger(job.data.maxBatch) && job.data.maxBatch >= 1 ? job.data.maxBatch : null;
    const cap = jobCap ?? baseCap;
    const env = { ...(opts.env ?? process.env), ...(cap !== null ? { [MAX_BATCH_ENV]: String(cap) } : {}) };
    const child = Bun.spawn(opts.childArgv, { stdin: "pipe", stdout: "pipe", stderr: "pipe", env });
    children.set(id, child);
    const request: ChildRequest = {
      settings,
      jobId: id,
      attempt,
      worker: opts.name,
      redisUrl: opts.redisUrl,
      device: opts.device,
    };
    child.stdin.write(JSON.stringify(request) + "\n");
    await child.stdin.flush();
    log(`job ${id} started by ${opts.name} (attempt ${attempt}/${attempts}, pid ${child.pid}): ${settings.model} → ${settings.out}`);
    await job.log(`${opts.name}: attempt ${attempt}/${attempts} started, pid ${child.pid}`);
    if (jobCap !== null) {
      const line = `retrying with batches of at most ${jobCap} after running out of memory (${MAX_BATCH_ENV}=${jobCap})`;
      log(`job ${id}: ${line}`);
      await job.log(line);
    }
    /** After running out of memory: the next attempt's cap, in the job's data and both logs. */
    const halveBatch = async (reason: string) => {
      if (!ranOutOfMemory(reason)) return;
      const next = nextBatchCap(reason, cap)!;
      // Without Redis the job's own failure is still what matters: the next attempt keeps the cap it had.
      await job.updateData({ ...job.data, maxBatch: next }).catch((e: Error) => log(`job ${id}: could not record the batch cap: ${e.message}`));
      if (attempt >= attempts) return;
      const line = `retrying with batches of at most ${next} after running out of memory (${MAX_BATCH_ENV}=${next}${cap !== null ? `, was ${cap}` : ""})`;
      log(`job ${id}: ${line}`);
      await job.log(line);
    };

    let final: ChildMessage | null = null;
    let progress: FleetProgress = {
      step: "starting",
      percent: 0,
      since: new Date().toISOString(),
      worker: opts.name,
      attempt,
    };
    let pending = Promise.resolve();
    /** Redis writes in order, none lost, none blocking the reader. */
    const queued = (f: () => Promise<unknown>) => (pending = pending.then(f).then(() => undefined, () => undefined));
    queued(() => job.updateProgress(progress));
    const onLine = (line: string, stream: "stdout" | "stderr") => {
      const m = stream === "stdout" ? parseChildMessage(line) : null;
      if (!m) {
        if (line.trim()) log(`[${id}] ${line}`);
        return;
      }
      if (m.t === "step") {
        progress = { ...progress, step: m.step, percent: m.percent, since: new Date().toISOString() };
        const p = progress;
        queued(() => job.updateProgress(p));
        queued(() => job.log(`step ${m.step}`));
      } else if (m.t === "progress") {
        if (m.percent === progress.percent) return;
        progress = { ...progress, percent: m.percent };
        const p = progress;
        queued(() => job.updateProgress(p));
      } else if (m.t === "log") {
        log(`[${id}] ${m.line}`);
        queued(() => job.log(m.line));
      } else final = m;
    };
    await Promise.all([readLines(child.stdout, (l) => onLine(l, "stdout")), readLines(child.stderr, (l) => onLine(l, "stderr"))]);
    const code = await child.exited;
    children.delete(id);
    await pending;
    const end = final as ChildMessage | null;
    if (lost.has(id)) {
      lost.delete(id);
      throw new Error(`${opts.name} lost the job's lock; its run was stopped and the job is another worker's now`);
    }
    if (end?.t === "done") {
      log(`job ${id} completed by ${opts.name}${end.result.published ? `: published ${end.result.published}` : ""}`);
      return { ...end.result, worker: opts.name };
    }
    if (end?.t === "failed") {
      log(`job ${id} failed (${end.kind}, attempt ${attempt}/${attempts}): ${end.reason}`);
      if (end.kind === "permanent") throw new UnrecoverableError(end.reason);
      await halveBatch(end.reason);
      throw new Error(end.reason);
    }
    if (end?.t === "stopped") {
      log(`job ${id} released by ${opts.name} (stopping); another worker continues from the last finished step`);
      await job.moveToWait(token);
      throw new WaitingError();
    }
    const how = child.signalCode ? `killed by ${child.signalCode}` : `exit code ${code}`;
    log(`job ${id}: the run's process ended without a result (${how})`);
    const reason = childDiedReason(how);
    await halveBatch(reason);
    throw new Error(reason);
  };

  const worker = new Worker<FleetJobData, FleetJobResult>(opts.queue, processor, {
    connection: connectionOptions(opts.redisUrl, "worker"),
    name: opts.name,
    concurrency: opts.concurrency,
    lockDuration: opts.lockDurationMs,
    stalledInterval: opts.stalledIntervalMs,
    // A job whose worker died twice still gets a third worker; more is a pattern, not bad luck.
    maxStalledCount: 2,
    autorun: false,
  });
  worker.on("error", (e) => log(`worker error: ${e.message}`));
  worker.on("lockRenewalFailed", (ids) => {
    for (const id of ids) {
      const c = children.get(id);
      if (!c) continue;
      lost.add(id);
      log(`job ${id}: lock renewal failed; stopping its run (another worker may take it)`);
      c.kill("SIGKILL");
    }
  });
  worker.on("failed", (job, err) => {
    if (job && !(err instanceof UnrecoverableError) && job.attemptsMade < (job.opts.attempts ?? 1) && err.name !== "WaitingError") {
      log(`job ${job.id}: will retry (${job.attemptsMade}/${job.opts.attempts} attempts made)`);
    }
  });
  await worker.waitUntilReady();
  const closed = worker.run().then(() => undefined);

  let stops = 0;
  return {
    closed,
    async stop() {
      stops++;
      for (const c of children.values()) c.kill("SIGTERM");
      if (stops === 1) {
        await worker.close();
        await closed;
      }
    },
  };
}

async function readLines(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += decoder.decode(chunk, { stream: true });
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  }
  if (buf) onLine(buf);
}
