// `bun run bench:gpu [--shape llama3.1-8b] [--device webgpu] [--dtype float16] [--phase all|bench|pipeline] [--out dir]`
// The GPU measurement for a large model, in one command: a random BF16 checkpoint of a real shape is
// generated here (with the demo organism's tokenizer and chat template, so the pipeline can run on it),
// then the engine benchmark (prefill / decode tokens/s) and pull → elicit → extract → inject (fixed α) →
// validate (in <out>/run), while nvidia-smi samples GPU memory every 200 ms. Prints and writes <out>/gpu-summary.json:
// EP, tokens/s, peak GPU memory, and the wall time of every step (extract + validate included).
// A random model neither refuses nor answers, so the gate fails (exit 3 of the pipeline is expected);
// the figures are about speed and memory. Steps are cached: a killed run resumes where it stopped.
import cac from "cac";
import { CLI } from "./paths.ts";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { defaultCacheDir } from "../engine/model.ts";
import { numel } from "../engine/safetensors.ts";
import { SHAPES, tensorPlan, writeChatTokenizer, writeRandomCheckpoint } from "./random-checkpoint.ts";

const cli = cac("bench:gpu");
cli
  .option("--shape <name>", `random checkpoint shape: ${Object.keys(SHAPES).join(", ")}`, { default: "llama3.1-8b" })
  .option("--device <d>", "webgpu | cuda | auto | cpu", { default: "webgpu" })
  .option("--dtype <t>", "float16 | float32", { default: "float16" })
  .option("--phase <p>", "all | bench | pipeline", { default: "all" })
  .option("--out <dir>", "run directory", { default: "runs/gpu-validate" })
  .option("--n-eval <n>", "evaluation prompts per class", { default: 32 })
  .option("--max-new-tokens <n>", "tokens per evaluation answer", { default: 64 })
  .option("--graph-cache-gb <n>", "cap for the graph cache while running (default: 1.5 graphs of this shape)");
const { options } = cli.parse();
if (options.help) process.exit(0);

const ROOT = resolve(import.meta.dir, "..");
const shapeName = String(options.shape);
const shape = SHAPES[shapeName];
const phase = String(options.phase);
if (!shape || !["all", "bench", "pipeline"].includes(phase) || !["float16", "float32"].includes(String(options.dtype))) {
  console.error(`usage: --shape ${Object.keys(SHAPES).join("|")} --phase all|bench|pipeline --dtype float16|float32`);
  process.exit(2);
}
const log = (m: string) => console.error(`[bench:gpu] ${m}`);

// ---- the checkpoint -------------------------------------------------------------------------------
const params = tensorPlan(shape).reduce((s, t) => s + numel(t.shape), 0);
const dir = join(defaultCacheDir(), "bench", `${shapeName}-random-chat`);
const t0 = performance.now();
writeRandomCheckpoint(dir, shape, { shards: params > 2e9 ? 4 : 1, log });
writeChatTokenizer(join(ROOT, "demo", "organism-llama"), dir, shape.vocab_size);
const checkpointSeconds = (performance.now() - t0) / 1000;
log(`checkpoint ${dir}: ${(params / 1e9).toFixed(2)} B parameters (BF16), ready in ${checkpointSeconds.toFixed(0)} s`);

// Built graphs are as large as the weights: keep at most ~1.5 of them so the disk holds the run.
const graphBytes = params * (options.dtype === "float16" ? 2 : 4);
const env = { ...process.env, REALIGN_GRAPH_CACHE_GB: process.env.REALIGN_GRAPH_CACHE_GB ?? String(options.graphCacheGb ?? (1.5 * graphBytes) / 1e9) };

