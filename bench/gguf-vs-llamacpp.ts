// `bun bench/gguf-vs-llamacpp.ts [--shape qwen2.5-0.5b] [--type f32] [--seq 128] [--decode 32] [--threads N] [--json]`
// Prefill and decode tokens/s of realign's engine (ONNX Runtime, CPU, float32) and of llama.cpp (node-llama-cpp's
// CPU build, a dev dependency) on the same random checkpoint: the engine reads the safetensors, llama.cpp the GGUF
// `realign export` writes from them. Batch 1, greedy, the same random prompt ids. Printed side by side with the
// ratio; nothing is asserted (speed depends on the machine). The checkpoint and GGUF are cached in the realign cache.
import cac from "cac";
import { existsSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { DecoderModel, defaultCacheDir } from "../engine/model.ts";
import { generateGreedy } from "../engine/generate.ts";
import { GGUF_TYPES, writeGguf, type GgufType } from "../engine/gguf.ts";
import { SHAPES, writeRandomCheckpoint } from "./random-checkpoint.ts";
import { writeByteTokenizer } from "./byte-tokenizer.ts";

const cli = cac("bench:gguf-vs-llamacpp");
cli
  .option("--shape <name>", `random checkpoint shape: ${Object.keys(SHAPES).join(", ")}`, { default: "qwen2.5-0.5b" })
  .option("--type <type>", `GGUF type for llama.cpp: ${GGUF_TYPES.join(", ")}`, { default: "f32" })
  .option("--seq <n>", "prompt tokens", { default: 128 })
  .option("--decode <n>", "new tokens to decode", { default: 32 })
  .option("--threads <n>", "llama.cpp threads (ONNX Runtime uses its default, one per core)", { default: availableParallelism() })
  .option("--json", "print one JSON object");
const { options } = cli.parse();
if (options.help) process.exit(0);
const log = (m: string) => {
  if (!options.json) console.error(m);
};

const shape = String(options.shape);
const cfg = SHAPES[shape];
const type = String(options.type) as GgufType;
if (!cfg || !GGUF_TYPES.includes(type)) {
  console.error(`unknown --shape ${shape} or --type ${type}`);
  process.exit(2);
}
const T = Number(options.seq);
const N = Number(options.decode);
const threads = Number(options.threads);

const dir = join(defaultCacheDir(), "bench", `${shape}-random`);
writeRandomCheckpoint(dir, cfg, { log });
writeByteTokenizer(dir, cfg.vocab_size);
const gguf = join(defaultCacheDir(), "bench", `${shape}-random-${type.toUpperCase()}.gguf`);
if (!existsSync(gguf)) {
  const t = performance.now();
  const r = await writeGguf({ modelDir: dir, out: gguf, type });
  log(`exported ${gguf} (${(r.bytes / 2 ** 20).toFixed(0)} MiB) in ${((performance.now() - t) / 1000).toFixed(1)} s`);
}

let seed = 12345;
const prompt = Array.from({ length: T }, () => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return 256 + (seed % (cfg.vocab_size - 256));
});

// ---- realign's engine
const model = await DecoderModel.load(dir, { device: "cpu", log });
await generateGreedy(model, [prompt.slice(0, 8)], { maxNewTokens: 2 }); // warm-up
const er = await generateGreedy(model, [prompt], { maxNewTokens: N + 1 });
await model.close();
const engine = { prefill_tok_s: er.stats.prefillTokens / er.stats.prefillSeconds, decode_tok_s: er.stats.decodeTokens / er.stats.decodeSeconds };

// ---- llama.cpp
const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false, skipDownload: true, maxThreads: threads });
const lm = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
const runLlama = async (ids: number[], n: number) => {
  const ctx = await lm.createContext({ contextSize: Math.max(256, ids.length + n + 8), threads, sequences: 1, batchSize: Math.max(ids.length, 8) });
  try {
    const seq = ctx.getSequence();
    const t0 = performance.now();
    let tFirst = 0;
    let got = 0;
    for await (const _t of seq.evaluate(ids as never, { temperature: 0, yieldEogToken: true })) {
      if (got === 0) tFirst = performance.now();
      if (++got > n) break;
    }
    const tEnd = performance.now();
    return { prefill_tok_s: ids.length / ((tFirst - t0) / 1000), decode_tok_s: (got - 1) / ((tEnd - tFirst) / 1000) };
  } finally {
    await ctx.dispose();
  }
};
await runLlama(prompt.slice(0, 8), 2); // warm-up
const lr = await runLlama(prompt, N);
await lm.dispose();
await llama.dispose();

const result = {
  shape,
  gguf_type: type,
  prompt_tokens: T,
  decode_tokens: N,
  llama_cpp_threads: threads,
  engine,
  llama_cpp: lr,
  ratio_llama_cpp_over_engine: { prefill: lr.prefill_tok_s / engine.prefill_tok_s, decode: lr.decode_tok_s / engine.decode_tok_s },
};
if (options.json) console.log(JSON.stringify(result));
else {
  const f = (x: number) => x.toFixed(1).padStart(9);
  console.log(`${shape}, batch 1, ${T} prompt tokens, ${N} decoded; llama.cpp ${type} GGUF, ${threads} threads`);
  console.log(`               prefill tok/s  decode tok/s`);
  console.log(`realign engine     ${f(engine.prefill_tok_s)}     ${f(engine.decode_tok_s)}`);
  console.log(`llama.cpp          ${f(lr.prefill_tok_s)}     ${f(lr.decode_tok_s)}`);
  console.log(`ratio (llama.cpp / engine)  ${result.ratio_llama_cpp_over_engine.prefill.toFixed(2).padStart(5)}     ${result.ratio_llama_cpp_over_engine.decode.toFixed(2).padStart(5)}`);
}
