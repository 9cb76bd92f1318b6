// `realign batch`: run every enabled model of models.yaml through the same runner. One model's
// failure does not stop the others; a model whose run is complete (and published, when publishing)
// is skipped. `--schedule` keeps running the batch on the file's cron schedule.
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { checkSettingsPaths, resolveSettings } from "./settings.ts";
import { settingsHash, type Settings } from "../steps/settings.ts";
import { nextRun, parseCron } from "./cron.ts";
import { ConfigError, UsageError } from "../util/errors.ts";
import { InterruptedError } from "../pipeline/errors.ts";
import { exitCodeFor, EXIT_FAILED, EXIT_GATE, EXIT_OK } from "./errors.ts";
import { atomicWriteJson } from "../util/fs.ts";
import type { ModelsFile } from "./models-file.ts";
import { formatSeconds, memoryUI, type RunnerUI } from "../pipeline/progress.ts";
import type { RunReport } from "../report/report.ts";
import { planRun, runPipeline, type RunOutcome, type Step } from "../pipeline/runner.ts";
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

/** Everything the publish step needs that can be checked up front. */
export function checkPublishable(settings: Settings, token: string | null): void {
  if (!pushesToHub(settings)) return;
  if (settings.offline) throw new UsageError("cannot publish while offline: add --no-publish (or publish: false)");
  if (!token) throw new UsageError("publishing needs a Hugging Face token: set HF_TOKEN or pass --token (or use --no-publish)");
}

function rowFromReport(row: BatchRow, report: RunReport | null): BatchRow {
  if (!report) return row;
  row.harmful_before = report.baseline?.harmful_refusal ?? null;
  row.harmful_after = report.realigned?.harmful_refusal ?? null;
  row.gate = report.gate ? (report.gate.passed ? "passed" : "failed") : row.gate;
  row.published = report.published ? report.published.repo : null;
  return row;
}

function readReport(out: string): RunReport | null {
  try {
    return JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as RunReport;
  } catch {
    return null;
  }
}

/** True when nothing would re-run and the result is published (or publishing is off). */
export function isComplete(steps: readonly Step<Settings>[], settings: Settings): { done: boolean; report: RunReport | null } {
  const plan = planRun(steps, settings, settings.out);
  const report = readReport(settings.out);
  const allCached = plan.every((p) => p.action === "cached");
  return { done: allCached && report !== null && (report.published !== null || !settings.publish), report };
}

const pct = (v: number | null) => (v === null ? "–" : `${Math.round(v * 100)}%`);

export function formatBatchTable(rows: readonly BatchRow[]): string[] {
  const header = ["model", "status", "gate", "harmful refusal", "published"];
  const body = rows.map((r) => [
    r.repo,
    r.status,
    r.gate ?? "–",
    r.harmful_before === null && r.harmful_after === null ? "–" : `${pct(r.harmful_before)} → ${pct(r.harmful_after)}`,
    r.published ?? "–",
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
  print(`batch: ${enabled.length} enabled model(s) from ${opts.file.label}`);

  for (const entry of opts.file.models) {
    const row: BatchRow = { repo: entry.repo, status: "disabled", gate: null, harmful_before: null, harmful_after: null, published: null, out: null, error: null, seconds: 0 };
    rows.push(row);
    if (!entry.enabled) continue;
    if (opts.signal?.aborted) throw new InterruptedError(String(opts.signal.reason ?? "SIGINT"));
    const t0 = performance.now();
    print(`\n=== ${entry.repo} ===`);
    try {
      const { settings } = resolveSettings({ cli: opts.cli, env: opts.env, modelsYaml: opts.file, repo: entry.repo, cwd: opts.cwd });
      row.out = settings.out;
      checkSettingsPaths(settings, {}, opts.cwd);
      await checkPromptSetSizes(settings);
      checkPublishable(settings, opts.token ?? null);
      const steps = await opts.getSteps();
      const state = opts.force ? { done: false, report: null } : isComplete(steps, settings);
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
        signal: opts.signal,
        ui,
        secrets: { hfToken: opts.token ?? null },
      });
      const report = writeRunReport({ outDir: settings.out, run: outcome, base: { model: settings.model, revision: settings.revision, settings_hash: settingsHash(settings) } });
      rowFromReport(row, report);
      if (outcome.gateFailed) {
        row.status = "gate-failed";
        row.gate = "failed";
        row.error = `gate failed: ${outcome.gateFailed.join("; ")}`;
      } else row.status = "ok";
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
  const runsDir = opts.runsDir ?? "runs";
  mkdirSync(runsDir, { recursive: true });
  const stamp = started.toISOString().replace(/[:]/g, "-").replace(/\.\d+Z$/, "Z");
  let summaryPath = join(runsDir, `batch-${stamp}.json`);
  for (let i = 2; existsSync(summaryPath); i++) summaryPath = join(runsDir, `batch-${stamp}-${i}.json`);
  atomicWriteJson(summaryPath, { file: opts.file.path, started: started.toISOString(), finished: now().toISOString(), rows });
  print(`summary written to ${summaryPath}`);
  const exitCode = rows.some((r) => r.status === "failed") ? EXIT_FAILED : rows.some((r) => r.status === "gate-failed") ? EXIT_GATE : EXIT_OK;
  return { rows, exitCode, summaryPath };
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
