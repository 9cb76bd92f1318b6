// `realign batch`: run every enabled model of models.yaml through the same runner. One model's
// failure does not stop the others; a model whose run is complete (and published, when publishing)
// is skipped. `--schedule` keeps running the batch on the file's cron schedule.
// Also what `realign <model>`, `demo` and `batch` share before a run: whether publishing can work,
// whose run directory --out is (realignRunDir, checkRunDir: a folder realign did not make is
// refused, exit 2), and reading report.json defensively (readReportSummary: status never crashes).
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { checkSettingsPaths, resolveSettings } from "./settings.ts";
import { FIELDS, settingsHash, type Settings } from "../steps/settings.ts";
import { nextRun, parseCron } from "./cron.ts";
import { ConfigError, UsageError } from "../util/errors.ts";
import { InterruptedError } from "../pipeline/errors.ts";
import { exitCodeFor, EXIT_FAILED, EXIT_GATE, EXIT_OK } from "./errors.ts";
import { atomicWriteJson } from "../util/fs.ts";
import { MISSING, percent } from "../util/format.ts";
import { checkLocalPublishTarget, pendingPublish } from "../steps/publish.ts";
import type { ModelsFile } from "./models-file.ts";
import { formatSeconds, memoryUI, type RunnerUI } from "../pipeline/progress.ts";
import { DEFAULT_OWNER, inspectRunDir, planRun, runPipeline, type RunDirOwner, type RunOutcome, type Step } from "../pipeline/runner.ts";
import { writeRunReport } from "../report/build.ts";
import { checkPromptSetSizes } from "../evals/datasets.ts";

export type BatchStatus = "ok" | "gate-failed" | "failed" | "skipped" | "disabled";

export interface BatchRow {
  repo: string;
  status: BatchStatus;
  gate: "passed" | "failed" | null;
  harmful_before: number | null;
  harmful_after: number | null;
  /** Published repo (or URL), null when not published. */
  published: string | null;
  out: string | null;
  error: string | null;
  seconds: number;
}

export interface BatchResult {
  rows: BatchRow[];
  exitCode: number;
  summaryPath: string;
}

export interface BatchOptions {
  file: ModelsFile;
  env: Record<string, string | undefined>;
  /** Setting overrides from the command line, applied to every model (e.g. {device: "cuda"}). */
  cli?: Record<string, unknown>;
  getSteps: () => Step<Settings>[] | Promise<Step<Settings>[]>;
  token?: string | null;
  force?: boolean;
  /** Folder for batch-<timestamp>.json (default "runs"). */
  runsDir?: string;
  ui?: RunnerUI;
  /** Where the summary table goes (default console.log). */
  print?: (line: string) => void;
  signal?: AbortSignal;
  cwd?: string;
  now?: () => Date;
}

/** Whether the run pushes to the Hub (publish on, and not to a local `file:<dir>` target). */
export function pushesToHub(settings: Settings): boolean {
  return settings.publish && !(settings.pushTo ?? "").startsWith("file:");
}

/**
 * Why a run that was asked to publish to the Hub will not ("no token", "offline"), or null. Not an
 * error: the run does everything else, and ends with how to publish later (`realign publish <run>`).
 */
export function checkPublishable(settings: Settings, token: string | null): "no token" | "offline" | null {
  if (!pushesToHub(settings)) return null;
  if (settings.offline) return "offline";
  return token ? null : "no token";
}

/**
 * A run whose publishing was asked for explicitly (`--push-to` to the Hub, or `publish: true` set on the
 * command line, in the environment or in models.yaml) but that has no token: the message to fail with
 * before anything is downloaded. null: it can publish, or it was not asked (then the run finishes and
 * says how to publish later).
 */
export function missingTokenError(settings: Settings, sources: Record<string, string>, token: string | null): string | null {
  if (checkPublishable(settings, token) !== "no token") return null;
  const pushTo = sources.pushTo !== undefined && sources.pushTo !== "default" && settings.pushTo !== null;
  const publish = sources.publish !== undefined && sources.publish !== "default";
  if (!pushTo && !publish) return null;
  const asked = pushTo ? `publishing to ${settings.pushTo} was asked for (${sources.pushTo})` : `publish: true was set (${sources.publish})`;
  return `${asked}, but there is no Hugging Face token: set HF_TOKEN (or HF_TOKEN_PATH, \`huggingface-cli login\`, --token), or run with --no-publish and publish later with \`realign publish ${settings.out}\`; nothing was downloaded`;
}

