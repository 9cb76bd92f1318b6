// DVC-like step runner. Each step's input hash covers the settings it reads and its upstream
// hashes; a step whose committed folder carries the same hash (and intact outputs) is skipped.
//
// Crash safety: a step writes into <out>/.tmp-<step>-<random>/. When it returns, the runner writes
// .done.json + report-part.json there, fsyncs, moves any old <out>/<step> aside and renames the tmp
// dir into place. That rename is the commit point: a SIGKILL before it leaves only .tmp-* litter
// (deleted on the next start) and the step re-runs; after it the step is done.
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { join } from "node:path";
import { GateFailedError, InterruptedError, StepFailedError } from "./errors.ts";
import { UsageError } from "../util/errors.ts";
import { atomicWriteJson, canonicalJson, fsyncDir, fsyncTree, pathSize, randomSuffix, removePath, sha256Hex } from "../util/fs.ts";
import { formatSeconds, memoryUI, type ProgressHandle, type RunnerUI } from "./progress.ts";

export type { ProgressHandle, RunnerUI } from "./progress.ts";
/** What a step contributes to the run's report: a JSON object the runner stores and hands back, unread. */
export type ReportPart = Record<string, unknown>;

/** Secrets a step may need (e.g. a Hub token) but that never enter settings, hashes or files. */
export type StepSecrets = Readonly<Record<string, string | null>>;

/** A committed step's report part. */
export interface StepPart {
  step: string;
  part: ReportPart | null;
}

export interface StepContext<S> {
  settings: S;
  /** The run directory (<out>). */
  outDir: string;
  /** Where this step's outputs will live once committed (<out>/<step>). Do not write here. */
  stepDir: string;
  /** Where the step writes its outputs; renamed to stepDir when the step returns. */
  tmpDir: string;
  /** Final folder of a completed upstream step; it must be listed in `deps`. */
  upstream(name: string): string;
  log(msg: string): void;
  progress(label: string, total: number): ProgressHandle;
  /** Aborted on Ctrl-C; long loops should check it (or pass it on) and stop. */
  signal: AbortSignal;
  secrets: StepSecrets;
  /** The report parts of the committed upstream steps listed in `deps`, in run order. */
  reportParts(): StepPart[];
  /** --force was given: besides re-running every step, a failed gate does not stop publishing. */
  forced: boolean;
}

export interface StepResult {
  /** Fields this step contributes to report.json (merged in step order; objects merge key by key). */
  report?: ReportPart;
}

export interface Step<S> {
  name: string;
  /** The settings subset the step depends on; any change re-runs it (and its dependants). */
  inputs(settings: S): Record<string, unknown>;
  /** Upstream step names whose outputs this step reads (must come earlier in the list). */
  deps: string[];
  /** File/dir names the step produces inside its folder; all must exist when it returns. */
  outputs: string[];
  /** Bump to invalidate cached results after a change in the step's code. */
  version?: string | number;
  run(ctx: StepContext<S>): Promise<StepResult | void>;
}

export interface OutputRecord {
  name: string;
  kind: "file" | "dir";
  bytes: number;
}

/** Contents of <out>/<step>/.done.json. */
export interface DoneRecord {
  step: string;
  hash: string;
  started: string;
  finished: string;
  seconds: number;
  outputs: OutputRecord[];
  /** Reasons when the step committed a failed gate verdict; null otherwise. */
  gate_failed: string[] | null;
}

export const DONE_FILE = ".done.json";
export const PART_FILE = "report-part.json";
const RESERVED = new Set([DONE_FILE, PART_FILE]);

export interface PlanOptions {
  /** Re-run this step and every later one. */
  from?: string | null;
  /** Re-run everything. */
  force?: boolean;
}

export interface PlannedStep {
  name: string;
  hash: string;
  action: "run" | "cached";
  /** Why it runs ("settings changed", "outputs missing: x") or "up to date". */
  reason: string;
}

export interface RunOptions<S> extends PlanOptions {
  steps: readonly Step<S>[];
  settings: S;
  outDir: string;
  signal?: AbortSignal;
  ui?: RunnerUI;
  secrets?: StepSecrets;
  /** How long to wait for a step to notice an abort before giving up on it (ms). */
  abortGraceMs?: number;
}

