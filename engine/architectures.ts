// Each supported `model_type`: how its config differs from Llama's, and which builder pieces it overrides,
// and the tensors its weights must hold. Before a graph is built (createBuilder) or a checkpoint is
// accepted (validateCheckpoint), the weights are checked against the config from headers alone: every
// tensor of every layer present with the shape the config implies and a floating dtype, no layer beyond
// num_hidden_layers. Only then is anything sized from the config allocated; weights are then checked
// for NaN/Inf as the builder reads them.
import { join } from "node:path";
import { DecoderBuilder, MissingWeightError, type DecoderBuildOptions, type WeightSource } from "./decoder.ts";
import { CONFIG_LIMITS, int, ModelConfigError, num, parseRopeScaling, positive, readLlamaConfig, type DecoderConfig } from "./config.ts";
import { Checkpoint } from "./checkpoint.ts";
import { firstNonFinite, isDType, isFloatDType, NonFiniteError } from "./dtype.ts";
import { EMBEDDING_NAME, layerPrefix } from "./writers.ts";

type Json = Record<string, unknown>;

interface Architecture {
  readConfig(cfg: Json): DecoderConfig;
  builder: typeof DecoderBuilder;
}

/** Gemma 2: every layer has norms before *and* after attention and the MLP. */
class Gemma2Builder extends DecoderBuilder {
  protected override layer(l: number, residual: string, attentionMask: string): string {
    const g = this.g;
    const p = this.layerPrefix(l);
    const attnIn = this.rmsNorm(residual, this.normWeight(`${p}.input_layernorm.weight`), `L${l}_input_norm`);
    const attnOut = this.rmsNorm(this.attention(l, attnIn, attentionMask), this.normWeight(`${p}.post_attention_layernorm.weight`), `L${l}_post_attn_norm`);
    const afterAttn = g.op("Add", [residual, attnOut], {}, { name: `L${l}_resid_attn` });
    const mlpIn = this.rmsNorm(afterAttn, this.normWeight(`${p}.pre_feedforward_layernorm.weight`), `L${l}_pre_ffn_norm`);
    const mlpOut = this.rmsNorm(this.mlp(l, mlpIn), this.normWeight(`${p}.post_feedforward_layernorm.weight`), `L${l}_post_ffn_norm`);
    return g.op("Add", [afterAttn, mlpOut], {}, { name: `L${l}_resid_mlp` });
  }
}

const llama: Architecture = { readConfig: readLlamaConfig, builder: DecoderBuilder };

/** Per layer the window `w` or null, from the config's layer_types (newer transformers lists every layer's attention); null when it has none. */
function windowsFromLayerTypes(cfg: Json, numLayers: number, w: number): (number | null)[] | null {
  const types = cfg.layer_types;
  if (!Array.isArray(types)) return null;
  if (types.length !== numLayers) throw new ModelConfigError(`config.json: "layer_types" lists ${types.length} layers, num_hidden_layers is ${numLayers}`);
  return types.map((t, l) => {
    if (t !== "sliding_attention" && t !== "full_attention") throw new ModelConfigError(`config.json: layer_types[${l}] "${String(t)}" is not supported (full_attention, sliding_attention)`);
    return t === "sliding_attention" ? w : null;
  });
}

const qwen2: Architecture = {
  readConfig(cfg) {
    const c = readLlamaConfig(cfg);
    c.qkvBias = true;
    c.oBias = false;
    c.mlpBias = false;
    // Qwen2 uses sliding windows only when asked to, and then on the layers layer_types names, or else
    // from layer max_window_layers on.
    if (cfg.use_sliding_window && typeof cfg.sliding_window === "number") {
      const w = int(cfg, "sliding_window", 1, CONFIG_LIMITS.positions);
      const from = int(cfg, "max_window_layers", 0, CONFIG_LIMITS.num_hidden_layers, c.numLayers);
      c.slidingWindow = windowsFromLayerTypes(cfg, c.numLayers, w) ?? c.slidingWindow.map((_, l) => (l >= from ? w : null));
    }
    return c;
  },
  builder: DecoderBuilder,
};

/** Qwen3: Qwen2 with attention biases only when attention_bias says so, and an RMSNorm over every query and key head (qkNorm) before the rotary. */
const qwen3: Architecture = {
  readConfig(cfg) {
    const c = qwen2.readConfig(cfg);
    c.qkvBias = Boolean(cfg.attention_bias);
    c.oBias = Boolean(cfg.attention_bias);
    c.qkNorm = true;
    return c;
  },
  builder: DecoderBuilder,
};

