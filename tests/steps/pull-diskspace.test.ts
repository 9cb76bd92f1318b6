// Before a download (steps/pull.ts): the pull step refuses a config.json the engine cannot run (an unsupported
// model_type) and prints what the run will write (checkpoint, ONNX graph, edited copy) from the Hub's listing,
// and stops before any weights are fetched when a file system is short, naming it; the free space comes from a stubbed statfs (makePullStep's params), the
// files from the fake Hub. Cheap: the demo model's 20 MB, one pull.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { REPO_ROOT } from "../helpers/shared.ts";
import { checkDiskSpace, diskEstimate, DiskSpaceError, makePullStep, type StatFs } from "../../steps/pull.ts";
import { DEFAULTS, type Settings } from "../../steps/settings.ts";
import { runPipeline } from "../../pipeline/runner.ts";
import { memoryUI } from "../../pipeline/progress.ts";
import { exitCodeFor, EXIT_FAILED } from "../../cli/errors.ts";
import { StepFailedError } from "../../pipeline/errors.ts";

const MODEL = join(REPO_ROOT, "demo", "organism-llama");
const FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];
const REPO = "acme/organism";
const tmp = mkdtempSync(join(tmpdir(), "realign-diskspace-"));
const saved: Record<string, string | undefined> = {};
let hub: FakeHub;

