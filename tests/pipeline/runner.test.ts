// The step runner with fake steps: caching, invalidation, --from/--force, atomic commits,
// gate verdicts, interruption, and resume after SIGKILL in a child process. Also batch.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { runBatch, runSchedule } from "../../cli/batch.ts";
import { resolveSettings } from "../../cli/settings.ts";
import { settingsHash, type Settings } from "../../steps/settings.ts";
import { InterruptedError, StepFailedError } from "../../pipeline/errors.ts";
import { UsageError } from "../../util/errors.ts";
import { parseModelsFile } from "../../cli/models-file.ts";
import { consoleUI } from "../../pipeline/progress.ts";
import type { RunReport } from "../../report/report.ts";
import { planRun, readDoneRecord, runPipeline, type Step } from "../../pipeline/runner.ts";
import { makeFakeSteps, type FakeOptions } from "../helpers/fixtures-runner/fake-steps.ts";
import { REPO_ROOT, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";
import { writeRunReport } from "../../report/build.ts";

const ROOT = mkdtempSync(join(tmpdir(), "realign-runner-"));
afterAll(() => rmSync(ROOT, { recursive: true, force: true }));
let n = 0;
const freshDir = () => join(ROOT, `run-${n++}`);
const BUN = process.execPath;
const REPO = REPO_ROOT;

function settingsFor(out: string, cli: Record<string, unknown> = {}): Settings {
  return resolveSettings({ repo: "test/fake-model", cli: { out, publish: false, nTrain: 8, ...cli }, env: {} }).settings;
}

async function run(settings: Settings, fake: FakeOptions = {}, extra: { from?: string; force?: boolean; signal?: AbortSignal } = {}) {
  const runs: string[] = [];
  const outcome = await runPipeline({
    steps: makeFakeSteps({ ...fake, runs }),
    settings,
    outDir: settings.out,
    abortGraceMs: 200,
    ...extra,
  });
  // The application's report, written from what the runner handed back (as the CLI does).
  const report = writeRunReport({ outDir: settings.out, run: outcome, base: { model: settings.model, revision: settings.revision, settings_hash: settingsHash(settings) } });
  return { runs, outcome: { ...outcome, report } };
}

/** Every file under dir (relative path → content), minus run metadata that legitimately differs. */
function snapshot(dir: string): Record<string, string> {
  const outFiles: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name !== ".done.json" && name !== "report.md") {
        let content = readFileSync(p, "utf8");
        if (name === "report.json") {
          const r = JSON.parse(content) as RunReport;
          content = JSON.stringify({ ...r, timings_s: Object.keys(r.timings_s).sort() });
        }
        if (name === "settings.json") content = JSON.stringify({ ...JSON.parse(content), out: "<out>" });
        outFiles[relative(dir, p)] = content;
      }
    }
  };
  walk(dir);
  return outFiles;
}

const leftovers = (dir: string) => readdirSync(dir).filter((f) => f.startsWith(".tmp-") || f.endsWith(".tmp"));

