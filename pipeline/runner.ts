// DVC-like step runner. Each step's input hash covers the settings it reads and its upstream
// hashes; a step whose committed folder carries the same hash (and intact outputs) is skipped.
//
// Crash safety: a step writes into <out>/.tmp-<step>-<random>/. When it returns, the runner writes
// .done.json + report-part.json there, fsyncs, moves any old <out>/<step> aside and renames the tmp
// dir into place. That rename is the commit point: a SIGKILL before it leaves only .tmp-* litter
// (deleted on the next start) and the step re-runs; after it the step is done.
//
// Ownership: the runner writes only into a run directory that is new, empty, or carries its marker
// (<out>/.realign-run); a marker-less directory is adopted only when it holds nothing but what an
// earlier run writes (settings.json that the application recognises, step folders, report files).
// Anything else is refused (RunDirError) before a byte is written. The names of the temporaries a run
// creates are appended to a ledger (<marker>.ledger) before they are created, and start-up clean-up
// removes exactly those, never a glob over the user's names. A run that fails before committing any
// step removes the marker it wrote; settings.json is written only once a step commits (or every step
// is up to date), so a refused run never leaves settings behind. The marker's name and the files the
// application writes besides the steps come from RunOptions.owner (DEFAULT_OWNER: realign's).
import { appendFileSync, closeSync, existsSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, statSync, writeFileSync, writeSync, type Stats } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { GateFailedError, InterruptedError, RunDirError, StepFailedError } from "./errors.ts";
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
  /**
   * Asks the person at the terminal (the question's lines, then their answer line); absent when nobody
   * can be asked (not a TTY, --yes, batch, fleet, tests): the step then takes its default.
   */
  ask?: AskUser;
}

/** One question to the user: prints `question`, resolves with the line typed (null: end of input). */
export type AskUser = (question: string) => Promise<string | null>;

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
  /** Whose run directory this is and what the application writes in it (default: DEFAULT_OWNER). */
  owner?: RunDirOwner;
  /**
   * Go on past a done step whose gate failed instead of stopping there (`realign publish --force` runs
   * the steps such a run never reached); the outcome still reports the failed gate.
   */
  pastFailedGate?: boolean;
  /**
   * When the run fails before committing any step, also remove the folders this call created for
   * the run directory (the CLI: a refused run leaves nothing behind). Default false: the empty
   * directory stays.
   */
  removeCreatedDir?: boolean;
  /** Handed to every step as `ctx.ask` (StepContext): only when someone at a terminal can answer. */
  ask?: AskUser;
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

/** A step folder's .done.json, or null when it is missing or not one the runner wrote (then the step re-runs). */
export function readDoneRecord(stepDir: string): DoneRecord | null {
  let rec: unknown;
  try {
    rec = JSON.parse(readFileSync(join(stepDir, DONE_FILE), "utf8"));
  } catch {
    return null;
  }
  if (rec === null || typeof rec !== "object" || Array.isArray(rec)) return null;
  const r = rec as Record<string, unknown>;
  if (typeof r.hash !== "string" || typeof r.seconds !== "number" || !Number.isFinite(r.seconds) || !Array.isArray(r.outputs)) return null;
  const outputs: OutputRecord[] = [];
  for (const o of r.outputs as unknown[]) {
    const x = o as Partial<OutputRecord> | null;
    if (!x || typeof x !== "object" || typeof x.name !== "string" || (x.kind !== "file" && x.kind !== "dir") || typeof x.bytes !== "number") return null;
    outputs.push({ name: x.name, kind: x.kind, bytes: x.bytes });
  }
  const gate = r.gate_failed;
  return {
    step: typeof r.step === "string" ? r.step : "",
    hash: r.hash,
    started: typeof r.started === "string" ? r.started : "",
    finished: typeof r.finished === "string" ? r.finished : "",
    seconds: r.seconds,
    outputs,
    gate_failed: Array.isArray(gate) ? gate.map(String) : null,
  };
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
function acquireLock(outDir: string, tool: string): () => void {
  const path = join(outDir, LOCK_FILE);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = openSync(path, "wx");
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw new RunDirError(outDir, `cannot write into ${outDir}: ${errText(err)}`);
      let text = "";
      try {
        text = readFileSync(path, "utf8");
      } catch {
        throw new RunDirError(outDir, `${path} is in the way of the run lock (it is not a file ${tool} wrote); remove it`);
      }
      const pid = Number.parseInt(text.trim(), 10);
      if (Number.isFinite(pid) && pid > 0 && pidAlive(pid)) {
        throw new UsageError(`another ${tool} run (pid ${pid}) is using ${outDir}; wait for it, or delete ${path} if that process is not ${tool}`);
      }
      rmSync(path, { force: true });
    }
  }
  throw new Error(`could not lock ${outDir}`);
}

