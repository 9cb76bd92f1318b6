// Random-weight checkpoints of real model shapes, for benchmarks (no downloads needed).
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { f32ToBf16 } from "../engine/dtype.ts";
import { numel, SafetensorsStreamWriter, type TensorSpec } from "../engine/safetensors.ts";

export interface ShapeConfig {
  model_type: string;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_key_value_heads: number;
  vocab_size: number;
  tie_word_embeddings: boolean;
  [key: string]: unknown;
}

/** The demo organism's size, shared by the tiny shapes of every architecture. */
const TINY = {
  hidden_size: 256,
  intermediate_size: 688,
  num_hidden_layers: 4,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  vocab_size: 4096,
  max_position_embeddings: 2048,
  torch_dtype: "bfloat16",
};

export const SHAPES: Record<string, ShapeConfig> = {
  // The demo organism's shape: smoke runs of the GPU scripts in seconds.
  "llama-tiny": {
    ...TINY,
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    hidden_act: "silu",
  },
  // The same size in the other architectures (q/k/v biases and a tied head; sliding windows; Gemma 2's sandwich
  // norms, softcaps, GELU and alternating windows), for smoke runs of the pipeline on each.
  "qwen2-tiny": {
    ...TINY,
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
    num_key_value_heads: 2,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
    hidden_act: "silu",
  },
  // Qwen3: no biases, an RMSNorm over every query and key head; head_dim apart from hidden / heads, as in its releases.
  "qwen3-tiny": {
    ...TINY,
    architectures: ["Qwen3ForCausalLM"],
    model_type: "qwen3",
    num_key_value_heads: 2,
    head_dim: 64,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
    hidden_act: "silu",
  },
  "mistral-tiny": {
    ...TINY,
    architectures: ["MistralForCausalLM"],
    model_type: "mistral",
    sliding_window: 24,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    hidden_act: "silu",
  },
  "gemma2-tiny": {
    ...TINY,
    architectures: ["Gemma2ForCausalLM"],
    model_type: "gemma2",
    head_dim: 32,
    sliding_window: 24,
    query_pre_attn_scalar: 32,
    attn_logit_softcapping: 50,
    final_logit_softcapping: 30,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: true,
    hidden_activation: "gelu_pytorch_tanh",
  },
  // Gemma 3's text decoder: Gemma 2's norms plus head norms, every second layer global here (pattern 2), the
  // sliding layers with their own rotary; attention 512 wide in a 256-wide model.
  "gemma3-tiny": {
    ...TINY,
    architectures: ["Gemma3ForCausalLM"],
    model_type: "gemma3_text",
    head_dim: 64,
    sliding_window: 24,
    sliding_window_pattern: 2,
    query_pre_attn_scalar: 64,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    rope_local_base_freq: 10000,
    tie_word_embeddings: true,
    hidden_activation: "gelu_pytorch_tanh",
  },
  "qwen2.5-0.5b": {
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
    hidden_size: 896,
    intermediate_size: 4864,
    num_hidden_layers: 24,
    num_attention_heads: 14,
    num_key_value_heads: 2,
    vocab_size: 151936,
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
    hidden_act: "silu",
    torch_dtype: "bfloat16",
  },
  "qwen3-0.6b": {
    architectures: ["Qwen3ForCausalLM"],
    model_type: "qwen3",
    hidden_size: 1024,
    intermediate_size: 3072,
    num_hidden_layers: 28,
    num_attention_heads: 16,
    num_key_value_heads: 8,
    head_dim: 128,
    vocab_size: 151936,
    max_position_embeddings: 40960,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
    hidden_act: "silu",
    torch_dtype: "bfloat16",
  },
  "gemma3-1b": {
    architectures: ["Gemma3ForCausalLM"],
    model_type: "gemma3_text",
    hidden_size: 1152,
    intermediate_size: 6912,
    num_hidden_layers: 26,
    num_attention_heads: 4,
    num_key_value_heads: 1,
    head_dim: 256,
    vocab_size: 262144,
    max_position_embeddings: 32768,
    sliding_window: 512,
    sliding_window_pattern: 6,
    query_pre_attn_scalar: 256,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    rope_local_base_freq: 10000,
    tie_word_embeddings: true,
    hidden_activation: "gelu_pytorch_tanh",
    torch_dtype: "bfloat16",
  },
  "llama3.1-8b": {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 128256,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: { factor: 8, high_freq_factor: 4, low_freq_factor: 1, original_max_position_embeddings: 8192, rope_type: "llama3" },
    tie_word_embeddings: false,
    hidden_act: "silu",
    torch_dtype: "bfloat16",
  },
};

