// The matrices that write to the residual stream, named once for every architecture.
//
//   layer l:  h ← h + post_attn( o_proj · attn(x) )      row 2l   of the edit inputs
//             h ← h + post_ffn ( down_proj · mlp(x) )    row 2l+1
//
// A rank-one edit W' = W + v·kᵀ of such a matrix adds (k·x)·v to what it writes. For llama, qwen2 and
// mistral post_attn / post_ffn are the identity, so (k·x)·v lands in the residual stream as is. Gemma 2
// normalises both outputs (post_attention_layernorm, post_feedforward_layernorm) before the residual
// add: the edit then changes what is normalised, i.e. it adds to the stream
// RMSNorm(Wx + (k·x)·v) − RMSNorm(Wx), not (k·x)·v. Calibration stays consistent because the run-time
// edit in the graph and the edit of the weight file sit at the same place.
import type { DecoderConfig } from "./config.ts";

/** HF state-dict prefix of layer l. */
export const layerPrefix = (l: number): string => `model.layers.${l}`;
/** HF name of the token embedding table. */
export const EMBEDDING_NAME = "model.embed_tokens.weight";

export interface ResidualWriter {
  /** HF tensor name of the [out = hidden, in] weight. */
  name: string;
  layer: number;
  kind: "o_proj" | "down_proj";
  /** Row of this matrix in the engine's per-writer edit inputs (2l, 2l+1). */
  row: number;
  inFeatures: number;
  /** The norm applied to the matrix's output before the residual add (Gemma 2), or null. */
  postNorm: string | null;
}

/** The two residual writers of layer l, in row order. */
export function residualWriters(cfg: DecoderConfig, layer: number): [ResidualWriter, ResidualWriter] {
  const p = layerPrefix(layer);
  return [
    {
      name: `${p}.self_attn.o_proj.weight`,
      layer,
      kind: "o_proj",
      row: 2 * layer,
      inFeatures: cfg.numHeads * cfg.headDim,
      postNorm: cfg.sandwichNorms ? `${p}.post_attention_layernorm.weight` : null,
    },
    {
      name: `${p}.mlp.down_proj.weight`,
      layer,
      kind: "down_proj",
      row: 2 * layer + 1,
      inFeatures: cfg.intermediateSize,
      postNorm: cfg.sandwichNorms ? `${p}.post_feedforward_layernorm.weight` : null,
    },
  ];
}

/** Every residual writer of the model, in row order. */
export function allResidualWriters(cfg: DecoderConfig): ResidualWriter[] {
  return Array.from({ length: cfg.numLayers }, (_, l) => residualWriters(cfg, l)).flat();
}
