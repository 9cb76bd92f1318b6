// Reads a Hugging Face `config.json` into the one decoder description the graph builder uses.
// Every architecture starts from the Llama reading; the few that differ override fields.
// Every size is checked here, before anything is allocated from it: a whole number within CONFIG_LIMITS
// (generous for real models, far below what would exhaust memory), consistent with the other sizes,
// and token ids inside the vocabulary. That the weights match the sizes is checked by
// validateCheckpoint (architectures.ts) before a graph is built.

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
  /** A second rotary for the layers with a sliding window (Gemma 3: θ 10000 there, the global θ and scaling elsewhere); null: one rotary for all. */
  localRope: { theta: number; scaling: RopeScaling } | null;
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
  /** RMSNorm over each query and key head (its head_dim) before the rotary (Qwen3, Gemma 3): q_norm / k_norm weights. */
  qkNorm: boolean;
  /** Extra norms after attention and after the MLP (Gemma 2 and 3): read by writers.ts to name each writer's post-norm; Gemma2Builder builds them. */
  sandwichNorms: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
}

type Json = Record<string, unknown>;

/**
 * Upper bounds of the size fields. The largest released decoders are far below them (405B: 126 layers,
 * hidden 16384, intermediate 53248, vocab 128256; Gemma 2: vocab 256000, head_dim 256), so a value
 * above is a corrupt or hostile config, refused before a per-layer array or table is sized from it.
 */
export const CONFIG_LIMITS = {
  num_hidden_layers: 1024,
  hidden_size: 65536,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 1024,
  intermediate_size: 1 << 20,
  vocab_size: 1 << 22,
  /** max_position_embeddings, sliding windows, rope's original_max_position_embeddings. */
  positions: 1 << 26,
} as const;

export function num(cfg: Json, key: string, fallback?: number): number {
  const v = cfg[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelConfigError(`config.json: required key "${key}" is missing`);
  }
  if (typeof v !== "number" || !Number.isFinite(v)) throw new ModelConfigError(`config.json: "${key}" must be a number, got ${JSON.stringify(v)}`);
  return v;
}

/** A whole number in [min, max] (a size, a count, a window), or the fallback when the key is absent. */
export function int(cfg: Json, key: string, min: number, max: number, fallback?: number): number {
  const v = num(cfg, key, fallback);
  if (!Number.isInteger(v)) throw new ModelConfigError(`config.json: "${key}" must be a whole number, got ${v}`);
  if (v < min) throw new ModelConfigError(`config.json: "${key}" is ${v}, must be at least ${min}`);
  if (v > max) throw new ModelConfigError(`config.json: "${key}" is ${v}, above the limit ${max} (a corrupt config?)`);
  return v;
}

/** A finite number > 0 (and below `below` when given). */
export function positive(cfg: Json, key: string, fallback?: number, below?: number): number {
  const v = num(cfg, key, fallback);
  if (!(v > 0)) throw new ModelConfigError(`config.json: "${key}" must be greater than 0, got ${v}`);
  if (below !== undefined && !(v < below)) throw new ModelConfigError(`config.json: "${key}" must be below ${below}, got ${v}`);
  return v;
}

/** Token ids the model is fed or stops on must be rows of the embedding table. */
function checkTokenIds(key: string, list: number[], vocabSize: number): void {
  for (const id of list) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new ModelConfigError(`config.json: "${key}" ${id} is not a token id of the vocabulary (vocab_size ${vocabSize})`);
  }
}

function ids(v: unknown): number[] {
  if (typeof v === "number") return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === "number");
  return [];
}

/**
 * The rotary settings of a config: θ and the scaling. transformers up to 4.x writes them as `rope_theta`
 * and `rope_scaling` ({rope_type, factor, …} or null); 5.x writes one `rope_parameters` object holding
 * `rope_theta` and the scaling fields together. A config read without the second form would silently run
 * at θ 10000 (a Qwen checkpoint's is 10⁶), so both are read; one that gives θ or the scaling both ways
 * must say the same in both.
 */