export interface StepOutcome {
  name: string;
  status: "ran" | "cached";
  seconds: number;
  hash: string;
}

export interface RunOutcome {
  /** Every step's report part, in step order (cached steps' parts too), up to where the run stopped. */
  parts: StepPart[];
  /** Seconds per step (a cached step: the time it took when it ran), and `total` for this run. */
  timings: Record<string, number>;
  steps: StepOutcome[];
  /** Gate failure reasons when a step returned a failed verdict (exit code 3); null when it passed or had no gate. */
  gateFailed: string[] | null;
}

/** Checks the step list itself: unique names, deps point backwards, sane output names. Programming errors. */
export function validateSteps<S>(steps: readonly Step<S>[]): void {
  const seen = new Set<string>();
  for (const s of steps) {
    if (!/^[a-z][a-z0-9_-]*$/.test(s.name)) throw new Error(`invalid step name "${s.name}"`);
    if (seen.has(s.name)) throw new Error(`duplicate step name "${s.name}"`);
    for (const d of s.deps) if (!seen.has(d)) throw new Error(`step ${s.name} depends on "${d}", which is not an earlier step`);
    for (const o of s.outputs) {
      if (!o || o.startsWith("/") || o.split(/[\\/]/).some((p) => p === ".." || p === "") || RESERVED.has(o)) {
        throw new Error(`step ${s.name} declares an invalid output name "${o}"`);
      }
    }
    seen.add(s.name);
  }
}

/** Checks `--from` against the step list; a usage error names the valid steps. */
export function checkFrom<S>(steps: readonly Step<S>[], from: string | null | undefined): void {
  if (from == null) return;
  if (!steps.some((s) => s.name === from)) {
    throw new UsageError(`--from: unknown step "${from}" (steps: ${steps.map((s) => s.name).join(", ")})`);
  }
}

export function stepHash<S>(step: Step<S>, settings: S, depHashes: Readonly<Record<string, string>>): string {
  const deps: Record<string, string> = {};
  for (const d of step.deps) {
    const h = depHashes[d];
    if (h === undefined) throw new Error(`step ${step.name}: hash of dependency ${d} unknown`);
    deps[d] = h;
  }
  return sha256Hex(canonicalJson({ step: step.name, version: step.version ?? null, inputs: step.inputs(settings), deps }));
}

export function readDoneRecord(stepDir: string): DoneRecord | null {
  try {
    const rec = JSON.parse(readFileSync(join(stepDir, DONE_FILE), "utf8")) as Partial<DoneRecord>;
    if (typeof rec.hash !== "string" || !Array.isArray(rec.outputs) || typeof rec.seconds !== "number") return null;
    return { gate_failed: null, ...rec } as DoneRecord;
  } catch {
    return null;
  }
}

function readPart(stepDir: string): ReportPart | null {
  try {
    return JSON.parse(readFileSync(join(stepDir, PART_FILE), "utf8")) as ReportPart;
  } catch {
    return null;
  }
}

/** Outputs recorded in .done.json that are missing or changed size, by name. */
function damagedOutputs(stepDir: string, rec: DoneRecord, declared: readonly string[]): string[] {
  const bad: string[] = [];
  const recorded = new Map(rec.outputs.map((o) => [o.name, o]));
  for (const name of declared) {
    const want = recorded.get(name);
    const got = pathSize(join(stepDir, name));
    if (!want || !got || got.kind !== want.kind || got.bytes !== want.bytes) bad.push(name);
  }
  return bad;
}