describe("caching", () => {
  test("second run skips every step and reproduces the same report", async () => {
    const s = settingsFor(freshDir());
    const first = await run(s);
    expect(first.runs).toEqual(["pull", "elicit", "extract", "validate", "publish"]);
    const before = snapshot(s.out);
    const second = await run(s);
    expect(second.runs).toEqual([]);
    expect(second.outcome.steps.map((x) => x.status)).toEqual(["cached", "cached", "cached", "cached", "cached"]);
    // Cached steps still contribute their report parts.
    expect(second.outcome.report.elicitation?.harmful_refusal_with_prompt).toBe(0.8);
    expect(second.outcome.report.realigned?.harmful_refusal).toBe(0.95);
    expect(Object.keys(second.outcome.report.timings_s)).toEqual(["pull", "elicit", "extract", "validate", "publish", "total"]);
    expect(snapshot(s.out)).toEqual(before);
  });

  test("a changed setting re-runs the step that reads it and everything downstream, nothing upstream", async () => {
    const out = freshDir();
    await run(settingsFor(out));
    expect((await run(settingsFor(out, { nEval: 32 }))).runs).toEqual(["validate", "publish"]);
    expect((await run(settingsFor(out, { nEval: 32, layer: 5 }))).runs).toEqual(["extract", "validate", "publish"]);
    expect((await run(settingsFor(out, { nEval: 32, layer: 5, seed: 9 }))).runs).toEqual(["elicit", "extract", "validate", "publish"]);
    // A setting no step reads (device) changes nothing.
    expect((await run(settingsFor(out, { nEval: 32, layer: 5, seed: 9, device: "cpu" }))).runs).toEqual([]);
    // Going back to the first settings re-runs again (only the latest result per step is kept).
    expect((await run(settingsFor(out))).runs).toEqual(["elicit", "extract", "validate", "publish"]);
  });

  test("--from re-runs that step and every later one; --force re-runs all", async () => {
    const s = settingsFor(freshDir());
    await run(s);
    expect((await run(s, {}, { from: "extract" })).runs).toEqual(["extract", "validate", "publish"]);
    expect((await run(s, {}, { force: true })).runs).toEqual(["pull", "elicit", "extract", "validate", "publish"]);
    await expect(run(s, {}, { from: "extrat" })).rejects.toThrow(UsageError);
    await expect(run(s, {}, { from: "extrat" })).rejects.toThrow(/unknown step "extrat".*pull, elicit, extract/);
  });

  test("a damaged output (file deleted) re-runs that step and its dependants", async () => {
    const s = settingsFor(freshDir());
    await run(s);
    rmSync(join(s.out, "extract", "chunks", "chunk-2.txt"));
    const plan = planRun(makeFakeSteps(), s, s.out);
    expect(plan.find((p) => p.name === "extract")?.reason).toMatch(/outputs missing or changed: chunks/);
    expect((await run(s)).runs).toEqual(["extract", "validate", "publish"]);
    expect(existsSync(join(s.out, "extract", "chunks", "chunk-2.txt"))).toBe(true);
  });

  test(".done.json records hash, times and output sizes", async () => {
    const s = settingsFor(freshDir());
    const { outcome } = await run(s);
    const rec = readDoneRecord(join(s.out, "extract"))!;
    expect(rec.hash).toBe(outcome.steps[2]!.hash);
    expect(rec.outputs).toEqual([
      { name: "direction.txt", kind: "file", bytes: 65 },
      { name: "chunks", kind: "dir", bytes: 6 * 64 * 64 },
    ]);
    expect(Date.parse(rec.finished)).toBeGreaterThanOrEqual(Date.parse(rec.started));
    expect(JSON.parse(readFileSync(join(s.out, "settings.json"), "utf8")).nTrain).toBe(8);
  });
});