/** The last line of a run that did not publish for `why`: how to publish it later. */
export function publishLaterLine(settings: Settings, why: string): string {
  return `not published (${why}) — publish with \`realign publish ${settings.out}\``;
}

/**
 * The lines that end every run that got as far as the edit: where the re-aligned model is and how to
 * try it (`realign chat <run>` talks with it; `--vs` puts the original beside it).
 */
export function tryItLines(settings: Settings): string[] {
  const model = join(settings.out, "inject", "model");
  if (!existsSync(join(model, "config.json"))) return [];
  const lines = [`re-aligned model: ${model}`, `try it: realign chat ${settings.out}   (--vs: next to the original)`];
  // The optional artefacts of the srr and export steps, when the settings asked for them and they exist.
  const scorer = join(settings.out, "srr", "scorer", "srr.safetensors");
  if (settings.srr && existsSync(scorer)) lines.push(`best-of-N: realign chat ${settings.out} --temperature 1 --best-of ${settings.srrCandidates} --rank srr   (scorer ${scorer})`);
  const ggufDir = join(settings.out, "export", "gguf");
  const gguf = settings.gguf !== "none" && existsSync(ggufDir) ? readdirSync(ggufDir).find((f) => f.endsWith(".gguf")) : undefined;
  if (gguf) lines.push(`GGUF: ${join(ggufDir, gguf)}   (llama-cli -m <it> -cnv; Ollama: FROM <it> in a Modelfile, see the model card)`);
  return lines;
}

/** The run's `from`: a run whose publish step skipped for want of a token re-runs publish once there is one. */
export function publishFrom(settings: Settings, token: string | null, from: string | null): string | null {
  if (from !== null || !pushesToHub(settings) || !token || settings.offline) return from;
  return pendingPublish(settings.out) ? "publish" : null;
}

// ---- the Hugging Face environment -----------------------------------------------------------------

const truthy = (v: string | undefined) => /^(1|true|yes|on)$/i.test((v ?? "").trim());

/**
 * HF_HUB_OFFLINE and HF_ENDPOINT, as every Hugging Face tool reads them: they set offline / hubUrl
 * unless the command line or a REALIGN_* variable did (HF_HOME, HF_HUB_CACHE and HF_TOKEN_PATH are
 * read where the cache and the token are found: hub/cache.ts, hub/repo.ts). Changes `resolved` in
 * place; its sources name the variable.
 */
export function applyHfEnv(resolved: { settings: Settings; sources: Record<string, string> }, env: Record<string, string | undefined>): void {
  const { settings, sources } = resolved;
  const mine = (path: string) => (sources[path] ?? "").startsWith("cli") || (sources[path] ?? "").startsWith("env REALIGN_");
  if (!mine("offline") && env.HF_HUB_OFFLINE !== undefined && truthy(env.HF_HUB_OFFLINE)) {
    settings.offline = true;
    sources.offline = "env HF_HUB_OFFLINE";
  }
  const endpoint = env.HF_ENDPOINT?.trim().replace(/\/+$/, "");
  if (!mine("hubUrl") && endpoint) {
    if (!/^https?:\/\/[^\s]+$/.test(endpoint)) throw new UsageError(`HF_ENDPOINT: expected an http(s) URL, got ${JSON.stringify(env.HF_ENDPOINT)}`);
    settings.hubUrl = endpoint;
    sources.hubUrl = "env HF_ENDPOINT";
  }
}

// ---- the run directory and the publish target ---------------------------------------------------

/** What realign writes at a run directory's top level besides the step folders, settings.json and the lock. */
function appNames(settings: Settings): (string | RegExp)[] {
  // inject's sweep memo and trade-off choice (steps/inject.ts MEMO_FILE, CHOICE_FILE) and the report files (report/build.ts).
  const names: (string | RegExp)[] = ["report.json", "report.md", ".inject-sweep.jsonl", ".inject-choice.json"];
  const target = localPublishTarget(settings);
  if (target && dirname(target) === resolve(settings.out)) {
    // The demo publishes into <out>/published (the publish step stages it as published.tmp-<pid>).
    const base = target.slice(dirname(target).length + 1);
    names.push(base, new RegExp(`^${base.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}\\.tmp-\\d+$`));
  }
  return names;
}

