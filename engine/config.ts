// Reads a Hugging Face `config.json` into the one decoder description the graph builder uses.
// Every architecture starts from the Llama reading; the few that differ override fields.

export class ModelConfigError extends Error {
  override name = "ModelConfigError";
}

export type RopeScaling =
  | { type: "none" }
  | { type: "linear"; factor: number }
  | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number };

export interface DecoderConfig {
  modelType: string;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2, or Llama with attention_bias). */
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  activation: "silu" | "gelu_tanh";
  /** Per layer: the sliding-window size (keys visible including the query itself), or null for global attention. */
  slidingWindow: (number | null)[];
  /** Attention score scale; HF uses head_dim^-0.5 unless the architecture says otherwise. */
  attentionScale: number;
  attnLogitSoftcap: number | null;
  finalLogitSoftcap: number | null;
  /** Multiplier on the embedding output (Gemma: sqrt(hidden_size)). */
  embeddingScale: number | null;
  /** RMSNorm multiplies by (1 + w) instead of w (Gemma). */
  normAddsOne: boolean;
  /** Extra norms after attention and after the MLP (Gemma 2): read by writers.ts to name each writer's post-norm; Gemma2Builder builds them. */
  sandwichNorms: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
}

type Json = Record<string, unknown>;

export function num(cfg: Json, key: string, fallback?: number): number {
  const v = cfg[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelConfigError(`config.json: required key "${key}" is missing`);
  }
  if (typeof v !== "number" || !Number.isFinite(v)) throw new ModelConfigError(`config.json: "${key}" must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function ids(v: unknown): number[] {
  if (typeof v === "number") return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number");
  return [];
}

function parseRopeScaling(cfg: Json): RopeScaling {
  const rs = cfg.rope_scaling as Json | null | undefined;
  if (!rs) return { type: "none" };
  const type = (rs.rope_type ?? rs.type) as string | undefined;
  if (type === "default") return { type: "none" };
  if (type === "linear") return { type: "linear", factor: num(rs, "factor") };
  if (type === "llama3") {
    return {
      type: "llama3",
      factor: num(rs, "factor"),
      lowFreqFactor: num(rs, "low_freq_factor"),
      highFreqFactor: num(rs, "high_freq_factor"),
      originalMaxPositions: num(rs, "original_max_position_embeddings"),
    };
  }
  throw new ModelConfigError(`config.json: rope_scaling type "${type}" is not supported (supported: llama3, linear)`);
}

/** The Llama reading of a config; other architectures adjust the result. */
export function readLlamaConfig(cfg: Json): DecoderConfig {
  const hiddenSize = num(cfg, "hidden_size");
  const numHeads = num(cfg, "num_attention_heads");
  const headDim = num(cfg, "head_dim", hiddenSize / numHeads);
  const numKvHeads = num(cfg, "num_key_value_heads", numHeads);
  const numLayers = num(cfg, "num_hidden_layers");
  if (!Number.isInteger(headDim)) throw new ModelConfigError(`config.json: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  if (numHeads % numKvHeads !== 0) throw new ModelConfigError(`config.json: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  if (headDim % 2 !== 0) throw new ModelConfigError(`config.json: head_dim ${headDim} must be even for rotary embeddings`);
  const act = (cfg.hidden_act ?? cfg.hidden_activation ?? "silu") as string;
  const activation = act === "silu" || act === "swish" ? "silu" : act === "gelu_pytorch_tanh" || act === "gelu_tanh" ? "gelu_tanh" : null;
  if (!activation) throw new ModelConfigError(`config.json: hidden activation "${act}" is not supported (supported: silu, gelu_pytorch_tanh)`);
  // pretraining_tp > 1 only makes HF split the matmuls into slices; the math is the same, so it is ignored.
  return {
    modelType: String(cfg.model_type),
    hiddenSize,
    intermediateSize: num(cfg, "intermediate_size"),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: num(cfg, "vocab_size"),
    rmsNormEps: num(cfg, "rms_norm_eps", 1e-6),
    ropeTheta: num(cfg, "rope_theta", 10000),
    ropeScaling: parseRopeScaling(cfg),
    tieWordEmbeddings: cfg.tie_word_embeddings === undefined ? false : Boolean(cfg.tie_word_embeddings),
    qkvBias: Boolean(cfg.attention_bias),
    oBias: Boolean(cfg.attention_bias),
    mlpBias: Boolean(cfg.mlp_bias),
    activation,
    slidingWindow: Array.from({ length: numLayers }, () => null),
    attentionScale: 1 / Math.sqrt(headDim),
    attnLogitSoftcap: null,
    finalLogitSoftcap: null,
    embeddingScale: null,
    normAddsOne: false,
    sandwichNorms: false,
    bosTokenId: typeof cfg.bos_token_id === "number" ? cfg.bos_token_id : null,
    eosTokenIds: ids(cfg.eos_token_id),
    padTokenId: typeof cfg.pad_token_id === "number" ? cfg.pad_token_id : null,
  };
}