describe("atomic outputs", () => {
  test("a failing step leaves no step folder, no partial files and no tmp dirs; earlier steps stay committed", async () => {
    const s = settingsFor(freshDir());
    const err = await run(s, { failAt: "extract" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StepFailedError);
    expect((err as StepFailedError).step).toBe("extract");
    expect((err as Error).message).toBe("step extract failed: fake extract failure");
    expect(existsSync(join(s.out, "extract"))).toBe(false);
    expect(existsSync(join(s.out, "pull", "model.txt"))).toBe(true);
    expect(leftovers(s.out)).toEqual([]);
    expect(existsSync(join(s.out, "report.json"))).toBe(false);
    // Resume: finished steps are not repeated.
    expect((await run(s)).runs).toEqual(["extract", "validate", "publish"]);
  });

  test("a failed re-run keeps the previous result of that step intact", async () => {
    const out = freshDir();
    await run(settingsFor(out));
    const before = readFileSync(join(out, "extract", "direction.txt"), "utf8");
    await expect(run(settingsFor(out, { layer: 7 }), { failAt: "extract" })).rejects.toThrow(StepFailedError);
    expect(readFileSync(join(out, "extract", "direction.txt"), "utf8")).toBe(before);
    expect(leftovers(out)).toEqual([]);
  });

  test("leftover tmp dirs and half-written files from a killed run are deleted on start", async () => {
    const s = settingsFor(freshDir());
    mkdirSync(join(s.out, ".tmp-extract-deadbeef", "chunks"), { recursive: true });
    writeFileSync(join(s.out, ".tmp-extract-deadbeef", "chunks", "chunk-0.txt"), "partial");
    writeFileSync(join(s.out, ".report.json.1234.tmp"), "{");
    await run(s);
    expect(leftovers(s.out)).toEqual([]);
  });

  test("a step that does not write a declared output fails and commits nothing", async () => {
    const s = settingsFor(freshDir());
    const steps: Step<Settings>[] = [{ name: "lazy", deps: [], outputs: ["result.bin"], inputs: () => ({}), run: async () => ({}) }];
    await expect(runPipeline({ steps, settings: s, outDir: s.out })).rejects.toThrow(/step lazy failed: did not write its declared output\(s\): result.bin/);
    expect(existsSync(join(s.out, "lazy"))).toBe(false);
    expect(leftovers(s.out)).toEqual([]);
  });

  test("reading an upstream step that is not declared in deps is an error", async () => {
    const s = settingsFor(freshDir());
    const steps: Step<Settings>[] = [
      { name: "a", deps: [], outputs: [], inputs: () => ({}), run: async () => ({}) },
      { name: "b", deps: [], outputs: [], inputs: () => ({}), run: async (ctx) => (ctx.upstream("a"), {}) },
    ];
    await expect(runPipeline({ steps, settings: s, outDir: s.out })).rejects.toThrow(/reads upstream "a" but does not list it in deps/);
  });

  test("invalid step lists are rejected before anything runs", () => {
    const s = settingsFor(freshDir());
    const step = (name: string, deps: string[] = [], outputs: string[] = []): Step<Settings> => ({ name, deps, outputs, inputs: () => ({}), run: async () => ({}) });
    expect(() => planRun([step("a"), step("a")], s, s.out)).toThrow(/duplicate step name/);
    expect(() => planRun([step("b", ["a"]), step("a")], s, s.out)).toThrow(/not an earlier step/);
    expect(() => planRun([step("a", [], ["../escape"])], s, s.out)).toThrow(/invalid output name/);
    expect(existsSync(s.out)).toBe(false);
  });
});

describe("gate", () => {
  test("a gate failure is committed, recorded in the report, stops before publish, and is not recomputed", async () => {
    const s = settingsFor(freshDir());
    const first = await run(s, { gateFail: true });
    expect(first.runs).toEqual(["pull", "elicit", "extract", "validate"]);
    expect(first.outcome.gateFailed).toEqual(["harmful refusal 0.95 < 0.99"]);
    expect(readDoneRecord(join(s.out, "validate"))?.gate_failed).toEqual(["harmful refusal 0.95 < 0.99"]);
    const report = JSON.parse(readFileSync(join(s.out, "report.json"), "utf8")) as RunReport;
    expect(report.gate?.passed).toBe(false);
    expect(report.realigned?.harmful_refusal).toBe(0.95);
    expect(readFileSync(join(s.out, "report.md"), "utf8")).toContain("Gate: **FAILED**");
    expect(existsSync(join(s.out, "publish"))).toBe(false);
    const second = await run(s, { gateFail: true });
    expect(second.runs).toEqual([]);
    expect(second.outcome.gateFailed).toEqual(["harmful refusal 0.95 < 0.99"]);
    // Looser gate settings re-run validate (its inputs include the gate) and then publish.
    const third = await run(settingsFor(s.out, { gate: { harmfulAbs: 0.5 } }));
    expect(third.runs).toEqual(["validate", "publish"]);
    expect(third.outcome.gateFailed).toBeNull();
  });
});

describe("interruption", () => {
  test("an abort mid-step removes that step's tmp dir, throws InterruptedError, and the next run resumes", async () => {
    const s = settingsFor(freshDir());
    const ac = new AbortController();
    const p = run(s, { slowMs: 40, chunks: 10 }, { signal: ac.signal });
    // Abort once extract is under way.
    for (let i = 0; i < 200 && !readdirSync(s.out).some((f) => f.startsWith(".tmp-extract-")); i++) await Bun.sleep(5);
    ac.abort("SIGINT");
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InterruptedError);
    expect((err as Error).message).toBe("interrupted; re-run to resume");
    expect(leftovers(s.out)).toEqual([]);
    expect(existsSync(join(s.out, "extract"))).toBe(false);
    expect(existsSync(join(s.out, "elicit", "prompts.json"))).toBe(true);
    expect(existsSync(join(s.out, ".lock"))).toBe(false);
    expect((await run(s)).runs).toEqual(["extract", "validate", "publish"]);
  });

  test("a run holding the out dir blocks a second one; a lock left by a dead process is taken over", async () => {
    const s = settingsFor(freshDir());
    mkdirSync(s.out, { recursive: true });
    writeFileSync(join(s.out, ".lock"), String(process.pid));
    await expect(run(s)).rejects.toThrow(/another realign run \(pid \d+\) is using/);
    expect(existsSync(join(s.out, "pull"))).toBe(false);
    writeFileSync(join(s.out, ".lock"), "2147483646"); // no such process
    expect((await run(s)).runs.length).toBe(5);
    expect(existsSync(join(s.out, ".lock"))).toBe(false);
  });

  test("SIGKILL at any point: the next invocation resumes and ends with the same outputs as an uninterrupted run", async () => {
    const reference = freshDir();
    const ok = Bun.spawnSync([BUN, "tests/helpers/fixtures-runner/run-fake.ts", reference], { cwd: REPO, env: { ...process.env, FAKE_CHUNKS: "5" } });
    expect(ok.exitCode).toBe(0);
    const want = snapshot(reference);

    // Kill points: before extract writes anything, mid-extract, and just after extract committed.
    for (const marker of ["STEP extract start", "STEP extract chunk 2", "STEP validate start"]) {
      const out = freshDir();
      const runsFile = join(ROOT, `runs-${n}.txt`);
      const child = Bun.spawn([BUN, "tests/helpers/fixtures-runner/run-fake.ts", out], {
        cwd: REPO,
        env: { ...process.env, FAKE_CHUNKS: "5", FAKE_SLOW_MS: "60", FAKE_MARKERS: "1", FAKE_RUNS_FILE: runsFile },
        stdout: "pipe",
        stderr: "pipe",
      });
      const reader = child.stdout.getReader();
      let seen = "";
      while (!seen.includes(marker)) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += new TextDecoder().decode(value);
      }
      expect(seen).toContain(marker);
      child.kill("SIGKILL");
      expect(await child.exited).not.toBe(0);
      expect(existsSync(join(out, "publish"))).toBe(false);

      const resumed = Bun.spawnSync([BUN, "tests/helpers/fixtures-runner/run-fake.ts", out], { cwd: REPO, env: { ...process.env, FAKE_CHUNKS: "5", FAKE_RUNS_FILE: runsFile } });
      expect(resumed.exitCode).toBe(0);
      expect(leftovers(out)).toEqual([]);
      expect(snapshot(out)).toEqual(want);
      // Work committed before the kill was not repeated: pull and elicit ran once in total.
      const ranSteps = readFileSync(runsFile, "utf8").trim().split("\n");
      expect(ranSteps.filter((x) => x === "pull").length).toBe(1);
      expect(ranSteps.filter((x) => x === "elicit").length).toBe(1);
      expect(ranSteps.filter((x) => x === "extract").length).toBe(marker === "STEP validate start" ? 1 : 2);
    }
  }, PIPELINE_TEST_TIMEOUT);
});

