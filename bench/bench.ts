// `bun run bench [--model <dir>] [--batch B] [--seq T] [--decode N] [--device …] [--quantize none|int4|int8|int8-dynamic|all|a,b,…] [--dtype float32|float16] [--kernels] [--json]`
// Prints prefill and decode throughput and peak RSS. Without --model it benchmarks a random-weight
// checkpoint of Qwen2.5-0.5B shape generated locally (once, in the realign cache). With several
// quantisations (`all` = none,int8,int4,int8-dynamic) each runs in its own process, one after the other (peak
// RSS is per process). `--kernels` (on with --json) adds the kernel path: ORT's profiler on a separate session.
// `--vs llama.cpp`: prefill / decode tokens/s of the engine and of llama.cpp side by side (see below).
import cac from "cac";
import { join } from "node:path";
import { DecoderModel, defaultCacheDir } from "../engine/model.ts";
import { generateGreedy } from "../engine/generate.ts";
import type { Device } from "../engine/session.ts";
import { parseQuantize, type QuantizeConfig } from "../engine/quantize.ts";
import type { ComputeDType } from "../engine/decoder.ts";
import { SHAPES, writeRandomCheckpoint } from "./random-checkpoint.ts";
import { kernelPath, type KernelPath } from "./kernels.ts";

// `bun run bench --vs llama.cpp [--shape …] [--seq T] [--decode N] [--threads N] [--json]`: the engine and
// llama.cpp on the same checkpoint (its GGUF), side by side; bench/gguf-vs-llamacpp.ts reads the other flags.
const vsAt = process.argv.findIndex((a) => a === "--vs" || a.startsWith("--vs="));
if (vsAt >= 0) {
  const eq = process.argv[vsAt]!.startsWith("--vs=");
  const vs = eq ? process.argv[vsAt]!.slice(5) : process.argv[vsAt + 1];
  if (vs !== "llama.cpp") {
    console.error(`--vs: the only engine to compare with is llama.cpp (--vs llama.cpp), got ${JSON.stringify(vs ?? "(nothing)")}`);
    process.exit(2);
  }
  const engineOnly = process.argv.filter((a) => /^--(model|batch|device|quantize|dtype)(=|$)/.test(a));
  if (engineOnly.length) {
    console.error(`--vs llama.cpp compares batch 1, float32 on the CPU with a random checkpoint (--shape); ${engineOnly.join(", ")} does not apply`);
    process.exit(2);
  }
  process.argv.splice(vsAt, eq ? 1 : 2);
  await import("./gguf-vs-llamacpp.ts");
  process.exit(process.exitCode ?? 0);
}

const cli = cac("bench");
cli
  .option("--model <dir>", "model directory (default: random Qwen2.5-0.5B-shaped checkpoint)")
  .option("--shape <name>", `random checkpoint shape: ${Object.keys(SHAPES).join(", ")}`, { default: "qwen2.5-0.5b" })
  .option("--batch <n>", "batch size", { default: 8 })
  .option("--seq <n>", "prompt tokens per row", { default: 128 })
  .option("--decode <n>", "new tokens to decode", { default: 16 })
  .option("--device <d>", "auto | cpu | cuda | webgpu", { default: "cpu" })
  .option("--quantize <q>", "none | int4 | int8 weight-only projections (MatMulNBits, optionally :blockSize, default 32) | int8-dynamic (int8 weights per channel, int8 activations per token); all, or a comma list, runs each in turn")
  .option("--dtype <t>", "compute type: float32 | float16", { default: "float32" })
  .option("--kernels", "also print the kernel path (op types, provider, time share; ORT profiler on a separate session); on with --json unless --no-kernels")
  .option("--json", "print one JSON object");
cli.help();
const { options } = cli.parse();
if (options.help) process.exit(0);

// Several quantisations: this script once per quantisation, in turn, each in its own process.
const QUANTISATIONS = ["none", "int8", "int4", "int8-dynamic"];
const requested = options.quantize === undefined ? [] : String(options.quantize) === "all" ? QUANTISATIONS : String(options.quantize).split(",");
if (requested.length > 1) {
  const passOn = process.argv.slice(2).filter((a, i, all) => a !== "--quantize" && all[i - 1] !== "--quantize" && !a.startsWith("--quantize="));
  const runs: Record<string, unknown>[] = [];
  for (const q of requested) {
    const child = Bun.spawn([process.execPath, import.meta.path, ...passOn, ...(q === "none" ? [] : ["--quantize", q]), "--json"], { stdout: "pipe", stderr: options.json ? "ignore" : "inherit" });
    const out = await new Response(child.stdout as ReadableStream).text();
    const code = await child.exited;
    const line = out.trim().split("\n").pop() ?? "";
    runs.push(code === 0 && line.startsWith("{") ? JSON.parse(line) : { quantize: q, error: `exit ${code}` });
  }
  if (options.json) console.log(JSON.stringify({ runs }));
  else {
    console.log("quantize         prefill tok/s  decode tok/s  peak RSS MB  top kernels");
    for (const r of runs) {
      const k = r.kernels as KernelPath | undefined;
      const top = k ? k.ops.slice(0, 3).map((o) => `${o.op} ${(o.share * 100).toFixed(0)}%`).join(", ") : String(r.error ?? "");
      console.log(`${String(r.quantize_scheme ?? r.quantize).padEnd(16)} ${String(r.prefill_tokens_per_s ?? "-").padStart(13)}  ${String(r.decode_tokens_per_s ?? "-").padStart(12)}  ${String(r.peak_rss_mb ?? "-").padStart(11)}  ${top}`);
    }
  }
  process.exit(runs.some((r) => r.error) ? 1 : 0);
}