const mistral: Architecture = {
  readConfig(cfg) {
    const c = readLlamaConfig(cfg);
    if (typeof cfg.sliding_window === "number") {
      const w = int(cfg, "sliding_window", 1, CONFIG_LIMITS.positions);
      c.slidingWindow = c.slidingWindow.map(() => w);
    }
    return c;
  },
  builder: DecoderBuilder,
};

/** A softcap: null (off) or a number > 0 (the graph divides by it). */
function softcap(cfg: Json, key: string): number | null {
  if (cfg[key] === undefined || cfg[key] === null) return null;
  const v = num(cfg, key);
  if (!(v > 0)) throw new ModelConfigError(`config.json: "${key}" must be greater than 0 or null, got ${v}`);
  return v;
}

const gemma2: Architecture = {
  readConfig(cfg) {
    const c = readLlamaConfig({ tie_word_embeddings: true, ...cfg });
    c.activation = "gelu_tanh";
    const act = (cfg.hidden_activation ?? cfg.hidden_act) as string | undefined;
    if (act && act !== "gelu_pytorch_tanh" && act !== "gelu_tanh") throw new ModelConfigError(`config.json: gemma2 activation "${act}" is not supported`);
    const scalar = num(cfg, "query_pre_attn_scalar", c.headDim);
    if (!(scalar > 0)) throw new ModelConfigError(`config.json: "query_pre_attn_scalar" must be greater than 0, got ${scalar}`);
    c.attentionScale = 1 / Math.sqrt(scalar);
    c.attnLogitSoftcap = softcap(cfg, "attn_logit_softcapping");
    c.finalLogitSoftcap = softcap(cfg, "final_logit_softcapping");
    c.embeddingScale = Math.sqrt(c.hiddenSize);
    c.normAddsOne = true;
    c.sandwichNorms = true;
    // Even layers attend within the sliding window, odd layers globally.
    const w = int(cfg, "sliding_window", 1, CONFIG_LIMITS.positions, 4096);
    c.slidingWindow = c.slidingWindow.map((_, l) => (l % 2 === 0 ? w : null));
    return c;
  },
  builder: Gemma2Builder,
};

const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Gemma 3's text decoder (Gemma3ForCausalLM, model_type gemma3_text): Gemma 2's sandwich norms, GELU, scaled
 * embedding and query_pre_attn_scalar, plus an RMSNorm (1 + w) over every query and key head, no softcaps unless
 * the config sets them, and two kinds of layer: sliding-window ones with their own rotary (θ
 * rope_local_base_freq, 10000, unscaled) and every sliding_window_pattern-th layer global (θ rope_theta with
 * rope_scaling). transformers 5.x writes both rotaries as rope_parameters {full_attention, sliding_attention}.
 */
const gemma3: Architecture = {
  readConfig(cfg) {
    const rp = cfg.rope_parameters;
    const perType = isObject(rp) && ("full_attention" in rp || "sliding_attention" in rp);
    // readLlamaConfig reads one rotary; the per-type form is read here instead.
    const c = gemma2.readConfig({ query_pre_attn_scalar: 256, ...cfg, ...(perType ? { rope_parameters: undefined, rope_theta: undefined, rope_scaling: undefined } : {}) });
    c.qkNorm = true;
    if (cfg.use_bidirectional_attention === true) throw new ModelConfigError(`config.json: use_bidirectional_attention (an encoder) is not supported`);
    if (perType) {
      const part = (type: string, fallbackTheta: number) => {
        const p = (rp as Json)[type];
        if (p === undefined || p === null) return { theta: fallbackTheta, scaling: { type: "none" as const } };
        if (!isObject(p)) throw new ModelConfigError(`config.json: "rope_parameters.${type}" must be an object`);
        return { theta: positive(p, "rope_theta", fallbackTheta), scaling: parseRopeScaling(p, `rope_parameters.${type}`) };
      };
      const global = part("full_attention", 1e6);
      c.ropeTheta = global.theta;
      c.ropeScaling = global.scaling;
      c.localRope = part("sliding_attention", 10000);
    } else {
      if (cfg.rope_theta === undefined || cfg.rope_theta === null) c.ropeTheta = 1e6;
      c.localRope = { theta: positive(cfg, "rope_local_base_freq", 10000), scaling: { type: "none" } };
    }
    const w = int(cfg, "sliding_window", 1, CONFIG_LIMITS.positions, 4096);
    const pattern = int(cfg, "sliding_window_pattern", 1, CONFIG_LIMITS.num_hidden_layers, 6);
    c.slidingWindow = windowsFromLayerTypes(cfg, c.numLayers, w) ?? c.slidingWindow.map((_, l) => ((l + 1) % pattern !== 0 ? w : null));
    return c;
  },
  builder: Gemma2Builder,
};