// ---- the run directory: whose it is, and the temporaries it holds -----------------------------------

/** Who a run directory belongs to, and what the application writes at its top level besides the steps. */
export interface RunDirOwner {
  /** Marker file the runner writes into a run directory it creates or adopts. */
  marker: string;
  /** The application's name, for messages. */
  tool: string;
  /** How the user names the directory ("--out"), for messages. */
  label: string;
  /** Recorded in the marker next to its format (e.g. the model the directory was made for). */
  meta?: Readonly<Record<string, string | number | boolean | null>>;
  /** Top-level files or folders the application writes itself; accepted when adopting a directory made before markers. */
  appNames: readonly (string | RegExp)[];
  /** Whether a marker-less directory's settings.json holds this application's settings (adoption of earlier runs). */
  isOwnSettings(value: unknown): boolean;
}

/** The marker's format; a directory whose marker says more was made by a newer version and is refused. */
export const RUN_DIR_FORMAT = 1;
const SETTINGS_FILE = "settings.json";
const LOCK_FILE = ".lock";

export const DEFAULT_OWNER: RunDirOwner = {
  marker: ".realign-run",
  tool: "realign",
  label: "run directory",
  // report/build.ts writeRunReport, which every caller of the runner uses, writes these two.
  appNames: ["report.json", "report.md"],
  isOwnSettings: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
};

export interface RunDirClaim {
  /** The run directory, absolute. */
  dir: string;
  /** new: does not exist yet; empty; marked: carries the marker; adopted: an earlier run's, without a marker. */
  state: "new" | "empty" | "marked" | "adopted";
  /** For a new directory: the top-most folder that creating it makes (removed again with removeCreatedDir). */
  creates: string | null;
  /** An adopted earlier run's temporaries (its exact step-temporary and half-written-file names), removed at start. */
  leftovers: string[];
}

const ledgerName = (owner: RunDirOwner) => `${owner.marker}.ledger`;
const reEscape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
/** The runner's step temporaries: .tmp-<step>-<hex> and, while a result is replaced, .tmp-<step>-old-<hex>. */
const STEP_TEMP_RE = /^\.tmp-[a-z][a-z0-9_-]*?-(?:old-)?[0-9a-f]{8,}$/;
const stepTempName = (step: string, old: boolean) => `.tmp-${step}-${old ? "old-" : ""}${randomSuffix()}`;

/** util/fs atomicWriteFile's half-written copy of one of the run's own files: .<name>.<hex>.tmp. */
function atomicTempRe(owner: RunDirOwner): RegExp {
  const files = [SETTINGS_FILE, owner.marker, ledgerName(owner), ...owner.appNames.filter((n): n is string => typeof n === "string")];
  return new RegExp(`^\\.(?:${files.map(reEscape).join("|")})\\.[0-9a-f]{4,}\\.tmp$`);
}

function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch {
    return null;
  }
}

function statOrNull(path: string): Stats | null {
  try {
    return statSync(path);
  } catch {
    return null;
  }
}

const errText = (e: unknown) => (e instanceof Error ? e.message : String(e));