const SETTING_KEYS = new Set(FIELDS.map((f) => f.path.split(".")[0]!));

/** An earlier realign's settings.json: an object naming the model, with most of the settings realign has (names change between versions). */
export function isRealignSettings(v: unknown): boolean {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return false;
  const o = v as Record<string, unknown>;
  const known = Object.keys(o).filter((k) => SETTING_KEYS.has(k)).length;
  return typeof o.model === "string" && known * 2 >= SETTING_KEYS.size;
}

/** realign's claim on a run directory; `label` names it in messages ("--out" when the user gave it). */
export function realignRunDir(settings: Settings, label = "--out"): RunDirOwner {
  return {
    marker: DEFAULT_OWNER.marker,
    tool: "realign",
    label,
    meta: { model: settings.model },
    appNames: appNames(settings),
    isOwnSettings: isRealignSettings,
  };
}

/** Refuses (RunDirError, exit 2) a run directory realign may not write, before anything is written. */
export function checkRunDir(settings: Settings, steps: readonly Step<Settings>[], label = "--out"): void {
  inspectRunDir(settings.out, steps.map((s) => s.name), realignRunDir(settings, label));
}

function localPublishTarget(settings: Settings): string | null {
  return settings.publish && settings.pushTo?.startsWith("file:") ? resolve(settings.pushTo.slice(5)) : null;
}

/** A local publish target (--push-to file:<dir>) must be new, empty, or realign's (steps/publish.ts says why). */
export function checkPublishTarget(settings: Settings): void {
  const target = localPublishTarget(settings);
  if (target) checkLocalPublishTarget(target);
}

// ---- report.json, read defensively ----------------------------------------------------------------

/** What `status` and `batch` read from a report.json, each field checked (a hand-edited or foreign file never crashes them). */
export interface ReportSummary {
  direction: { method: string | null; layer: number | null; position: number | null; position_label: string | null; alpha: number | null; rank: number | null } | null;
  baseline: { harmful_refusal: number | null; harmless_refusal: number | null } | null;
  realigned: { harmful_refusal: number | null; harmless_refusal: number | null } | null;
  /** passed null: the report has a gate without a readable verdict. */
  gate: { passed: boolean | null; reasons: string[] } | null;
  published: { repo: string | null; url: string | null } | null;
}

const asNum = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);
const asStr = (v: unknown): string | null => (typeof v === "string" ? v : null);
const asObj = (v: unknown): Record<string, unknown> | null => (v !== null && typeof v === "object" && !Array.isArray(v) ? (v as Record<string, unknown>) : null);

/** A report (parsed JSON of any shape) → its summary; null when it is not an object. */
export function summarizeReportJson(raw: unknown): ReportSummary | null {
  const r = asObj(raw);
  if (!r) return null;
  const rates = (v: unknown) => {
    const m = asObj(v);
    return m ? { harmful_refusal: asNum(m.harmful_refusal), harmless_refusal: asNum(m.harmless_refusal) } : null;
  };
  const d = asObj(r.direction);
  const g = asObj(r.gate);
  const p = asObj(r.published);
  return {
    direction: d ? { method: asStr(d.method), layer: asNum(d.layer), position: asNum(d.position), position_label: asStr(d.position_label), alpha: asNum(d.alpha), rank: asNum(d.rank) } : null,
    baseline: rates(r.baseline),
    realigned: rates(r.realigned),
    gate: g ? { passed: typeof g.passed === "boolean" ? g.passed : null, reasons: Array.isArray(g.reasons) ? g.reasons.map((x) => String(x)) : [] } : null,
    published: p ? { repo: asStr(p.repo), url: asStr(p.url) } : null,
  };
}

/** <out>/report.json: the parsed JSON as is, its summary, and what is wrong with it (null: fine or absent). */
export function readReportFile(out: string): { raw: unknown; summary: ReportSummary | null; problem: string | null } {
  const path = join(out, "report.json");
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return { raw: null, summary: null, problem: code === "ENOENT" ? null : `${path} cannot be read (${code ?? String(e)})` };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return { raw: null, summary: null, problem: `${path} is not valid JSON` };
  }
  const summary = summarizeReportJson(raw);
  return { raw, summary, problem: summary ? null : `${path} does not hold a JSON object` };
}

