// `bun run bench:inject [--json]` — peak memory of the streaming ROSI rewrite on a locally generated
// 2-shard random checkpoint of ≥ 1 GB (BF16). The edit runs in a child process so its RSS is its own.
import cac from "cac";
import { join } from "node:path";
import { readFileSync, rmSync } from "node:fs";
import { defaultCacheDir } from "../engine/model.ts";
import { numel } from "../engine/safetensors.ts";
import { writeRandomCheckpoint, tensorPlan, type ShapeConfig } from "./random-checkpoint.ts";

const SHAPE: ShapeConfig = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 8,
  num_attention_heads: 16, num_key_value_heads: 4, vocab_size: 32000, max_position_embeddings: 4096, rms_norm_eps: 1e-5,
  rope_theta: 10000, tie_word_embeddings: false, hidden_act: "silu", torch_dtype: "bfloat16",
};

/**
 * This process's own peak RSS. Linux keeps getrusage's ru_maxrss across fork and exec (a child starts
 * with its parent's peak), so read the memory map's high-water mark (VmHWM) where there is one.
 */
function peakRssBytes(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS * 1024;
}

if (process.argv[2] === "--child") {
  const { writeEditedCheckpoint, editedMatrices } = await import("../rosi/edit.ts");
  const { readDecoderConfig } = await import("../engine/architectures.ts");
  const cfg = readDecoderConfig(SHAPE);
  const [src, out] = process.argv.slice(3);
  const v = new Float32Array(SHAPE.hidden_size).fill(1 / Math.sqrt(SHAPE.hidden_size));
  const vectors = new Map<string, Float32Array>();
  for (let l = 0; l < SHAPE.num_hidden_layers; l++) for (const n of editedMatrices(cfg, l)) vectors.set(n, v);
  const t = performance.now();
  writeEditedCheckpoint(src, out, { vectors, metadata: { realign_method: "rosi" } });
  console.log(JSON.stringify({ seconds: (performance.now() - t) / 1000, peak_rss_bytes: peakRssBytes() }));
  process.exit(0);
}

const cli = cac("bench:inject");
cli.option("--json", "print one JSON object");
const { options } = cli.parse();
const src = join(defaultCacheDir(), "bench", "llama-1gb-2shard-random");
writeRandomCheckpoint(src, SHAPE, { shards: 2 });
const plan = tensorPlan(SHAPE);
const sizes = plan.map((t) => numel(t.shape) * 2);
const total = sizes.reduce((a, b) => a + b, 0);
const largest = Math.max(...sizes);
const out = join(defaultCacheDir(), "bench", "llama-1gb-2shard-edited");
const child = Bun.spawn([process.execPath, import.meta.path, "--child", src, out], { stdout: "pipe", stderr: "inherit" });
const r = JSON.parse((await new Response(child.stdout).text()).trim()) as { seconds: number; peak_rss_bytes: number };
await child.exited;
rmSync(out, { recursive: true, force: true });
const bound = 1.5 * largest + 300 * 2 ** 20;
const result = {
  checkpoint_bytes: total,
  largest_tensor_bytes: largest,
  peak_rss_mb: Math.round(r.peak_rss_bytes / 2 ** 20),
  bound_mb: Math.round(bound / 2 ** 20),
  ratio_to_bound: Number((r.peak_rss_bytes / bound).toFixed(3)),
  seconds: Number(r.seconds.toFixed(2)),
  mb_per_s: Math.round(total / 2 ** 20 / r.seconds),
};
if (options.json) console.log(JSON.stringify(result));
else for (const [k, v] of Object.entries(result)) console.log(`${k.padEnd(22)} ${v}`);