function listForMessage(names: readonly string[], isDir: (n: string) => boolean, max = 5): string {
  const shown = names.slice(0, max).map((n) => (isDir(n) ? `${n}/` : n));
  return shown.join(", ") + (names.length > max ? ` and ${names.length - max} more` : "");
}

/**
 * Whether `outDir` may be used as a run directory, without writing anything. Throws RunDirError when
 * a file is in the way, the folder cannot be read, it was made by a newer version, or it is a
 * non-empty folder that is neither marked nor an earlier run's (see the file's header).
 */
export function inspectRunDir(outDir: string, stepNames: readonly string[], owner: RunDirOwner = DEFAULT_OWNER): RunDirClaim {
  const dir = resolve(outDir);
  const where = `${owner.label} ${outDir}`;
  const st = lstatOrNull(dir);
  if (!st) {
    let child = dir;
    let parent = dirname(dir);
    while (parent !== child && !lstatOrNull(parent)) {
      child = parent;
      parent = dirname(parent);
    }
    if (!statOrNull(parent)?.isDirectory()) throw new RunDirError(dir, `${where} cannot be created: ${parent} is a file, not a folder`);
    return { dir, state: "new", creates: child, leftovers: [] };
  }
  const target = st.isSymbolicLink() ? statOrNull(dir) : st;
  if (!target) throw new RunDirError(dir, `${where} is a broken symbolic link`);
  if (!target.isDirectory()) {
    throw new RunDirError(dir, `${where} is a file, not a folder: give a new folder, an empty one, or a ${owner.tool} run directory`);
  }
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (e) {
    throw new RunDirError(dir, `${where} cannot be read: ${errText(e)}`);
  }
  if (names.length === 0) return { dir, state: "empty", creates: null, leftovers: [] };
  if (names.includes(owner.marker)) {
    checkMarker(dir, where, owner);
    return { dir, state: "marked", creates: null, leftovers: [] };
  }

  // No marker: adopt only what an earlier run (before markers) leaves, name by name and kind by kind.
  const kind = (n: string) => lstatOrNull(join(dir, n));
  const steps = new Set(stepNames);
  const atomicTemp = atomicTempRe(owner);
  const stepTemp = new RegExp(`^\\.tmp-(?:${stepNames.map(reEscape).join("|")})-(?:old-)?[0-9a-f]{8,}$`);
  const leftovers: string[] = [];
  const foreign: string[] = [];
  let onlyTemporaries = true;
  for (const n of names) {
    const k = kind(n);
    const isFile = k?.isFile() ?? false;
    const isDir = k?.isDirectory() ?? false;
    if ((isDir && stepTemp.test(n)) || (isFile && atomicTemp.test(n))) leftovers.push(n);
    else if (isFile && n === LOCK_FILE) continue;
    else {
      onlyTemporaries = false;
      const own =
        (isFile && (n === SETTINGS_FILE || n === ledgerName(owner))) ||
        (isDir && steps.has(n)) ||
        owner.appNames.some((a) => (typeof a === "string" ? a === n : a.test(n)));
      if (!own) foreign.push(n);
    }
  }
  const isDirName = (n: string) => kind(n)?.isDirectory() ?? false;
  const refuse = (why: string) =>
    new RunDirError(
      dir,
      `${where} is not a ${owner.tool} run directory (no ${owner.marker} marker) and is not empty: it holds ${listForMessage([...foreign, ...names.filter((n) => !foreign.includes(n))], isDirName)}${why}; refusing to write into it (--force does not change this): give a new or empty folder`,
    );
  if (foreign.length) {
    throw refuse(`; if it is a run directory of an earlier ${owner.tool}, move ${listForMessage(foreign, isDirName, 3)} out of it`);
  }
  // A run killed before it wrote settings.json leaves only temporaries; any other earlier run has settings.
  if (!onlyTemporaries && !ownSettings(join(dir, SETTINGS_FILE), owner)) {
    throw refuse(names.includes(SETTINGS_FILE) ? ` (its ${SETTINGS_FILE} is not ${owner.tool}'s settings)` : ` (and no ${SETTINGS_FILE})`);
  }
  return { dir, state: "adopted", creates: null, leftovers };
}