/** What a run would do, without doing it (also used by `batch` to skip finished models). */
export function planRun<S>(steps: readonly Step<S>[], settings: S, outDir: string, opts: PlanOptions = {}): PlannedStep[] {
  validateSteps(steps);
  checkFrom(steps, opts.from);
  const hashes: Record<string, string> = {};
  const willRun = new Set<string>();
  const fromIdx = opts.from ? steps.findIndex((s) => s.name === opts.from) : -1;
  return steps.map((step, i) => {
    const hash = stepHash(step, settings, hashes);
    hashes[step.name] = hash;
    const stepDir = join(outDir, step.name);
    let reason: string | null = null;
    if (opts.force) reason = "forced (--force)";
    else if (fromIdx >= 0 && i >= fromIdx) reason = `forced (--from ${opts.from})`;
    else {
      const rec = readDoneRecord(stepDir);
      const upstream = step.deps.find((d) => willRun.has(d));
      if (!rec) reason = existsSync(stepDir) ? "previous result incomplete" : "not run yet";
      else if (rec.hash !== hash) reason = "inputs changed";
      else if (upstream) reason = `upstream ${upstream} re-runs`;
      else {
        const bad = damagedOutputs(stepDir, rec, step.outputs);
        if (bad.length) reason = `outputs missing or changed: ${bad.join(", ")}`;
      }
    }
    if (reason) willRun.add(step.name);
    return { name: step.name, hash, action: reason ? "run" : "cached", reason: reason ?? "up to date" };
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** One run per out dir at a time; a lock left by a killed run (dead pid) is taken over. */
function acquireLock(outDir: string): () => void {
  const path = join(outDir, ".lock");
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, "wx");
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const pid = Number.parseInt(readFileSync(path, "utf8").trim(), 10);
      if (Number.isFinite(pid) && pid > 0 && pidAlive(pid)) {
        throw new UsageError(`another realign run (pid ${pid}) is using ${outDir}; wait for it, or delete ${path} if that process is not realign`);
      }
      rmSync(path, { force: true });
    }
  }
  throw new Error(`could not lock ${outDir}`);
}

/** Delete what killed runs left behind: .tmp-* step folders and half-written atomic files. */
export function cleanLeftovers(outDir: string): string[] {
  const removed: string[] = [];
  if (!existsSync(outDir)) return removed;
  for (const name of readdirSync(outDir)) {
    if (name.startsWith(".tmp-") || (name.startsWith(".") && name.endsWith(".tmp"))) {
      removePath(join(outDir, name));
      removed.push(name);
    }
  }
  return removed;
}

/** Resolves with the step's promise, or rejects once the signal fired and the step did not stop within graceMs. */
function withAbort<T>(p: Promise<T>, signal: AbortSignal, graceMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let timer: ReturnType<typeof setTimeout> | null = null;
    const onAbort = () => {
      timer = setTimeout(() => reject(new InterruptedError(String(signal.reason ?? "SIGINT"))), graceMs);
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    const cleanup = () => {
      if (timer) clearTimeout(timer);
      signal.removeEventListener("abort", onAbort);
    };
    p.then(
      (v) => (cleanup(), resolve(v)),
      (e) => (cleanup(), reject(e)),
    );
  });
}

function interrupted(signal: AbortSignal): InterruptedError {
  const reason: unknown = signal.reason;
  return new InterruptedError(typeof reason === "string" ? reason : "SIGINT");
}

/** Rename tmp → stepDir, replacing an old result. Moving the old one aside keeps every instant consistent. */
function commitStepDir(tmp: string, stepDir: string, outDir: string, name: string): void {
  let old: string | null = null;
  if (existsSync(stepDir)) {
    old = join(outDir, `.tmp-${name}-old-${randomSuffix()}`);
    renameSync(stepDir, old);
  }
  renameSync(tmp, stepDir);
  fsyncDir(outDir);
  if (old) removePath(old);
}

/**
 * Runs the steps in order, skipping those whose results are current. Writes <out>/settings.json at
 * the start; returns the steps' report parts and timings (the application writes its report from them).
 * Throws StepFailedError (a step threw), InterruptedError (signal), UsageError (out dir locked).
 */