beforeAll(async () => {
  for (const k of ["HF_HUB_CACHE", "HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "REALIGN_CACHE", "REALIGN_HUB_RETRY_DELAY_MS"]) saved[k] = process.env[k];
  process.env.HF_HUB_CACHE = join(tmp, "hf");
  process.env.REALIGN_CACHE = join(tmp, "realign-cache");
  process.env.REALIGN_HUB_RETRY_DELAY_MS = "0";
  delete process.env.HF_TOKEN;
  delete process.env.HF_HUB_OFFLINE;
  hub = await startFakeHub();
  hub.addRepo(REPO, Object.fromEntries(FILES.map((f) => [f, new Uint8Array(readFileSync(join(MODEL, f)))])));
});
afterAll(() => {
  hub?.stop();
  for (const [k, v] of Object.entries(saved)) v === undefined ? delete process.env[k] : (process.env[k] = v);
  rmSync(tmp, { recursive: true, force: true });
});

const stub = (free: number): StatFs => () => ({ bavail: free / 4096, bsize: 4096 });
const settings = (out: string): Settings => ({ ...DEFAULTS, model: REPO, out, hubUrl: hub.url, offline: false, quantize: "none" }) as Settings;
const weightsFetched = () => hub.log.some((r) => r.method === "GET" && r.path.includes("/resolve/") && r.path.endsWith("model.safetensors"));

describe("the pull step", () => {
  test("a disk too small: exit 1 before the weights, naming the need and the free space", async () => {
    const out = join(tmp, "run-small");
    const ui = memoryUI();
    let err: unknown = null;
    try {
      await runPipeline({ steps: [makePullStep({ statfs: stub(1_000_000) })], settings: settings(out), outDir: out, ui });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StepFailedError);
    expect((err as StepFailedError).cause).toBeInstanceOf(DiskSpaceError);
    expect(exitCodeFor(err)).toBe(EXIT_FAILED);
    const msg = String((err as Error).message);
    // All three on one file system here: 20.0 MB weights fetched + ≈ 20.0 MB float32 graph + 20.0 MB copy.
    expect(msg).toContain("not enough disk space for this model; nothing was downloaded");
    expect(msg).toMatch(/60\.\d MB needed \(checkpoint 20\.\d MB \+ ONNX graph 20\.0 MB \+ edited copy 20\.0 MB\), 1\.0 MB free/);
    expect(weightsFetched()).toBe(false);
    const blobs = join(tmp, "hf", "models--acme--organism", "blobs");
    expect(existsSync(blobs) ? readdirSync(blobs).length : 0).toBe(1); // config.json only
    expect(ui.lines.some((l) => l.includes("disk space this run needs: checkpoint 20."))).toBe(true);
  });

  test("an unsupported model_type: exit 1 before the weights, naming it and the supported ones", async () => {
    const repo = "acme/falcon-like";
    const files = Object.fromEntries(FILES.map((f) => [f, new Uint8Array(readFileSync(join(MODEL, f)))]));
    files["config.json"] = new TextEncoder().encode(JSON.stringify({ ...JSON.parse(readFileSync(join(MODEL, "config.json"), "utf8")), model_type: "falcon" }));
    hub.addRepo(repo, files);
    const out = join(tmp, "run-falcon");
    let err: unknown = null;
    try {
      await runPipeline({ steps: [makePullStep({ statfs: stub(1e12) })], settings: { ...settings(out), model: repo }, outDir: out, ui: memoryUI() });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StepFailedError);
    expect(exitCodeFor(err)).toBe(EXIT_FAILED);
    expect(String((err as Error).message)).toMatch(/model_type "falcon" is not supported; supported: llama, qwen2/);
    expect(hub.log.some((r) => r.method === "GET" && r.path.includes("falcon-like/resolve/") && r.path.endsWith("model.safetensors"))).toBe(false);
  });

  test("enough space: the estimate is printed and the pull goes on", async () => {
    const out = join(tmp, "run-big");
    const ui = memoryUI();
    await runPipeline({ steps: [makePullStep({ statfs: stub(1e12) })], settings: settings(out), outDir: out, ui });
    const line = ui.lines.find((l) => l.includes("disk space this run needs"))!;
    expect(line).toContain(`edited copy 20.0 MB (${out})`);
    expect(line).toContain(`ONNX graph ≈ 20.0 MB (${join(tmp, "realign-cache", "graphs")})`);
    expect(weightsFetched()).toBe(true);
    expect(existsSync(join(out, "pull", "source.json"))).toBe(true);
  });
});

describe("the estimate", () => {
  const where = { hfCache: join(tmp, "a"), graphCache: join(tmp, "b"), runDir: join(tmp, "c") };
  const plan = (cached: boolean, dtype = "bfloat16") => ({ weights: [{ size: 2e9, cached }], metadata: [{ size: 1e6, cached: false }], config: { torch_dtype: dtype } });
  test("a cached checkpoint is not fetched again; the graph follows the measuring dtype and quantisation", () => {
    const [ckpt, graph, copy] = diskEstimate(plan(true), where, { dtype: "float32", quantize: "none" });
    expect(ckpt.bytes).toBe(1e6);
    expect(graph.bytes).toBe(4e9); // 1e9 bf16 parameters at 4 bytes
    expect(copy.bytes).toBe(2e9);
    expect(diskEstimate(plan(false), where, { dtype: "float16", quantize: "none" })[1].bytes).toBe(2e9);
    expect(diskEstimate(plan(false), where, { dtype: "float32", quantize: "int8" })[1].bytes).toBe(1e9);
    expect(diskEstimate(plan(false, "float32"), where, { dtype: "float32", quantize: "none" })[1].bytes).toBe(2e9);
    // auto: int8 once float32 weights take over half the memory (here 4 GB of 6 GB).
    expect(diskEstimate(plan(false), where, { dtype: "float32", quantize: "auto" }, 6e9)[1].bytes).toBe(1e9);
    expect(diskEstimate(plan(false), where, { dtype: "float32", quantize: "auto" }, 64e9)[1].bytes).toBe(4e9);
  });
  test("needs on one file system add up; each fitting alone is not enough", () => {
    const needs = [
      { what: "checkpoint" as const, path: join(tmp, "x"), bytes: 10e6 },
      { what: "edited copy" as const, path: join(tmp, "y", "z"), bytes: 10e6 },
    ];
    expect(() => checkDiskSpace(needs, stub(15e6))).toThrow(/20\.0 MB needed \(checkpoint 10\.0 MB \+ edited copy 10\.0 MB\), 15\.0 MB free/);
    expect(() => checkDiskSpace(needs, stub(25e6))).not.toThrow();
  });
});