function ownSettings(path: string, owner: RunDirOwner): boolean {
  if (!statOrNull(path)?.isFile()) return false;
  try {
    return owner.isOwnSettings(JSON.parse(readFileSync(path, "utf8")));
  } catch {
    return false;
  }
}

/** A marker is a claim; only one from a newer format (which this version cannot honour) is refused. */
function checkMarker(dir: string, where: string, owner: RunDirOwner): void {
  let rec: unknown = null;
  try {
    rec = JSON.parse(readFileSync(join(dir, owner.marker), "utf8"));
  } catch {
    return; // an empty or hand-made marker: the user marked the folder as the run directory
  }
  const format = (rec as { format?: unknown } | null)?.format;
  if (typeof format === "number" && format > RUN_DIR_FORMAT) {
    throw new RunDirError(dir, `${where} was made by a newer ${owner.tool} (run directory format ${format}; this version writes ${RUN_DIR_FORMAT}): use that version, or a new folder`);
  }
}

function writeMarker(dir: string, owner: RunDirOwner): void {
  const body = JSON.stringify({ ...(owner.meta ?? {}), format: RUN_DIR_FORMAT, tool: owner.tool }, null, 2) + "\n";
  let fd: number;
  try {
    fd = openSync(join(dir, owner.marker), "wx");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return;
    throw e;
  }
  try {
    writeSync(fd, body);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  fsyncDir(dir);
}

/** Appends a temporary's name to the ledger (and syncs it) before the temporary is created. */
function recordTemporary(dir: string, owner: RunDirOwner, name: string): void {
  const path = join(dir, ledgerName(owner));
  appendFileSync(path, name + "\n");
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The ledger's names; a line that is not exactly a step temporary's name (torn, edited) is ignored. */
function readLedger(dir: string, owner: RunDirOwner): string[] {
  let text = "";
  try {
    text = readFileSync(join(dir, ledgerName(owner)), "utf8");
  } catch {
    return [];
  }
  return [...new Set(text.split("\n").filter((n) => STEP_TEMP_RE.test(n)))];
}

/** Keep in the ledger only the recorded temporaries that still exist (normally none once a run ends). */
function pruneLedger(dir: string, owner: RunDirOwner): void {
  const path = join(dir, ledgerName(owner));
  if (!existsSync(path)) return;
  const alive = readLedger(dir, owner).filter((n) => lstatOrNull(join(dir, n)) !== null);
  writeFileSync(path, alive.map((n) => n + "\n").join(""));
}

/**
 * Delete what killed runs left behind: the temporaries recorded in the ledger, an adopted earlier
 * run's `leftovers`, and half-written copies of the run's own files (.<own name>.<hex>.tmp). A name
 * the runner did not record or derive (a user's .tmp-notes) is never touched.
 */
export function cleanLeftovers(outDir: string, owner: RunDirOwner = DEFAULT_OWNER, leftovers: readonly string[] = []): string[] {
  const removed: string[] = [];
  if (!existsSync(outDir)) return removed;
  const atomicTemp = atomicTempRe(owner);
  const names = [...readLedger(outDir, owner), ...leftovers, ...readdirSync(outDir).filter((n) => atomicTemp.test(n))];
  for (const name of new Set(names)) {
    if (lstatOrNull(join(outDir, name)) === null) continue;
    removePath(join(outDir, name));
    removed.push(name);
  }
  pruneLedger(outDir, owner);
  return removed;
}

/** After a run that committed nothing: remove the marker and ledger it wrote, and the folders it created, when nothing else is there. */
function discardUnused(claim: RunDirClaim, owner: RunDirOwner, removeCreated: boolean): void {
  const bookkeeping = new Set([owner.marker, ledgerName(owner)]);
  let names: string[];
  try {
    names = readdirSync(claim.dir);
  } catch {
    return;
  }
  if (names.some((n) => !bookkeeping.has(n))) return;
  for (const n of names) rmSync(join(claim.dir, n), { force: true });
  if (!removeCreated || claim.creates === null) return;
  // rmdir removes only empty folders: anything another process put there meanwhile stays.
  for (let d = claim.dir; ; d = dirname(d)) {
    try {
      rmdirSync(d);
    } catch {
      return;
    }
    if (d === claim.creates || dirname(d) === d) return;
  }
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
function commitStepDir(tmp: string, stepDir: string, outDir: string, name: string, owner: RunDirOwner): void {
  let old: string | null = null;
  if (existsSync(stepDir)) {
    const oldName = stepTempName(name, true);
    recordTemporary(outDir, owner, oldName);
    old = join(outDir, oldName);
    renameSync(stepDir, old);
  }
  renameSync(tmp, stepDir);
  fsyncDir(outDir);
  if (old) removePath(old);
}

/**
 * Runs the steps in order, skipping those whose results are current. Claims the run directory first
 * (see the file's header); writes <out>/settings.json once a step commits or every step is up to date;
 * returns the steps' report parts and timings (the application writes its report from them).
 * Throws StepFailedError (a step threw), InterruptedError (signal), RunDirError (not a run directory
 * the runner may write), UsageError (out dir locked).
 */
export async function runPipeline<S>(opts: RunOptions<S>): Promise<RunOutcome> {
  const { steps, settings, outDir } = opts;
  const ui = opts.ui ?? memoryUI();
  const signal = opts.signal ?? new AbortController().signal;
  const graceMs = opts.abortGraceMs ?? 5000;
  const owner = opts.owner ?? DEFAULT_OWNER;
  validateSteps(steps);
  checkFrom(steps, opts.from);

  const claim = inspectRunDir(outDir, steps.map((s) => s.name), owner);
  if (claim.state === "new") {
    try {
      mkdirSync(outDir, { recursive: true });
    } catch (e) {
      throw new RunDirError(claim.dir, `${owner.label} ${outDir} cannot be created: ${errText(e)}`);
    }
  }
  let release: () => void;
  try {
    release = acquireLock(outDir, owner.tool);
  } catch (e) {
    if (claim.state === "new") discardUnused(claim, owner, opts.removeCreatedDir === true);
    throw e;
  }
  let committed = 0;
  let failed = false;
  let settingsWritten = false;
  const writeSettings = () => {
    if (settingsWritten) return;
    atomicWriteJson(join(outDir, SETTINGS_FILE), settings);
    settingsWritten = true;
  };
  try {
    if (claim.state !== "marked") writeMarker(outDir, owner);
    if (claim.state === "adopted") ui.info(`adopted ${outDir}, a run directory of an earlier ${owner.tool} (marked with ${owner.marker})`);
    const removed = cleanLeftovers(outDir, owner, claim.leftovers);
    if (removed.length) ui.info(`removed ${removed.length} unfinished step folder(s) or file(s) from an interrupted run`);

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
          if (!opts.pastFailedGate) break;
        }
        continue;
      }

      // A first run needs no reason; a re-run says why.
      ui.info(planned.reason === "not run yet" ? `${step.name}: running` : `${step.name}: running again (${planned.reason})`);
      const tmpName = stepTempName(step.name, false);
      recordTemporary(outDir, owner, tmpName);
      const tmp = join(outDir, tmpName);
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
        forced: opts.force === true || (opts.pastFailedGate === true && gateFailed !== null),
        ask: opts.ask,
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
      writeSettings();
      commitStepDir(tmp, stepDir, outDir, step.name, owner);
      committed++;

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
    writeSettings();
    timings.total = Math.round(((performance.now() - runStart) / 1000) * 1000) / 1000;
    return { parts, timings, steps: outcomes, gateFailed };
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    ui.close();
    release();
    pruneLedger(outDir, owner);
    if (failed && committed === 0 && claim.state !== "marked") discardUnused(claim, owner, opts.removeCreatedDir === true);
  }
}