function rowFromReport(row: BatchRow, report: ReportSummary | null): BatchRow {
  if (!report) return row;
  row.harmful_before = report.baseline?.harmful_refusal ?? null;
  row.harmful_after = report.realigned?.harmful_refusal ?? null;
  row.gate = report.gate && report.gate.passed !== null ? (report.gate.passed ? "passed" : "failed") : row.gate;
  row.published = report.published ? report.published.repo : null;
  return row;
}

/**
 * True when nothing would re-run and the result is published (or publishing is off, or cannot happen
 * in this run: `unpublishable`, no token or offline; the run said how to publish later).
 */
export function isComplete(steps: readonly Step<Settings>[], settings: Settings, unpublishable = false): { done: boolean; report: ReportSummary | null } {
  const plan = planRun(steps, settings, settings.out);
  const report = readReportFile(settings.out).summary;
  const allCached = plan.every((p) => p.action === "cached");
  return { done: allCached && report !== null && (report.published !== null || !settings.publish || unpublishable), report };
}

// One decimal, as everywhere (util/format.ts): 12.5 % is not "13%".
const pct = percent;

export function formatBatchTable(rows: readonly BatchRow[]): string[] {
  const header = ["model", "status", "gate", "harmful refusal", "published"];
  const body = rows.map((r) => [
    r.repo,
    r.status,
    r.gate ?? MISSING,
    r.harmful_before === null && r.harmful_after === null ? MISSING : `${pct(r.harmful_before)} → ${pct(r.harmful_after)}`,
    r.published ?? MISSING,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  const out = [line(header), line(widths.map((w) => "-".repeat(w)))];
  for (const b of body) out.push(line(b));
  for (const r of rows) if (r.error) out.push(`  ${r.repo}: ${r.error.split("\n").join("\n    ")}`);
  return out;
}

export async function runBatch(opts: BatchOptions): Promise<BatchResult> {
  const print = opts.print ?? ((l: string) => console.log(l));
  const ui = opts.ui ?? memoryUI();
  const now = opts.now ?? (() => new Date());
  const started = now();
  const rows: BatchRow[] = [];
  const enabled = opts.file.models.filter((m) => m.enabled);
  const runsDir = opts.runsDir ?? "runs";
  // The summary is written last: a folder that cannot hold it must fail now, not after every model ran.
  checkSummaryDir(runsDir);
  print(`batch: ${enabled.length} enabled model(s) from ${opts.file.label}`);

  for (const entry of opts.file.models) {
    const row: BatchRow = { repo: entry.repo, status: "disabled", gate: null, harmful_before: null, harmful_after: null, published: null, out: null, error: null, seconds: 0 };
    rows.push(row);
    if (!entry.enabled) continue;
    if (opts.signal?.aborted) throw new InterruptedError(String(opts.signal.reason ?? "SIGINT"));
    const t0 = performance.now();
    print(`\n=== ${entry.repo} ===`);
    try {
      const resolved = resolveSettings({ cli: opts.cli, env: opts.env, modelsYaml: opts.file, repo: entry.repo, cwd: opts.cwd });
      applyHfEnv(resolved, opts.env);
      const { settings } = resolved;
      row.out = settings.out;
      checkSettingsPaths(settings, {}, opts.cwd);
      await checkPromptSetSizes(settings);
      const unpublished = checkPublishable(settings, opts.token ?? null);
      checkPublishTarget(settings);
      const steps = await opts.getSteps();
      checkRunDir(settings, steps, "run directory");
      const from = opts.force ? null : publishFrom(settings, opts.token ?? null, null);
      const state = opts.force || from ? { done: false, report: null } : isComplete(steps, settings, unpublished !== null);
      if (state.done) {
        row.status = "skipped";
        rowFromReport(row, state.report);
        print(`${entry.repo}: up to date, skipped`);
        continue;
      }
      const outcome: RunOutcome = await runPipeline({
        steps,
        settings,
        outDir: settings.out,
        force: opts.force,
        from,
        signal: opts.signal,
        ui,
        secrets: { hfToken: opts.token ?? null },
        owner: realignRunDir(settings, "run directory"),
        removeCreatedDir: true,
      });
      const report = writeRunReport({ outDir: settings.out, run: outcome, base: { model: settings.model, revision: settings.revision, settings_hash: settingsHash(settings) } });
      rowFromReport(row, summarizeReportJson(report));
      if (outcome.gateFailed) {
        row.status = "gate-failed";
        row.gate = "failed";
        row.error = `gate failed: ${outcome.gateFailed.join("; ")}`;
      } else {
        row.status = "ok";
        if (unpublished) {
          row.published = `not published (${unpublished})`;
          print(`${entry.repo}: ${publishLaterLine(settings, unpublished)}`);
        }
      }
    } catch (err) {
      if (err instanceof InterruptedError) throw err;
      row.status = exitCodeFor(err) === EXIT_GATE ? "gate-failed" : "failed";
      row.error = err instanceof ConfigError ? err.problems.join("\n") : err instanceof Error ? err.message : String(err);
      print(`${entry.repo}: ${row.status}: ${row.error}`);
    } finally {
      row.seconds = Math.round((performance.now() - t0) / 10) / 100;
    }
    print(`${entry.repo}: ${row.status} in ${formatSeconds(row.seconds)}`);
  }

  print("");
  for (const l of formatBatchTable(rows)) print(l);
  mkdirSync(runsDir, { recursive: true });
  const stamp = started.toISOString().replace(/[:]/g, "-").replace(/\.\d+Z$/, "Z");
  let summaryPath = join(runsDir, `batch-${stamp}.json`);
  for (let i = 2; existsSync(summaryPath); i++) summaryPath = join(runsDir, `batch-${stamp}-${i}.json`);
  atomicWriteJson(summaryPath, { file: opts.file.path, started: started.toISOString(), finished: now().toISOString(), rows });
  print(`summary written to ${summaryPath}`);
  const exitCode = rows.some((r) => r.status === "failed") ? EXIT_FAILED : rows.some((r) => r.status === "gate-failed") ? EXIT_GATE : EXIT_OK;
  return { rows, exitCode, summaryPath };
}

/** The batch summary folder must be a folder, or creatable as one (UsageError otherwise). */
function checkSummaryDir(dir: string): void {
  let p = resolve(dir);
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  let isDir = false;
  try {
    isDir = statSync(p).isDirectory();
  } catch {
    // unreadable: reported below
  }
  if (!isDir) throw new UsageError(`--runs-dir ${dir}: ${p === resolve(dir) ? "it" : p} is not a folder, so the batch summary cannot be written there`);
}

/** Resolves after `ms`, or early (false) when the signal aborts. */
function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    const timer = setTimeout(() => (signal?.removeEventListener("abort", onAbort), resolve(true)), ms);
    const onAbort = () => (clearTimeout(timer), resolve(false));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export interface ScheduleOptions extends Omit<BatchOptions, "file"> {
  /** Re-read models.yaml before each run so edits apply without a restart. */
  loadFile: () => ModelsFile;
  /** Stop after this many batch runs (tests); default: forever. */
  maxRuns?: number;
}

/** Stay up and run the batch whenever the file's schedule: fires. Returns when aborted (or after maxRuns). */
export async function runSchedule(opts: ScheduleOptions): Promise<void> {
  const print = opts.print ?? ((l: string) => console.log(l));
  const now = opts.now ?? (() => new Date());
  let file = opts.loadFile();
  if (!file.schedule) throw new UsageError(`${file.label}: no schedule: set, so --schedule has nothing to follow (e.g. schedule: "0 3 * * 1")`);
  for (let runs = 0; opts.maxRuns === undefined || runs < opts.maxRuns; runs++) {
    const sched = parseCron(file.schedule!);
    const next = nextRun(sched, now())!;
    print(`next batch run at ${next.toString()} (schedule "${file.schedule}")`);
    // Sleep in chunks: timers cannot span weeks, and the clock may jump (suspend, DST).
    while (now().getTime() < next.getTime()) {
      const ok = await sleep(Math.min(next.getTime() - now().getTime(), 60_000), opts.signal);
      if (!ok) return;
    }
    try {
      const fresh = opts.loadFile();
      if (fresh.schedule) file = fresh;
      else print(`${fresh.label}: schedule: was removed; keeping "${file.schedule}"`);
    } catch (err) {
      print(`${file.label} is invalid now, using the last good version:\n${err instanceof Error ? err.message : String(err)}`);
    }
    try {
      await runBatch({ ...opts, file });
    } catch (err) {
      if (err instanceof InterruptedError) return;
      print(`batch failed: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}
