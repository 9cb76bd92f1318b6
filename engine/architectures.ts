// Each supported `model_type`: how its config differs from Llama's, and which builder pieces it overrides.
import { DecoderBuilder, type DecoderBuildOptions, type WeightSource } from "./decoder.ts";
import { ModelConfigError, num, readLlamaConfig, type DecoderConfig } from "./config.ts";

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

const qwen2: Architecture = {
  readConfig(cfg) {
    const c = readLlamaConfig(cfg);
    c.qkvBias = true;
    c.oBias = false;
    c.mlpBias = false;
    // Qwen2 uses sliding windows only when asked to, and then only from layer max_window_layers on.
    if (cfg.use_sliding_window && typeof cfg.sliding_window === "number") {
      const from = num(cfg, "max_window_layers", c.numLayers);
      c.slidingWindow = c.slidingWindow.map((_, l) => (l >= from ? (cfg.sliding_window as number) : null));
    }
    return c;
  },
  builder: DecoderBuilder,
};

const mistral: Architecture = {
  readConfig(cfg) {
    const c = readLlamaConfig(cfg);
    const w = cfg.sliding_window;
    if (typeof w === "number") c.slidingWindow = c.slidingWindow.map(() => w);
    return c;
  },
  builder: DecoderBuilder,
};

const gemma2: Architecture = {
  readConfig(cfg) {
    const c = readLlamaConfig({ tie_word_embeddings: true, ...cfg });
    c.activation = "gelu_tanh";
    const act = (cfg.hidden_activation ?? cfg.hidden_act) as string | undefined;
    if (act && act !== "gelu_pytorch_tanh" && act !== "gelu_tanh") throw new ModelConfigError(`config.json: gemma2 activation "${act}" is not supported`);
    c.attentionScale = 1 / Math.sqrt(num(cfg, "query_pre_attn_scalar", c.headDim));
    c.attnLogitSoftcap = (cfg.attn_logit_softcapping as number | null | undefined) ?? null;
    c.finalLogitSoftcap = (cfg.final_logit_softcapping as number | null | undefined) ?? null;
    c.embeddingScale = Math.sqrt(c.hiddenSize);
    c.normAddsOne = true;
    c.sandwichNorms = true;
    // Even layers attend within the sliding window, odd layers globally.
    const w = num(cfg, "sliding_window", 4096);
    c.slidingWindow = c.slidingWindow.map((_, l) => (l % 2 === 0 ? w : null));
    return c;
  },
  builder: Gemma2Builder,
};

const ARCHITECTURES: Record<string, Architecture> = { llama, qwen2, mistral, gemma2 };

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
  if (!arch) throw new ModelConfigError(`model_type "${type}" is not supported; supported: ${SUPPORTED_MODEL_TYPES.join(", ")}`);
  return arch;
}

export function readDecoderConfig(cfg: Json): DecoderConfig {
  const c = architectureOf(cfg).readConfig(cfg);
  return c;
}

export function createBuilder(cfg: Json, weights: WeightSource, opts: DecoderBuildOptions = {}): DecoderBuilder {
  const arch = architectureOf(cfg);
  return new arch.builder(arch.readConfig(cfg), weights, opts);
}