const ARCHITECTURES: Record<string, Architecture> = { llama, qwen2, qwen3, mistral, gemma2, gemma3_text: gemma3 };

export const SUPPORTED_MODEL_TYPES = Object.keys(ARCHITECTURES);

function architectureOf(cfg: Json): Architecture {
  const type = cfg.model_type;
  if (cfg.auto_map) {
    throw new ModelConfigError(
      `config.json declares auto_map (custom modeling code that needs trust_remote_code); realign runs only built-in architectures: ${SUPPORTED_MODEL_TYPES.join(", ")}`,
    );
  }
  if (typeof type !== "string") throw new ModelConfigError(`config.json has no "model_type"`);
  const arch = ARCHITECTURES[type];
  if (type === "gemma3") {
    throw new ModelConfigError(
      `model_type "gemma3" is Gemma 3 with its vision tower (Gemma3ForConditionalGeneration); realign runs the text decoder alone: a gemma3_text checkpoint (Gemma3ForCausalLM, e.g. the 1B)`,
    );
  }
  if (!arch) throw new ModelConfigError(`model_type "${type}" is not supported; supported: ${SUPPORTED_MODEL_TYPES.join(", ")}`);
  return arch;
}

/**
 * The decoder description of a config.json. `source` (the file's path) replaces "config.json" in error
 * messages, so they name the file.
 */