// ---- GPU memory -------------------------------------------------------------------------------------
/** Samples used GPU memory with nvidia-smi (every 200 ms) while running `work`; peak in MiB, null without nvidia-smi. */
async function withGpuMemory<T>(work: () => Promise<T>): Promise<{ result: T; peakMiB: number | null; baselineMiB: number | null }> {
  let proc: ReturnType<typeof Bun.spawn> | null = null;
  let peak: number | null = null;
  let baseline: number | null = null;
  try {
    proc = Bun.spawn(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "200"], { stdout: "pipe", stderr: "ignore" });
  } catch {
    proc = null;
  }
  const reading = (async () => {
    if (!proc) return;
    const decoder = new TextDecoder();
    let buffered = "";
    for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
      buffered += decoder.decode(chunk);
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) {
        const mib = Number.parseInt(line.trim(), 10);
        if (!Number.isFinite(mib)) continue;
        baseline ??= mib;
        peak = Math.max(peak ?? 0, mib);
      }
    }
  })();
  try {
    const result = await work();
    return { result, peakMiB: peak, baselineMiB: baseline };
  } finally {
    proc?.kill();
    await reading.catch(() => {});
  }
}

async function run(args: string[], capture: boolean): Promise<{ code: number; stdout: string }> {
  const p = Bun.spawn([process.execPath, ...args], { cwd: ROOT, env, stdout: capture ? "pipe" : "inherit", stderr: "inherit" });
  const stdout = capture ? await new Response(p.stdout as ReadableStream).text() : "";
  return { code: await p.exited, stdout };
}

const summary: Record<string, unknown> = { shape: shapeName, parameters: params, checkpoint: dir, device_requested: options.device, dtype: options.dtype, checkpoint_seconds: Number(checkpointSeconds.toFixed(1)) };

if (phase === "all" || phase === "bench") {
  log("engine benchmark (batch 8 × 128 prompt tokens, 32 decode steps)");
  const { result, peakMiB, baselineMiB } = await withGpuMemory(() =>
    run(["bench/bench.ts", "--model", dir, "--device", String(options.device), "--dtype", String(options.dtype), "--batch", "8", "--seq", "128", "--decode", "32", "--json"], true),
  );
  const line = result.stdout.trim().split("\n").pop() ?? "";
  summary.bench = { exit: result.code, ...(line.startsWith("{") ? JSON.parse(line) : { output: result.stdout.slice(-2000) }), peak_gpu_mib: peakMiB, gpu_mib_before: baselineMiB };
}

if (phase === "all" || phase === "pipeline") {
  // The run gets its own folder: realign refuses to run in one holding files that are not its own (the summary).
  const out = join(String(options.out), "run");
  const args = [
    CLI, dir, "--out", out, "--device", String(options.device), "--dtype", String(options.dtype), "--no-publish", "--offline",
    "--method", "rosi", "--alpha", "4", "--n-train", "32", "--n-val", "16", "--n-eval", String(options.nEval), "--max-new-tokens", String(options.maxNewTokens),
    // A random model shows no refusals under the safety prompt; the run is about speed, so the check is off.
    "--elicit-min-gap", "0",
  ];
  log(`pipeline: bun ${args.join(" ")}`);
  const { result, peakMiB, baselineMiB } = await withGpuMemory(() => run(args, false));
  const reportPath = join(out, "report.json");
  const report = existsSync(reportPath) ? (JSON.parse(readFileSync(reportPath, "utf8")) as { timings_s?: Record<string, number>; details?: Record<string, unknown> }) : null;
  const t = report?.timings_s ?? {};
  summary.pipeline = {
    exit: result.code,
    timings_s: t,
    extract_plus_validate_s: t.extract !== undefined && t.validate !== undefined ? Number((t.extract + t.validate).toFixed(1)) : null,
    validation: report?.details ?? null,
    peak_gpu_mib: peakMiB,
    gpu_mib_before: baselineMiB,
  };
}

mkdirSync(String(options.out), { recursive: true });
writeFileSync(join(String(options.out), "gpu-summary.json"), JSON.stringify(summary, null, 2) + "\n");
console.log(JSON.stringify(summary, null, 2));