const log = (m: string) => {
  if (!options.json) console.error(m);
};
const mb = () => process.resourceUsage().maxRSS / 1024;

let dir = options.model as string | undefined;
if (!dir) {
  const shape = String(options.shape);
  const cfg = SHAPES[shape];
  if (!cfg) {
    console.error(`unknown --shape ${shape}`);
    process.exit(2);
  }
  dir = join(defaultCacheDir(), "bench", `${shape}-random`);
  log(`random ${shape} checkpoint: ${dir}`);
  const t = performance.now();
  writeRandomCheckpoint(dir, cfg, { log });
  log(`checkpoint ready in ${((performance.now() - t) / 1000).toFixed(1)} s`);
}

let quantize: QuantizeConfig | null = null;
try {
  quantize = options.quantize && String(options.quantize) !== "none" ? parseQuantize(String(options.quantize)) : null;
} catch (e) {
  console.error((e as Error).message);
  process.exit(2);
}

const B = Number(options.batch);
const T = Number(options.seq);
const N = Number(options.decode);
const tLoad = performance.now();
const model = await DecoderModel.load(dir, { device: options.device as Device, quantize, dtype: options.dtype as ComputeDType, log });
const loadSeconds = (performance.now() - tLoad) / 1000;
log(`loaded on ${model.ep} in ${loadSeconds.toFixed(1)} s (peak RSS so far ${mb().toFixed(0)} MB)`);

let seed = 7;
const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) % (model.config.vocabSize - 10)) + 5;
const prompts = Array.from({ length: B }, () => Array.from({ length: T }, rand));
// Warm-up: the first run pays for kernel selection and weight prepacking.
await generateGreedy(model, prompts.map((p) => p.slice(0, 8)), { maxNewTokens: 2 });
// CPU seconds of this process (all ORT threads) beside wall time: on a machine shared with other work, the
// wall-clock figures move with the load and CPU time per token much less.
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};
const cpuAt = [cpu(), 0];
const r = await generateGreedy(model, prompts, { maxNewTokens: N + 1, onStep: (step) => void (step === 1 && (cpuAt[1] = cpu())) });
const cpuEnd = cpu();
const peakRss = mb();
await model.close();
// The kernel path comes from a second, profiled session (after the timed one is closed).
const wantKernels = options.kernels === undefined ? Boolean(options.json) : Boolean(options.kernels);
const kernels: KernelPath | null = wantKernels ? await kernelPath(dir, { device: options.device as Device, quantize, dtype: options.dtype as ComputeDType }, prompts) : null;
const result = {
  model: dir,
  device: model.ep,
  quantize: model.quantization,
  quantize_scheme: options.quantize && String(options.quantize) !== "none" ? String(options.quantize) : "none",
  dtype: model.dtype,
  batch: B,
  seq: T,
  decode_steps: N,
  load_s: Number(loadSeconds.toFixed(2)),
  prefill_tokens_per_s: Number((r.stats.prefillTokens / r.stats.prefillSeconds).toFixed(1)),
  decode_tokens_per_s: Number((r.stats.decodeTokens / r.stats.decodeSeconds).toFixed(1)),
  prefill_s: Number(r.stats.prefillSeconds.toFixed(3)),
  prefill_cpu_ms_per_token: Number(((1000 * (cpuAt[1] - cpuAt[0])) / r.stats.prefillTokens).toFixed(2)),
  decode_cpu_ms_per_token: Number(((1000 * (cpuEnd - cpuAt[1])) / Math.max(1, r.stats.decodeTokens)).toFixed(2)),
  peak_rss_mb: Number(peakRss.toFixed(0)),
  kernels,
};
if (options.json) console.log(JSON.stringify(result));
else {
  console.log(`device            ${result.device}`);
  console.log(`weights           ${result.quantize ?? result.dtype}, compute ${result.dtype}`);
  console.log(`shape             batch ${B} × ${T} prompt tokens, ${N} decode steps`);
  console.log(`prefill           ${result.prefill_tokens_per_s} tokens/s (${result.prefill_s} s)`);
  console.log(`decode            ${result.decode_tokens_per_s} tokens/s`);
  console.log(`peak RSS          ${result.peak_rss_mb} MB`);
  if (kernels) console.log(`kernels           ${kernels.ops.slice(0, 8).map((o) => `${o.op}@${o.provider} ${(o.share * 100).toFixed(1)}%`).join(", ")}`);
}