export async function runPipeline<S>(opts: RunOptions<S>): Promise<RunOutcome> {
  const { steps, settings, outDir } = opts;
  const ui = opts.ui ?? memoryUI();
  const signal = opts.signal ?? new AbortController().signal;
  const graceMs = opts.abortGraceMs ?? 5000;
  validateSteps(steps);
  checkFrom(steps, opts.from);

  mkdirSync(outDir, { recursive: true });
  const release = acquireLock(outDir);
  try {
    const removed = cleanLeftovers(outDir);
    if (removed.length) ui.info(`removed ${removed.length} unfinished step folder(s) from an interrupted run`);
    atomicWriteJson(join(outDir, "settings.json"), settings);

    const plan = planRun(steps, settings, outDir, opts);
    const parts: StepPart[] = [];
    const timings: Record<string, number> = {};
    const outcomes: StepOutcome[] = [];
    let gateFailed: string[] | null = null;
    const runStart = performance.now();

    for (const [i, step] of steps.entries()) {
      const planned = plan[i]!;
      if (signal.aborted) throw interrupted(signal);
      const stepDir = join(outDir, step.name);

      if (planned.action === "cached") {
        const rec = readDoneRecord(stepDir)!;
        parts.push({ step: step.name, part: readPart(stepDir) });
        timings[step.name] = rec.seconds;
        outcomes.push({ name: step.name, status: "cached", seconds: rec.seconds, hash: planned.hash });
        ui.info(`${step.name}: up to date (took ${formatSeconds(rec.seconds)}, finished ${rec.finished})${rec.gate_failed ? "; its gate verdict: failed" : ""}`);
        if (rec.gate_failed) {
          gateFailed = rec.gate_failed;
          break;
        }
        continue;
      }

      ui.info(`${step.name}: running (${planned.reason})`);
      const tmp = join(outDir, `.tmp-${step.name}-${randomSuffix()}`);
      mkdirSync(tmp);
      const started = new Date();
      const t0 = performance.now();
      const handles: ProgressHandle[] = [];
      const ctx: StepContext<S> = {
        settings,
        outDir,
        stepDir,
        tmpDir: tmp,
        upstream(name) {
          if (!step.deps.includes(name)) throw new Error(`step ${step.name} reads upstream "${name}" but does not list it in deps`);
          return join(outDir, name);
        },
        log: (msg) => ui.stepLog(step.name, msg),
        progress(label, total) {
          const h = ui.progress(step.name, label, total);
          handles.push(h);
          return h;
        },
        signal,
        secrets: opts.secrets ?? {},
        reportParts: () => parts.filter((p) => step.deps.includes(p.step)),
        forced: opts.force === true,
      };

      let result: StepResult | void = undefined;
      let gateErr: GateFailedError | null = null;
      try {
        result = await withAbort(step.run(ctx), signal, graceMs);
      } catch (err) {
        if (err instanceof GateFailedError) gateErr = err;
        else {
          removePath(tmp);
          if (signal.aborted || err instanceof InterruptedError) throw interrupted(signal);
          throw new StepFailedError(step.name, err);
        }
      } finally {
        for (const h of handles) h.done();
      }

      // A step that finished just as Ctrl-C arrived is complete: commit it, then stop at the loop top.
      const outputs: OutputRecord[] = [];
      const missing: string[] = [];
      for (const name of step.outputs) {
        const size = pathSize(join(tmp, name));
        if (size) outputs.push({ name, ...size });
        else missing.push(name);
      }
      if (missing.length) {
        removePath(tmp);
        const cause = new Error(`did not write its declared output(s): ${missing.join(", ")}`);
        throw new StepFailedError(step.name, gateErr ? new GateFailedError([...gateErr.reasons, cause.message]) : cause);
      }
      const seconds = (performance.now() - t0) / 1000;
      let part: ReportPart | null = result?.report ?? null;
      if (gateErr?.report) part = { ...(part ?? {}), ...gateErr.report };
      const rec: DoneRecord = {
        step: step.name,
        hash: planned.hash,
        started: started.toISOString(),
        finished: new Date().toISOString(),
        seconds: Math.round(seconds * 1000) / 1000,
        outputs,
        gate_failed: gateErr ? gateErr.reasons : null,
      };
      atomicWriteJson(join(tmp, PART_FILE), part ?? {});
      atomicWriteJson(join(tmp, DONE_FILE), rec);
      fsyncTree(tmp);
      commitStepDir(tmp, stepDir, outDir, step.name);

      parts.push({ step: step.name, part });
      timings[step.name] = rec.seconds;
      outcomes.push({ name: step.name, status: "ran", seconds: rec.seconds, hash: planned.hash });
      ui.info(`${step.name}: done in ${formatSeconds(seconds)}`);
      if (gateErr) {
        gateFailed = gateErr.reasons;
        break;
      }
    }

    if (signal.aborted) throw interrupted(signal);
    timings.total = Math.round(((performance.now() - runStart) / 1000) * 1000) / 1000;
    return { parts, timings, steps: outcomes, gateFailed };
  } finally {
    ui.close();
    release();
  }
}