function readRope(cfg: Json): { theta: number; scaling: RopeScaling } {
  const rp = cfg.rope_parameters as unknown;
  if (rp === undefined || rp === null) {
    const rs = cfg.rope_scaling as Json | null | undefined;
    return { theta: positive(cfg, "rope_theta", 10000), scaling: rs ? parseRopeScaling(rs, "rope_scaling") : { type: "none" } };
  }
  if (typeof rp !== "object" || Array.isArray(rp)) throw new ModelConfigError(`config.json: "rope_parameters" must be an object, got ${JSON.stringify(rp)}`);
  const params = rp as Json;
  const perType = "full_attention" in params || "sliding_attention" in params || Object.values(params).some((v) => typeof v === "object" && v !== null);
  if (params.rope_type === undefined && params.rope_theta === undefined && perType) {
    throw new ModelConfigError(`config.json: "rope_parameters" per attention type (${Object.keys(params).join(", ")}) is not supported`);
  }
  const theta = positive(params, "rope_theta", cfg.rope_theta === undefined || cfg.rope_theta === null ? 10000 : positive(cfg, "rope_theta"));
  if (cfg.rope_theta !== undefined && cfg.rope_theta !== null && positive(cfg, "rope_theta") !== theta) {
    throw new ModelConfigError(`config.json: "rope_theta" ${cfg.rope_theta} disagrees with "rope_parameters.rope_theta" ${params.rope_theta}`);
  }
  const scaling = parseRopeScaling(params, "rope_parameters");
  // A config may carry the old key beside the new one (written for older readers); it must say the same.
  if (cfg.rope_scaling && JSON.stringify(parseRopeScaling(cfg.rope_scaling as Json, "rope_scaling")) !== JSON.stringify(scaling)) {
    throw new ModelConfigError(`config.json: "rope_scaling" ${JSON.stringify(cfg.rope_scaling)} disagrees with "rope_parameters" ${JSON.stringify(params)}`);
  }
  return { theta, scaling };
}

/** A scaling object ({rope_type | type, factor, …}); `key` names where it came from in errors. rope_parameters without a type is the default rotary. */
export function parseRopeScaling(rs: Json, key: string): RopeScaling {
  const type = (rs.rope_type ?? rs.type ?? (key.startsWith("rope_parameters") ? "default" : undefined)) as string | undefined;
  if (type === "default") return { type: "none" };
  if (type === "linear") return { type: "linear", factor: positive(rs, "factor") };
  if (type === "llama3") {
    return {
      type: "llama3",
      factor: positive(rs, "factor"),
      lowFreqFactor: positive(rs, "low_freq_factor"),
      highFreqFactor: positive(rs, "high_freq_factor"),
      originalMaxPositions: int(rs, "original_max_position_embeddings", 1, CONFIG_LIMITS.positions),
    };
  }
  throw new ModelConfigError(`config.json: ${key} type "${type}" is not supported (supported: llama3, linear)`);
}

/** The Llama reading of a config; other architectures adjust the result. */
export function readLlamaConfig(cfg: Json): DecoderConfig {
  const L = CONFIG_LIMITS;
  const numLayers = int(cfg, "num_hidden_layers", 1, L.num_hidden_layers);
  const hiddenSize = int(cfg, "hidden_size", 1, L.hidden_size);
  const numHeads = int(cfg, "num_attention_heads", 1, L.num_attention_heads);
  const vocabSize = int(cfg, "vocab_size", 1, L.vocab_size);
  const intermediateSize = int(cfg, "intermediate_size", 1, L.intermediate_size);
  if (cfg.head_dim === undefined || cfg.head_dim === null) {
    if (hiddenSize % numHeads !== 0) throw new ModelConfigError(`config.json: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
  }
  const headDim = int(cfg, "head_dim", 1, L.head_dim, hiddenSize / numHeads);
  const numKvHeads = int(cfg, "num_key_value_heads", 1, L.num_key_value_heads, numHeads);
  if (numHeads % numKvHeads !== 0) throw new ModelConfigError(`config.json: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  if (headDim % 2 !== 0) throw new ModelConfigError(`config.json: head_dim ${headDim} must be even for rotary embeddings`);
  // not used by the graph, but a corrupt value is a corrupt config
  if (cfg.max_position_embeddings !== undefined && cfg.max_position_embeddings !== null) int(cfg, "max_position_embeddings", 1, L.positions);
  const act = (cfg.hidden_act ?? cfg.hidden_activation ?? "silu") as string;
  const activation = act === "silu" || act === "swish" ? "silu" : act === "gelu_pytorch_tanh" || act === "gelu_tanh" ? "gelu_tanh" : null;
  if (!activation) throw new ModelConfigError(`config.json: hidden activation "${act}" is not supported (supported: silu, gelu_pytorch_tanh)`);
  const bosTokenId = typeof cfg.bos_token_id === "number" ? cfg.bos_token_id : null;
  if (bosTokenId !== null) checkTokenIds("bos_token_id", [bosTokenId], vocabSize);
  const eosTokenIds = ids(cfg.eos_token_id);
  checkTokenIds("eos_token_id", eosTokenIds, vocabSize);
  // pretraining_tp > 1 only makes HF split the matmuls into slices; the math is the same, so it is ignored.
  const rope = readRope(cfg);
  return {
    modelType: String(cfg.model_type),
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    rmsNormEps: positive(cfg, "rms_norm_eps", 1e-6, 1),
    ropeTheta: rope.theta,
    ropeScaling: rope.scaling,
    localRope: null,
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
    qkNorm: false,
    sandwichNorms: false,
    bosTokenId,
    eosTokenIds,
    padTokenId: typeof cfg.pad_token_id === "number" ? cfg.pad_token_id : null,
  };
}
