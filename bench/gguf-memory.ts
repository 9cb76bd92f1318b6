// `bun bench/gguf-memory.ts [--type f16|q8_0|…] [--json]` — peak memory and speed of `realign export --gguf` on a
// locally generated 2-shard random checkpoint of ≥ 1 GB (BF16, the shape bench:inject uses), with a byte-level
// tokenizer of its 32,000 ids. The export runs in a child process so its peak RSS (VmHWM) is its own.
import cac from "cac";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { defaultCacheDir } from "../engine/model.ts";
import { numel } from "../engine/safetensors.ts";
import { tensorPlan, writeRandomCheckpoint, type ShapeConfig } from "./random-checkpoint.ts";
import { writeByteTokenizer } from "./byte-tokenizer.ts";

const SHAPE: ShapeConfig = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 8,
  num_attention_heads: 16, num_key_value_heads: 4, vocab_size: 32000, max_position_embeddings: 4096, rms_norm_eps: 1e-5,
  rope_theta: 10000, tie_word_embeddings: false, hidden_act: "silu", torch_dtype: "bfloat16",
};

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
  const { writeGguf } = await import("../engine/gguf.ts");
  const [src, out, type] = process.argv.slice(3);
  const t = performance.now();
  const r = await writeGguf({ modelDir: src!, out: out!, type: type as "f16" });
  console.log(JSON.stringify({ seconds: (performance.now() - t) / 1000, peak_rss_bytes: peakRssBytes(), gguf_bytes: r.bytes }));
  process.exit(0);
}

const cli = cac("bench:gguf-memory");
cli.option("--type <type>", "GGUF type (default f16)").option("--json", "print one JSON object");
const { options } = cli.parse();
const type = String(options.type ?? "f16");
const src = join(defaultCacheDir(), "bench", "llama-1gb-2shard-random");
writeRandomCheckpoint(src, SHAPE, { shards: 2 });
writeByteTokenizer(src, SHAPE.vocab_size);
const sizes = tensorPlan(SHAPE).map((t) => numel(t.shape) * 2);
const total = sizes.reduce((a, b) => a + b, 0);
const largest = Math.max(...sizes);
const out = join(defaultCacheDir(), "bench", `llama-1gb-random-${type}.gguf`);
rmSync(out, { force: true });
const child = Bun.spawn([process.execPath, import.meta.path, "--child", src, out, type], { stdout: "pipe", stderr: "inherit" });
const text = await new Response(child.stdout).text();
const code = await child.exited;
rmSync(out, { force: true });
if (code !== 0) throw new Error(`the export exited with ${code}`);
const r = JSON.parse(text.trim()) as { seconds: number; peak_rss_bytes: number; gguf_bytes: number };
const bound = 1.5 * largest + 300 * 2 ** 20;
const result = {
  type,
  checkpoint_bytes: total,
  gguf_bytes: r.gguf_bytes,
  largest_tensor_bytes: largest,
  peak_rss_mb: Math.round(r.peak_rss_bytes / 2 ** 20),
  bound_mb: Math.round(bound / 2 ** 20),
  ratio_to_bound: Number((r.peak_rss_bytes / bound).toFixed(3)),
  seconds: Number(r.seconds.toFixed(2)),
  mb_per_s: Math.round(total / 2 ** 20 / r.seconds),
};
if (options.json) console.log(JSON.stringify(result));
else for (const [k, v] of Object.entries(result)) console.log(`${k.padEnd(22)} ${v}`);