/** HF tensor names and shapes of a Llama-family decoder. */
export function tensorPlan(cfg: ShapeConfig): TensorSpec[] {
  const H = cfg.hidden_size;
  const D = typeof cfg.head_dim === "number" ? cfg.head_dim : H / cfg.num_attention_heads;
  const q = cfg.num_attention_heads * D;
  const kv = cfg.num_key_value_heads * D;
  const plan: TensorSpec[] = [{ name: "model.embed_tokens.weight", dtype: "BF16", shape: [cfg.vocab_size, H] }];
  const bias = cfg.model_type === "qwen2";
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}`;
    plan.push(
      { name: `${p}.input_layernorm.weight`, dtype: "BF16", shape: [H] },
      { name: `${p}.post_attention_layernorm.weight`, dtype: "BF16", shape: [H] },
      { name: `${p}.self_attn.q_proj.weight`, dtype: "BF16", shape: [q, H] },
      { name: `${p}.self_attn.k_proj.weight`, dtype: "BF16", shape: [kv, H] },
      { name: `${p}.self_attn.v_proj.weight`, dtype: "BF16", shape: [kv, H] },
      { name: `${p}.self_attn.o_proj.weight`, dtype: "BF16", shape: [H, q] },
      { name: `${p}.mlp.gate_proj.weight`, dtype: "BF16", shape: [cfg.intermediate_size, H] },
      { name: `${p}.mlp.up_proj.weight`, dtype: "BF16", shape: [cfg.intermediate_size, H] },
      { name: `${p}.mlp.down_proj.weight`, dtype: "BF16", shape: [H, cfg.intermediate_size] },
    );
    if (cfg.model_type === "qwen3" || cfg.model_type === "gemma3_text") {
      plan.push({ name: `${p}.self_attn.q_norm.weight`, dtype: "BF16", shape: [D] }, { name: `${p}.self_attn.k_norm.weight`, dtype: "BF16", shape: [D] });
    }
    if (cfg.model_type === "gemma2" || cfg.model_type === "gemma3_text") {
      plan.push({ name: `${p}.pre_feedforward_layernorm.weight`, dtype: "BF16", shape: [H] }, { name: `${p}.post_feedforward_layernorm.weight`, dtype: "BF16", shape: [H] });
    }
    if (bias) {
      plan.push(
        { name: `${p}.self_attn.q_proj.bias`, dtype: "BF16", shape: [q] },
        { name: `${p}.self_attn.k_proj.bias`, dtype: "BF16", shape: [kv] },
        { name: `${p}.self_attn.v_proj.bias`, dtype: "BF16", shape: [kv] },
      );
    }
  }
  plan.push({ name: "model.norm.weight", dtype: "BF16", shape: [H] });
  if (!cfg.tie_word_embeddings) plan.push({ name: "lm_head.weight", dtype: "BF16", shape: [cfg.vocab_size, H] });
  return plan;
}

/** Deterministic uniform noise with std ≈ 0.02 (norm weights ≈ 1), written as BF16 safetensors shards. */
export function writeRandomCheckpoint(dir: string, cfg: ShapeConfig, opts: { shards?: number; seed?: number; log?: (m: string) => void } = {}): void {
  if (existsSync(join(dir, "config.json"))) return;
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const plan = tensorPlan(cfg);
  const shards = opts.shards ?? 1;
  let state = (opts.seed ?? 1) >>> 0 || 1;
  const noise = (n: number, norm: boolean): Uint8Array => {
    const f = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      const u = (state >>> 0) / 4294967296 - 0.5;
      f[i] = norm ? 1 + 0.1 * u : 0.0693 * u;
    }
    const b = f32ToBf16(f);
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  };
  const perShard = Math.ceil(plan.length / shards);
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const part = plan.slice(s * perShard, (s + 1) * perShard);
    const file = shards === 1 ? "model.safetensors" : `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`;
    const writer = new SafetensorsStreamWriter(join(tmp, file), part, { format: "pt" });
    for (const name of writer.order()) {
      const spec = part.find((t) => t.name === name)!;
      writer.write(name, noise(numel(spec.shape), name.endsWith("norm.weight")));
      weightMap[name] = file;
    }
    writer.finish();
    opts.log?.(`wrote ${file}`);
  }
  if (shards > 1) writeFileSync(join(tmp, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
  writeFileSync(join(tmp, "config.json"), JSON.stringify(cfg, null, 2));
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
}

/**
 * Gives a random checkpoint a chat tokenizer: the demo organism's (byte-level BPE, ChatML template) from `srcDir`,
 * its vocabulary padded with tokens `Ġx<id>` (never produced by encoding; decoding one gives " x<id>") up to the
 * shape's vocab_size, so that any id a random model emits decodes. Files already in place are kept unless the
 * tokenizer is smaller than the vocabulary.
 */
export function writeChatTokenizer(srcDir: string, dir: string, vocabSize: number): void {
  for (const f of ["tokenizer_config.json", "special_tokens_map.json"]) {
    if (!existsSync(join(dir, f))) copyFileSync(join(srcDir, f), join(dir, f));
  }
  const target = join(dir, "tokenizer.json");
  const size = (t: { model: { vocab: Record<string, number> }; added_tokens?: { id: number }[] }) =>
    1 + Math.max(...Object.values(t.model.vocab), ...(t.added_tokens ?? []).map((a) => a.id));
  if (existsSync(target) && size(JSON.parse(readFileSync(target, "utf8"))) >= vocabSize) return;
  const tok = JSON.parse(readFileSync(join(srcDir, "tokenizer.json"), "utf8"));
  if (tok.model?.type !== "BPE" || typeof tok.model.vocab !== "object") throw new Error(`${srcDir}/tokenizer.json: expected a BPE vocabulary to pad`);
  for (let id = size(tok); id < vocabSize; id++) tok.model.vocab[`Ġx${id}`] = id;
  writeFileSync(`${target}.tmp`, JSON.stringify(tok));
  renameSync(`${target}.tmp`, target);
}