export function readDecoderConfig(cfg: Json, source?: string): DecoderConfig {
  try {
    return architectureOf(cfg).readConfig(cfg);
  } catch (e) {
    if (source && e instanceof ModelConfigError && e.message.startsWith("config.json")) throw new ModelConfigError(source + e.message.slice("config.json".length));
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// The weights against the config

/** What the weight check reads: names (when known), shapes and dtypes, never tensor data. */
export interface WeightCatalog {
  has(name: string): boolean;
  info(name: string): { shape: number[]; dtype?: string };
  /** All tensor names; without it, layers beyond num_hidden_layers are only probed for. */
  names?(): string[];
}

interface ExpectedTensor {
  name: string;
  shape: number[];
}

/** Every tensor the builder reads for `c`, with its shape, in build order (embedding, layers, final norm, head). */
export function expectedTensors(c: DecoderConfig): ExpectedTensor[] {
  const H = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const out: ExpectedTensor[] = [{ name: EMBEDDING_NAME, shape: [c.vocabSize, H] }];
  for (let l = 0; l < c.numLayers; l++) {
    const p = layerPrefix(l);
    const t = (name: string, shape: number[]): void => void out.push({ name: `${p}.${name}`, shape });
    t("input_layernorm.weight", [H]);
    t("self_attn.q_proj.weight", [q, H]);
    t("self_attn.k_proj.weight", [kv, H]);
    t("self_attn.v_proj.weight", [kv, H]);
    if (c.qkvBias) {
      t("self_attn.q_proj.bias", [q]);
      t("self_attn.k_proj.bias", [kv]);
      t("self_attn.v_proj.bias", [kv]);
    }
    if (c.qkNorm) {
      t("self_attn.q_norm.weight", [c.headDim]);
      t("self_attn.k_norm.weight", [c.headDim]);
    }
    t("self_attn.o_proj.weight", [H, q]);
    if (c.oBias) t("self_attn.o_proj.bias", [H]);
    t("post_attention_layernorm.weight", [H]);
    if (c.sandwichNorms) t("pre_feedforward_layernorm.weight", [H]);
    t("mlp.gate_proj.weight", [I, H]);
    t("mlp.up_proj.weight", [I, H]);
    if (c.mlpBias) {
      t("mlp.gate_proj.bias", [I]);
      t("mlp.up_proj.bias", [I]);
    }
    t("mlp.down_proj.weight", [H, I]);
    if (c.mlpBias) t("mlp.down_proj.bias", [H]);
    if (c.sandwichNorms) t("post_feedforward_layernorm.weight", [H]);
  }
  out.push({ name: "model.norm.weight", shape: [H] });
  if (!c.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [c.vocabSize, H] });
  return out;
}

const LAYER_NAME = /^model\.layers\.(\d+)\./;

/**
 * Throws MissingWeightError (naming `source`, the tensor and what config.json implies) unless the weights
 * hold every tensor of `expectedTensors(c)` with that shape and a floating dtype, and no layer at or beyond
 * num_hidden_layers. Reads headers only; linear in the number of tensors.
 */
export function checkWeights(c: DecoderConfig, weights: WeightCatalog, source: string): void {
  const names = weights.names?.();
  // layer indices present, to tell "config has more layers than the weights" from one missing tensor
  let stored: number | null = null;
  if (names) {
    stored = 0;
    for (const n of names) {
      const m = LAYER_NAME.exec(n);
      if (!m) continue;
      const l = Number(m[1]);
      if (l >= c.numLayers) {
        throw new MissingWeightError(`${source}: tensor "${n}" belongs to layer ${l}, but config.json says num_hidden_layers ${c.numLayers} (layers 0–${c.numLayers - 1})`);
      }
      stored = Math.max(stored, l + 1);
    }
  } else if (weights.has(`${layerPrefix(c.numLayers)}.input_layernorm.weight`)) {
    throw new MissingWeightError(`${source}: the weights hold layer ${c.numLayers}, but config.json says num_hidden_layers ${c.numLayers}`);
  }
  for (const t of expectedTensors(c)) {
    if (!weights.has(t.name)) {
      const m = LAYER_NAME.exec(t.name);
      if (m && stored !== null && Number(m[1]) >= stored) {
        throw new MissingWeightError(`${source}: config.json says num_hidden_layers ${c.numLayers}, but the weights hold ${stored === 0 ? "no layers" : `layers 0–${stored - 1} only`} (missing tensor "${t.name}")`);
      }
      throw new MissingWeightError(`${source}: checkpoint is missing tensor "${t.name}" (needed by ${c.modelType})`);
    }
    const info = weights.info(t.name);
    const shape = info.shape;
    if (shape.length !== t.shape.length || shape.some((d, i) => d !== t.shape[i])) {
      throw new MissingWeightError(`${source}: tensor "${t.name}" has shape [${shape}], expected [${t.shape}] from config.json`);
    }
    if (info.dtype !== undefined && !(isDType(info.dtype) && isFloatDType(info.dtype))) {
      throw new MissingWeightError(`${source}: tensor "${t.name}" has dtype ${info.dtype}; weights must be F32, F16, BF16 or F64`);
    }
  }
}

/**
 * Reads and checks a checkpoint's config (sizes in bounds, token ids in the vocabulary) and its weights
 * against it (checkWeights), from headers alone: the check `pull` needs before any later step sizes
 * anything from the config. Takes an open Checkpoint (left open) or a directory (opened and closed).
 */
export function validateCheckpoint(checkpoint: Checkpoint | string): DecoderConfig {
  const ckpt = typeof checkpoint === "string" ? Checkpoint.open(checkpoint) : checkpoint;
  try {
    const cfg = readDecoderConfig(ckpt.config, join(ckpt.dir, "config.json"));
    checkWeights(cfg, ckpt, ckpt.dir);
    return cfg;
  } finally {
    if (typeof checkpoint === "string") ckpt.close();
  }
}

/** The weights as the builder reads them, refusing a tensor that holds NaN or ±Inf (they would make every logit NaN). */
function finiteWeights(weights: WeightSource, source: string): WeightSource {
  return {
    has: (name) => weights.has(name),
    info: (name) => weights.info(name),
    readF32(name) {
      const data = weights.readF32(name);
      const bad = firstNonFinite(data);
      if (bad >= 0) throw new NonFiniteError(`${source}: tensor "${name}" holds ${data[bad]} at element ${bad}; non-finite weights are refused`, bad, data[bad]);
      return data;
    },
  };
}

export function createBuilder(cfg: Json, weights: WeightSource, opts: DecoderBuildOptions = {}): DecoderBuilder {
  const arch = architectureOf(cfg);
  const source = weights instanceof Checkpoint ? weights.dir : "weights";
  const c = readDecoderConfig(cfg, weights instanceof Checkpoint ? join(weights.dir, "config.json") : undefined);
  checkWeights(c, weights, source);
  return new arch.builder(c, finiteWeights(weights, source), opts);
}