describe("progress output", () => {
  test("without a TTY progress is throttled one-line records", () => {
    const lines: string[] = [];
    let t = 0;
    const stream = { write: (s: string) => (lines.push(s.trimEnd()), true), isTTY: false } as unknown as NodeJS.WriteStream;
    const ui = consoleUI({ stream, throttleMs: 1000, now: () => t });
    const bar = ui.progress("extract", "forward", 128);
    for (let i = 0; i < 128; i++) {
      t += 100; // 12.8 s in total → one record per second of ticks
      bar.tick();
    }
    bar.done();
    expect(lines.length).toBe(13);
    expect(lines[0]).toBe("[extract] forward 10/128 (7%) 1.0 s");
    expect(lines.at(-1)).toBe("[extract] forward 128/128 (100%) 12.8 s");
    ui.stepLog("extract", "hello");
    expect(lines.at(-1)).toBe("[extract] hello");
  });
});

describe("batch", () => {
  const yamlFor = (dir: string) => `
defaults:
  publish: false
  n_train: 4
models:
  - repo: test/good
    out: ${join(dir, "good")}
  - repo: test/bad
    out: ${join(dir, "bad")}
  - repo: test/off
    enabled: false
`;

  test("one model failing does not stop the others; summary lists both; exit code 1; re-run skips the finished one", async () => {
    const dir = freshDir();
    const file = parseModelsFile(yamlFor(dir), join(dir, "models.yaml"), "models.yaml");
    const runs: string[] = [];
    const printed: string[] = [];
    const opts = {
      file,
      env: {},
      getSteps: () => makeFakeSteps({ runs, failAt: (step: string, s: Settings) => s.model === "test/bad" && step === "extract" }),
      runsDir: join(dir, "runs"),
      print: (l: string) => printed.push(l),
      now: () => new Date("2030-01-02T03:04:05Z"),
    };
    const result = await runBatch(opts);
    expect(result.exitCode).toBe(1);
    expect(result.rows.map((r) => [r.repo, r.status])).toEqual([
      ["test/good", "ok"],
      ["test/bad", "failed"],
      ["test/off", "disabled"],
    ]);
    expect(result.rows[0]!.harmful_before).toBe(0.1);
    expect(result.rows[0]!.harmful_after).toBe(0.95);
    expect(result.rows[1]!.error).toBe("step extract failed: fake extract failure");
    const table = printed.join("\n");
    expect(table).toMatch(/test\/good\s+ok\s+passed\s+10.0 % → 95.0 %/);
    expect(table).toMatch(/test\/bad\s+failed/);
    expect(result.summaryPath).toBe(join(dir, "runs", "batch-2030-01-02T03-04-05Z.json"));
    const saved = JSON.parse(readFileSync(result.summaryPath, "utf8")) as { rows: { repo: string; status: string }[] };
    expect(saved.rows.map((r) => r.status)).toEqual(["ok", "failed", "disabled"]);

    // Second batch: the complete model is skipped, the failed one resumes after its committed steps.
    runs.length = 0;
    const again = await runBatch(opts);
    expect(again.rows.map((r) => r.status)).toEqual(["skipped", "failed", "disabled"]);
    expect(runs).toEqual(["extract"]);
    expect(again.summaryPath).not.toBe(result.summaryPath);
    expect(again.exitCode).toBe(1);
  });

  test("--schedule waits for the cron time, runs the batch, and stops on abort", async () => {
    const dir = freshDir();
    const text = `schedule: "0 3 * * 1"\ndefaults: {publish: false}\nmodels:\n  - repo: test/a\n    out: ${join(dir, "a")}\n`;
    const load = () => parseModelsFile(text, join(dir, "models.yaml"), "models.yaml");
    // A clock that starts 50 ms before Monday 03:00 and then runs in real time.
    const t0 = new Date(2030, 0, 7, 2, 59, 59, 950).getTime();
    const realStart = Date.now();
    const printed: string[] = [];
    await runSchedule({ loadFile: load, env: {}, getSteps: () => makeFakeSteps(), runsDir: join(dir, "runs"), print: (l) => printed.push(l), now: () => new Date(t0 + Date.now() - realStart), maxRuns: 1 });
    expect(printed[0]).toBe(`next batch run at ${new Date(2030, 0, 7, 3, 0).toString()} (schedule "0 3 * * 1")`);
    expect(existsSync(join(dir, "a", "report.json"))).toBe(true);
    expect(readdirSync(join(dir, "runs")).length).toBe(1);

    // Waiting for next week's run ends promptly when aborted.
    const ac = new AbortController();
    const waiting = runSchedule({ loadFile: load, env: {}, getSteps: () => makeFakeSteps(), runsDir: join(dir, "runs"), print: () => {}, signal: ac.signal });
    setTimeout(() => ac.abort("SIGINT"), 20);
    await waiting;
    expect(readdirSync(join(dir, "runs")).length).toBe(1);

    const noSchedule = () => parseModelsFile("models: []\n", join(dir, "m.yaml"), "m.yaml");
    await expect(runSchedule({ loadFile: noSchedule, env: {}, getSteps: () => [] })).rejects.toThrow(/m\.yaml: no schedule: set/);
  });

  test("a bad per-model setting fails only that model", async () => {
    const dir = freshDir();
    const file = parseModelsFile(`defaults: {publish: false}\nmodels:\n  - repo: test/a\n    out: ${join(dir, "a")}\n  - repo: test/b\n    out: ${join(dir, "b")}\n    system_prompt: ./nope.md\n`, join(dir, "models.yaml"), "models.yaml");
    const result = await runBatch({ file, env: {}, getSteps: () => makeFakeSteps(), runsDir: join(dir, "runs"), print: () => {} });
    expect(result.rows.map((r) => r.status)).toEqual(["ok", "failed"]);
    expect(result.rows[1]!.error).toContain("system prompt file not found");
    expect(existsSync(join(dir, "b"))).toBe(false);
  });
});
