// The decoder as an ONNX graph, written top to bottom like the math:
//   residual = embed(input_ids)
//   for each layer: residual += attn(norm(residual)); residual += mlp(norm(residual))
//   logits = lm_head(norm(residual))
// Architectures subclass DecoderBuilder and override only the pieces that differ.
//
// Layout: the residual stream is kept as [N, hidden] with N = batch × tokens, so every linear
// layer is one Gemm on the HF [out, in] weight (transB = 1): no transposed copies of weights.
import { OnnxDataType as DT } from "./onnx/schema.ts";
import { OnnxGraph } from "./onnx/graph.ts";
import type { DecoderConfig } from "./config.ts";
import { DEFAULT_ACCURACY_LEVEL, quantizeBlockwise, quantizePerChannel, validateQuantizeConfig, type QuantizeConfig } from "./quantize.ts";
import { f32ToF16 } from "./dtype.ts";
import { EMBEDDING_NAME, layerPrefix, residualWriters, type ResidualWriter } from "./writers.ts";

/** Element type of weights, activations and the KV cache inside the graph (inputs/outputs other than the cache stay float32). */
export type ComputeDType = "float32" | "float16";
export const COMPUTE_DTYPES: ComputeDType[] = ["float32", "float16"];

/** Where the builder gets float32 weights from (a checkpoint, or edited tensors in tests). */
export interface WeightSource {
  has(name: string): boolean;
  info(name: string): { shape: number[] };
  readF32(name: string): Float32Array;
}

export class MissingWeightError extends Error {
  override name = "MissingWeightError";
}

export interface DecoderBuildOptions {
  /**
   * Adds runtime inputs for interventions (DecoderModel feeds zeros when none are given, leaving the model unchanged):
   * - `rosi_vectors` [2·layers, hidden]: row 2l adds (x·k)·row to layer l's o_proj output, row 2l+1 to its down_proj
   *   output — the rank-one edit W + v·kᵀ without rewriting W. The key is k = w̄ + Δ, with w̄ the mean of that
   *   matrix's rows (an initializer) and Δ its row of `edit_keys_attn` (o_proj) or `edit_keys_mlp` (down_proj).
   * - `edit_keys_attn` [layers, heads·head_dim], `edit_keys_mlp` [layers, intermediate]: Δ of each layer's o_proj /
   *   down_proj key (zeros: the key is w̄, the plain ROSI edit). DecoderModel feeds key − w̄ for a chosen key.
   * - `steer` [layers, hidden]: added to the residual stream entering each layer.
   * It also adds the outputs `rosi_coefficients` and `writer_input.{row}` (see IO).
   */
  interventions?: boolean;
  /**
   * Quantisation of the projection matrices (q/k/v, o, gate/up, down):
   * - blockwise: weight-only `com.microsoft.MatMulNBits`, untied lm_head included; embeddings, norms, biases and a
   *   tied lm_head stay in the compute type.
   * - int8-dynamic: int8 weights per output channel, activations quantised per token, `MatMulInteger` (see
   *   dynamicInt8MatMul), the lm_head included (tied or not); embeddings, norms, residual adds and attention stay
   *   float32, and so do the logits it returns.
   *   float32 graphs only.
   */
  quantize?: QuantizeConfig | null;
  /**
   * float16 halves weight and KV-cache memory for GPU EPs (a BF16 checkpoint is rounded to FP16). Attention
   * scores and softmax stay float32, as HF computes them for half precision; logits, residuals and
   * coefficients are returned as float32. Default float32.
   */
  dtype?: ComputeDType;
}

/** Graph value names of the inputs and outputs, shared with the session code. */
export const IO = {
  inputIds: "input_ids",
  attentionMask: "attention_mask",
  positionIds: "position_ids",
  logitPositions: "logit_positions",
  rosiVectors: "rosi_vectors",
  /** [hidden]: rank-one edit vector of the embedding table (E' = E + rowmean(E)·vᵀ). */
  rosiEmbed: "rosi_embed",
  /** [B, T, 2·layers]: each edited matrix's coefficient k·x, k = w̄ + Δ its key (needs interventions). */
  rosiCoefficients: "rosi_coefficients",
  /** [layers, heads·head_dim]: key − w̄ of each layer's o_proj edit (needs interventions; zeros = key w̄). */
  editKeysAttn: "edit_keys_attn",
  /** [layers, intermediate]: key − w̄ of each layer's down_proj edit (needs interventions; zeros = key w̄). */
  editKeysMlp: "edit_keys_mlp",
  /**
   * [B, K', cols] float32: the input x of residual writer `row` (2l o_proj, 2l+1 down_proj; needs interventions) at
   * the K' positions of writer_positions. An output holds its buffer for the whole run, so returning every token of
   * every writer would keep 2·layers activations of [B, T, cols] in memory in every pass; with K' = 0, the
   * default, they cost nothing.
   */
  writerInput: (row: number) => `writer_input.${row}`,
  /** [B, K'] int64: the token positions (indices into the T new tokens) whose writer inputs to return. */
  writerPositions: "writer_positions",
  steer: "steer",
  logits: "logits",
  pastKey: (l: number) => `past_key_values.${l}.key`,
  pastValue: (l: number) => `past_key_values.${l}.value`,
  presentKey: (l: number) => `present.${l}.key`,
  presentValue: (l: number) => `present.${l}.value`,
  residual: (l: number) => `residual.${l}`,
  residualFinal: "residual.final",
} as const;

/** float32 min, as HF uses for masked attention scores: fully masked rows become uniform, never NaN. */
const MASKED = -3.4028234663852886e38;

export const OPSETS = { "": 21, "com.microsoft": 1 };

/** A quantised projection: MatMulNBits blocks with their attributes, or int8-dynamic's int8 [K, N] codes and scales. */
type QuantizedWeight = { kind: "blocks"; inputs: string[]; K: number; N: number } | { kind: "dynamic"; inputs: string[] };

export class DecoderBuilder {
  protected g!: OnnxGraph;
  /** [B, T] shape pieces computed once. */
  protected batchTokens!: { B: string; T: string };
  protected cos!: string;
  protected sin!: string;
  protected masks = new Map<number | null, string>();
  /** Graph weight names that were quantised → the inputs (and MatMulNBits attributes) that replace them. */
  protected quantized = new Map<string, QuantizedWeight>();
  /** Intervention inputs converted to the compute type (set in build()). */
  protected rosiVectors = IO.rosiVectors as string;
  protected rosiEmbed = IO.rosiEmbed as string;
  protected steer = IO.steer as string;
  protected editKeysAttn = IO.editKeysAttn as string;
  protected editKeysMlp = IO.editKeysMlp as string;

  constructor(
    readonly cfg: DecoderConfig,
    protected readonly weights: WeightSource,
    readonly opts: DecoderBuildOptions = {},
  ) {
    if (opts.quantize) validateQuantizeConfig(opts.quantize);
    if (opts.quantize?.scheme === "int8-dynamic" && opts.dtype === "float16") throw new Error("quantize int8-dynamic runs float32 activations; it cannot be combined with dtype float16");
  }

  // ---- weight names (HF state-dict keys) -------------------------------------------------
  protected layerPrefix(l: number): string {
    return layerPrefix(l);
  }
  protected embedName(): string {
    return EMBEDDING_NAME;
  }
  protected lmHeadName(): string {
    return this.cfg.tieWordEmbeddings ? this.embedName() : "lm_head.weight";
  }

  // ---- weights ----------------------------------------------------------------------------
  protected require(name: string, expectShape?: number[]): Float32Array {
    if (!this.weights.has(name)) throw new MissingWeightError(`checkpoint is missing tensor "${name}" (needed by ${this.cfg.modelType})`);
    const shape = this.weights.info(name).shape;
    if (expectShape && (shape.length !== expectShape.length || shape.some((d, i) => d !== expectShape[i]))) {
      throw new MissingWeightError(`tensor "${name}" has shape [${shape}], expected [${expectShape}] from config.json`);
    }
    return this.weights.readF32(name);
  }

  /** Element type of weights, activations and the KV cache. */
  protected get act(): typeof DT.FLOAT | typeof DT.FLOAT16 {
    return this.opts.dtype === "float16" ? DT.FLOAT16 : DT.FLOAT;
  }
  protected get half(): boolean {
    return this.act === DT.FLOAT16;
  }
  /** float32 → compute type (a no-op for float32 graphs). */
  protected toAct(x: string): string {
    return this.half ? this.g.op("Cast", [x], { to: DT.FLOAT16 }) : x;
  }
  /** compute type → float32, for graph outputs and precision-sensitive steps. */
  protected toFloat(x: string): string {
    return this.half ? this.g.op("Cast", [x], { to: DT.FLOAT }) : x;
  }
  /** A scalar in the compute type (rounded to it, as HF rounds such constants to the model dtype). */
  protected scalarAct(value: number): string {
    return this.toAct(this.g.scalarF32(value));
  }

  /** A weight tensor in the compute type. */
  protected weight(name: string, data: Float32Array, dims: number[]): string {
    const stored = this.half ? f32ToF16(data) : data;
    return this.g.initializer(name, this.act, dims, new Uint8Array(stored.buffer, stored.byteOffset, stored.byteLength));
  }

  /** Loads [out, in] matrices (concatenated along out) as one Gemm weight. */
  protected linearWeight(graphName: string, names: string[], inFeatures: number, outs: number[]): string {
    const total = outs.reduce((a, b) => a + b, 0);
    const data = new Float32Array(total * inFeatures);
    let at = 0;
    names.forEach((n, i) => {
      data.set(this.require(n, [outs[i], inFeatures]), at);
      at += outs[i] * inFeatures;
    });
    return this.matrixWeight(graphName, data, total, inFeatures);
  }

  /**
   * A projection matrix [out, in] for gemm(): a float32 initializer, or (when quantising) its MatMulNBits
   * blocks. The float32 copy is dropped as soon as it is quantised, so only one tensor is held at a time.
   */
  protected matrixWeight(graphName: string, data: Float32Array, out: number, inFeatures: number): string {
    const q = this.opts.quantize;
    if (!q) return this.weight(graphName, data, [out, inFeatures]);
    if (q.scheme === "int8-dynamic") {
      const { qweight, scales } = quantizePerChannel(data, out, inFeatures);
      const inputs = [
        this.g.initializer(`${graphName}.qweight`, DT.INT8, [inFeatures, out], new Uint8Array(qweight.buffer, qweight.byteOffset, qweight.byteLength)),
        this.g.initializer(`${graphName}.scales`, DT.FLOAT, [out], new Uint8Array(scales.buffer, scales.byteOffset, scales.byteLength)),
      ];
      this.quantized.set(graphName, { kind: "dynamic", inputs });
      return graphName;
    }
    const { packed, scales, zeroPoints, nBlocks } = quantizeBlockwise(data, out, inFeatures, q.bits, q.blockSize);
    const inputs = [
      this.g.initializer(`${graphName}.qweight`, DT.UINT8, [out, nBlocks, (q.blockSize * q.bits) / 8], packed),
      this.weight(`${graphName}.scales`, scales, [out, nBlocks]),
    ];
    if (zeroPoints) inputs.push(this.g.initializer(`${graphName}.zero_points`, DT.UINT8, [out, zeroPoints.length / out], zeroPoints));
    this.quantized.set(graphName, { kind: "blocks", inputs, K: inFeatures, N: out });
    return graphName;
  }

  protected optionalBias(graphName: string, names: string[], outs: number[], present: boolean): string | null {
    if (!present) return null;
    const data = new Float32Array(outs.reduce((a, b) => a + b, 0));
    let at = 0;
    names.forEach((n, i) => {
      data.set(this.require(n, [outs[i]]), at);
      at += outs[i];
    });
    return this.weight(graphName, data, [data.length]);
  }

  /** RMSNorm weight of `size` elements (default: the hidden size); Gemma stores w and multiplies by (1 + w). */
  protected normWeight(name: string, size = this.cfg.hiddenSize): string {
    const w = this.require(name, [size]);
    if (this.cfg.normAddsOne) for (let i = 0; i < w.length; i++) w[i] = Math.fround(1 + w[i]);
    return this.weight(name, w, [w.length]);
  }

  // ---- building blocks --------------------------------------------------------------------
  protected gemm(x: string, w: string, bias: string | null, name: string): string {
    const q = this.quantized.get(w);
    if (!q) return this.g.op("Gemm", bias ? [x, w, bias] : [x, w], { transB: 1 }, { name });
    if (q.kind === "dynamic") return this.dynamicInt8MatMul(x, q.inputs, bias, name);
    const cfg = this.opts.quantize;
    if (!cfg || cfg.scheme === "int8-dynamic") throw new Error(`MatMulNBits weight ${w} in a graph built without blockwise quantisation`);
    const { bits, blockSize, accuracyLevel = DEFAULT_ACCURACY_LEVEL } = cfg;
    const attrs = { K: q.K, N: q.N, bits, block_size: blockSize, accuracy_level: accuracyLevel };
    const y = this.g.op("MatMulNBits", [x, ...q.inputs], attrs, { domain: "com.microsoft", name });
    return bias ? this.g.op("Add", [y, bias], {}, { name: `${name}_bias` }) : y;
  }

  protected dynamicInt8MatMul(x: string, inputs: string[], bias: string | null, name: string): string {
    const [qweight, scales] = inputs;
    return int8DynamicMatMul(this.g, x, qweight, scales, bias, name);
  }

  protected rmsNorm(x: string, weight: string, name: string): string {
    return this.g.op("SimplifiedLayerNormalization", [x, weight], { axis: -1, epsilon: { float: this.cfg.rmsNormEps } }, { name });
  }

  protected activation(x: string): string {
    if (this.cfg.activation === "gelu_tanh") return this.g.op("Gelu", [x], { approximate: "tanh" }, { name: "gelu" });
    return this.g.op("Mul", [x, this.g.op("Sigmoid", [x])], {}, { name: "silu" });
  }

  protected embed(inputIds: string): string {
    const { vocabSize, hiddenSize } = this.cfg;
    const table = this.weight(this.embedName(), this.require(this.embedName(), [vocabSize, hiddenSize]), [vocabSize, hiddenSize]);
    let rows = this.g.op("Gather", [table, this.g.op("Reshape", [inputIds, this.g.constI64([-1])])], { axis: 0 }, { name: "embed" });
    if (this.opts.interventions) {
      // The edit E' = E + w̄·vᵀ with w̄[t] = mean of row t (the embedding seen as a Linear from one-hot tokens).
      const coef = this.g.op("ReduceMean", [rows, this.g.constI64([-1])], { keepdims: 1 });
      rows = this.g.op("Add", [rows, this.g.op("Mul", [coef, this.rosiEmbed])], {}, { name: "rosi_embed" });
    }
    if (this.cfg.embeddingScale === null) return rows;
    return this.g.op("Mul", [rows, this.scalarAct(Math.fround(this.cfg.embeddingScale))], {}, { name: "embed_scale" });
  }

  /** Rotary inverse frequencies, rounded step by step to float32 as HF computes them (default: the config's global rotary). */
  protected inverseFrequencies(ropeTheta = this.cfg.ropeTheta, ropeScaling = this.cfg.ropeScaling): Float32Array {
    const { headDim } = this.cfg;
    const f = Math.fround;
    const inv = new Float32Array(headDim / 2);
    for (let i = 0; i < inv.length; i++) inv[i] = f(1 / f(Math.pow(ropeTheta, f((2 * i) / headDim))));
    if (ropeScaling.type === "linear") for (let i = 0; i < inv.length; i++) inv[i] = f(inv[i] / ropeScaling.factor);
    if (ropeScaling.type === "llama3") {
      const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions } = ropeScaling;
      const lowFreqWavelen = originalMaxPositions / lowFreqFactor;
      const highFreqWavelen = originalMaxPositions / highFreqFactor;
      for (let i = 0; i < inv.length; i++) {
        const wavelen = f((2 * Math.PI) / inv[i]);
        const scaled = wavelen > lowFreqWavelen ? f(inv[i] / factor) : inv[i];
        const medium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
        if (medium) {
          const smooth = f(f(f(originalMaxPositions / wavelen) - lowFreqFactor) / (highFreqFactor - lowFreqFactor));
          inv[i] = f(f(f(1 - smooth) * f(scaled / factor)) + f(smooth * scaled));
        } else inv[i] = scaled;
      }
    }
    return inv;
  }

  /**
   * cos/sin of p × inv_freq for p = 0 … max(position_ids), [P, head_dim/2] (the cache layout of ONNX Runtime's
   * RotaryEmbedding, which looks each token's row up by its position id). The same float32 products and Cos/Sin as
   * HF's per-position tables, computed for the positions of this pass only, so any position the model can take works.
   */
  protected rotaryTables(positionIds: string): void {
    const g = this.g;
    // At least T rows: RotaryEmbedding refuses a cache shorter than the sequence (rows of a capped batch can all be
    // shorter than T, so that their largest position is below T − 1).
    const last = g.op("ReduceMax", [g.op("Reshape", [positionIds, g.constI64([-1])]), g.constI64([0])], { keepdims: 0 });
    const rows = g.op("Max", [g.op("Add", [last, g.scalarI64(1)]), g.op("Gather", [g.op("Shape", [positionIds]), g.scalarI64(1)], { axis: 0 })]);
    const positions = g.op("Unsqueeze", [g.op("Cast", [g.op("Range", [g.scalarI64(0), rows, g.scalarI64(1)])], { to: DT.FLOAT }), g.constI64([-1])]);
    const table = (inverse: Float32Array, tag: string) => {
      const inv = g.constF32(inverse, [this.cfg.headDim / 2], `inv_freq${tag}`);
      const freqs = g.op("Mul", [positions, inv], {}, { name: `rope_freqs${tag}` }); // [P, D/2]
      return { cos: this.toAct(g.op("Cos", [freqs], {}, { name: `rope_cos${tag}` })), sin: this.toAct(g.op("Sin", [freqs], {}, { name: `rope_sin${tag}` })) };
    };
    ({ cos: this.cos, sin: this.sin } = table(this.inverseFrequencies(), ""));
    const local = this.cfg.localRope;
    if (local) this.localTables = table(this.inverseFrequencies(local.theta, local.scaling), "_local");
    this.positionIds = positionIds;
  }

  /** position_ids [B, T] (int64), for RotaryEmbedding. */
  protected positionIds = "";
  /** The sliding-window layers' own rotary tables (config localRope), or null. */
  protected localTables: { cos: string; sin: string } | null = null;

  /**
   * x·cos + rotate_half(x)·sin on [B, heads, T, head_dim] (HF's non-interleaved rotary), as one
   * com.microsoft.RotaryEmbedding node rather than Split, Neg, Concat, two Muls and an Add; layer l's tables
   * (the local ones on a sliding-window layer when the config has them).
   */
  protected applyRotary(x: string, name: string, l: number): string {
    const t = this.localTables && this.cfg.slidingWindow[l] !== null ? this.localTables : { cos: this.cos, sin: this.sin };
    return this.g.op("RotaryEmbedding", [x, this.positionIds, t.cos, t.sin], { interleaved: 0 }, { domain: "com.microsoft", name });
  }

  /**
   * Additive mask [B, 1, T, S] from attention_mask [B, S] (S = past + T): key j is visible to the query at
   * cache index i iff j ≤ i, key j is not padding, and (with a window W) j > i − W.
   */
  protected attentionMask(attentionMask: string, past: string, window: number | null): string {
    const cached = this.masks.get(window);
    if (cached) return cached;
    const g = this.g;
    const S = g.op("Gather", [g.op("Shape", [attentionMask]), g.scalarI64(1)], { axis: 0 });
    const P = g.op("Gather", [g.op("Shape", [past]), g.scalarI64(2)], { axis: 0 });
    const keyIdx = g.op("Range", [g.scalarI64(0), S, g.scalarI64(1)]); // [S]
    const queryIdx = g.op("Unsqueeze", [g.op("Range", [P, S, g.scalarI64(1)]), g.constI64([1])]); // [T,1]
    let visible = g.op("LessOrEqual", [keyIdx, queryIdx]); // [T,S]
    if (window !== null) visible = g.op("And", [visible, g.op("Greater", [keyIdx, g.op("Sub", [queryIdx, g.scalarI64(window)])])]);
    const notPad = g.op("Unsqueeze", [g.op("Cast", [attentionMask], { to: DT.BOOL }), g.constI64([1, 2])]); // [B,1,1,S]
    const allowed = g.op("And", [visible, notPad]); // [B,1,T,S]
    const mask = g.op("Where", [allowed, g.scalarF32(0), g.scalarF32(MASKED)], {}, { name: window ? `mask_w${window}` : "mask" });
    this.masks.set(window, mask);
    return mask;
  }

  /** Attention scores before the mask: softcapped when the config sets attnLogitSoftcap (Gemma 2). */
  protected scoreTransform(scores: string): string {
    const cap = this.cfg.attnLogitSoftcap;
    if (cap === null) return scores;
    const g = this.g;
    return g.op("Mul", [g.op("Tanh", [g.op("Div", [scores, g.scalarF32(cap)])]), g.scalarF32(cap)], {}, { name: "attn_softcap" });
  }

  /** The query or key heads [B, heads, T, D] before the rotary: as they are, or with config qkNorm an RMSNorm over each head (Qwen3, Gemma 3: q_norm / k_norm). */
  protected headNorm(l: number, which: "q" | "k", heads: string): string {
    if (!this.cfg.qkNorm) return heads;
    const name = `${this.layerPrefix(l)}.self_attn.${which}_norm.weight`;
    return this.rmsNorm(heads, this.normWeight(name, this.cfg.headDim), `L${l}_${which}_norm`);
  }

  protected attention(l: number, x: string, attentionMask: string): string {
    const g = this.g;
    const { hiddenSize, numHeads, numKvHeads, headDim } = this.cfg;
    const p = `${this.layerPrefix(l)}.self_attn`;
    const qOut = numHeads * headDim;
    const kvOut = numKvHeads * headDim;
    const names = ["q_proj", "k_proj", "v_proj"].map((n) => `${p}.${n}.weight`);
    const w_qkv = this.linearWeight(`${p}.qkv_proj.weight`, names, hiddenSize, [qOut, kvOut, kvOut]);
    const b_qkv = this.optionalBias(`${p}.qkv_proj.bias`, names.map((n) => n.replace(/weight$/, "bias")), [qOut, kvOut, kvOut], this.cfg.qkvBias);
    const qkv = this.gemm(x, w_qkv, b_qkv, `L${l}_qkv`);
    const [q, k, v] = g.node("Split", [qkv, g.constI64([qOut, kvOut, kvOut])], { axis: -1 }, { outputs: 3 });

    // [N, heads·D] → [B, heads, T, D]
    const heads = (t: string, n: number) =>
      g.op("Transpose", [g.op("Reshape", [t, g.op("Concat", [this.batchTokens.B, this.batchTokens.T, g.constI64([n, headDim])], { axis: 0 })])], { perm: [0, 2, 1, 3] });
    const query = this.applyRotary(this.headNorm(l, "q", heads(q, numHeads)), `L${l}_q_rot`, l);
    const key = this.applyRotary(this.headNorm(l, "k", heads(k, numKvHeads)), `L${l}_k_rot`, l);
    const value = heads(v, numKvHeads);

    const pastKey = IO.pastKey(l);
    const pastValue = IO.pastValue(l);
    g.input(pastKey, this.act, ["batch", numKvHeads, "past", headDim]);
    g.input(pastValue, this.act, ["batch", numKvHeads, "past", headDim]);
    const presentKey = g.op("Concat", [pastKey, key], { axis: 2 }, { output: IO.presentKey(l) });
    const presentValue = g.op("Concat", [pastValue, value], { axis: 2 }, { output: IO.presentValue(l) });
    g.output(presentKey, this.act, ["batch", numKvHeads, "total", headDim]);
    g.output(presentValue, this.act, ["batch", numKvHeads, "total", headDim]);

    // GQA without copying K/V: the query heads that share a KV head are stacked along the token axis.
    const group = numHeads / numKvHeads;
    const qGrouped = group === 1 ? query : g.op("Reshape", [query, g.constI64([0, numKvHeads, -1, headDim])]);
    let scores = g.op("MatMul", [qGrouped, g.op("Transpose", [presentKey], { perm: [0, 1, 3, 2] })], {}, { name: `L${l}_qk` });
    // Scale, mask and softmax in float32 (HF's half-precision softmax does the same). In a float32 graph the scale
    // comes straight after the MatMul, where ONNX Runtime folds it into the product (MatMulScaleFusion): a separate
    // Mul over the [B, heads, T, T] scores took 4 % of a 0.5B prefill.
    const scale = g.scalarF32(Math.fround(this.cfg.attentionScale));
    if (!this.half) scores = g.op("Mul", [scores, scale]);
    if (group !== 1) scores = g.op("Reshape", [scores, g.constI64([0, numHeads, -1, 0])]);
    if (this.half) scores = g.op("Mul", [this.toFloat(scores), scale]);
    scores = this.scoreTransform(scores);
    const mask = this.attentionMask(attentionMask, pastKey, this.cfg.slidingWindow[l]);
    const probs = this.toAct(g.op("Softmax", [g.op("Add", [scores, mask])], { axis: -1 }, { name: `L${l}_probs` }));
    const probsGrouped = group === 1 ? probs : g.op("Reshape", [probs, g.constI64([0, numKvHeads, -1, 0])]);
    let context = g.op("MatMul", [probsGrouped, presentValue], {}, { name: `L${l}_pv` });
    if (group !== 1) context = g.op("Reshape", [context, g.constI64([0, numHeads, -1, headDim])]);
    const attnFlat = g.op("Reshape", [g.op("Transpose", [context], { perm: [0, 2, 1, 3] }), g.constI64([-1, qOut])]);

    const writer = residualWriters(this.cfg, l)[0];
    const oName = writer.name;
    const W_o = this.require(oName, [hiddenSize, qOut]);
    const w_o = this.matrixWeight(oName, W_o, hiddenSize, qOut);
    const b_o = this.optionalBias(`${p}.o_proj.bias`, [`${p}.o_proj.bias`], [hiddenSize], this.cfg.oBias);
    const attnOut = this.gemm(attnFlat, w_o, b_o, `L${l}_o_proj`);
    return this.intervene(attnOut, attnFlat, writer, W_o);
  }

  /**
   * down(act(gate(x)) ⊙ up(x)). gate and up are two projections, not one packed one that a Split then copies apart
   * (bench, Qwen2.5-0.5B shape, prefill: the Split of the [tokens, 2·intermediate] product took 7 % of the pass).
   * int8-dynamic quantises x once for both, and leaves up's row scale s out: hidden = s ⊙ (act(gate) ⊙ up/s), and
   * down quantises its input per row anyway, so s only multiplies down's own row scale ([tokens, 1]) instead of a
   * [tokens, intermediate] product (that Mul took as long as the GEMM). Exact up to float rounding of the scales.
   */
  protected mlp(l: number, x: string): string {
    const g = this.g;
    const { hiddenSize, intermediateSize } = this.cfg;
    const p = `${this.layerPrefix(l)}.mlp`;
    const projection = (n: string) => ({
      w: this.matrixWeight(`${p}.${n}.weight`, this.require(`${p}.${n}.weight`, [intermediateSize, hiddenSize]), intermediateSize, hiddenSize),
      b: this.optionalBias(`${p}.${n}.bias`, [`${p}.${n}.bias`], [intermediateSize], this.cfg.mlpBias),
    });
    const gateProj = projection("gate_proj");
    const upProj = projection("up_proj");
    const writer = residualWriters(this.cfg, l)[1];
    const downName = writer.name;
    const W_down = this.require(downName, [hiddenSize, intermediateSize]);
    const w_down = this.matrixWeight(downName, W_down, hiddenSize, intermediateSize);
    const b_down = this.optionalBias(`${p}.down_proj.bias`, [`${p}.down_proj.bias`], [hiddenSize], this.cfg.mlpBias);

    const gateQ = this.quantized.get(gateProj.w);
    const upQ = this.quantized.get(upProj.w);
    const downQ = this.quantized.get(w_down);
    if (gateQ?.kind === "dynamic" && upQ?.kind === "dynamic" && downQ?.kind === "dynamic" && !this.cfg.mlpBias) {
      const xq = quantizeRowsInt8(g, x, `L${l}_mlp_in`);
      const gate = g.op("Mul", [int8CodesMatMul(g, xq.codes, gateQ.inputs[0], gateQ.inputs[1], `L${l}_gate_proj`), xq.rowScale], {}, { name: `L${l}_gate_rowscale` });
      const upOverS = int8CodesMatMul(g, xq.codes, upQ.inputs[0], upQ.inputs[1], `L${l}_up_proj`);
      const hiddenOverS = g.op("Mul", [this.activation(gate), upOverS], {}, { name: `L${l}_mlp_hidden` });
      const hq = quantizeRowsInt8(g, hiddenOverS, `L${l}_down_proj`);
      const downScale = g.op("Mul", [hq.rowScale, xq.rowScale], {}, { name: `L${l}_down_proj_xscale_s` });
      const mlpOut = g.op("Mul", [int8CodesMatMul(g, hq.codes, downQ.inputs[0], downQ.inputs[1], `L${l}_down_proj`), downScale], {}, { name: `L${l}_down_proj_rowscale` });
      return this.intervene(mlpOut, hiddenOverS, writer, W_down, xq.rowScale);
    }
    const gate = this.gemm(x, gateProj.w, gateProj.b, `L${l}_gate_proj`);
    const up = this.gemm(x, upProj.w, upProj.b, `L${l}_up_proj`);
    const hidden = g.op("Mul", [this.activation(gate), up], {}, { name: `L${l}_mlp_hidden` });
    const mlpOut = this.gemm(hidden, w_down, b_down, `L${l}_down_proj`);
    return this.intervene(mlpOut, hidden, writer, W_down);
  }

  /**
   * out + (x·k)·rosi_vectors[row] with k = w̄ + Δ: the rank-one edit W + v·kᵀ of the writer's [hidden, cols] matrix W,
   * applied at run time to its output (before any post-norm, where a rewritten W would act). Δ is this layer's row of
   * edit_keys_attn / edit_keys_mlp; zeros leave the key at w̄. Also exposes x as `writer_input.{row}`.
   */
  protected intervene(out: string, x: string, writer: ResidualWriter, W: Float32Array, xRowScale?: string): string {
    if (!this.opts.interventions) return out;
    const g = this.g;
    const { row, inFeatures: cols, name: weightName, layer } = writer;
    const wBar = this.weight(`${weightName}.wbar`, meanOfRows(W, W.length / cols, cols), [cols, 1]);
    const keys = writer.kind === "o_proj" ? this.editKeysAttn : this.editKeysMlp;
    const delta = g.op("Unsqueeze", [g.op("Gather", [keys, g.scalarI64(layer)], { axis: 0 }), g.constI64([1])]); // [cols,1]
    const key = g.op("Add", [wBar, delta], {}, { name: `edit_key_${row}` });
    // x given as x/s with its row scale s [N,1] (mlp's int8 path): k·x = s·(k·(x/s)), and the rows returned are rescaled.
    const keyDotX = g.op("MatMul", [x, key], {}, { name: `rosi_coef_${row}` }); // [N,1]
    const coef = xRowScale ? g.op("Mul", [keyDotX, xRowScale]) : keyDotX;
    this.coefficients[row] = coef;
    const vec = g.op("Gather", [this.rosiVectors, g.scalarI64(row)], { axis: 0 }); // [hidden]
    const { B, T } = this.batchTokens;
    const atPositions = (t: string, c: number, output?: string) =>
      g.op("GatherND", [g.op("Reshape", [this.toFloat(t), g.op("Concat", [B, T, g.constI64([c])], { axis: 0 })]), this.writerPositions], { batch_dims: 1 }, { output });
    if (xRowScale) g.op("Mul", [atPositions(x, cols), atPositions(xRowScale, 1)], {}, { output: IO.writerInput(row) });
    else atPositions(x, cols, IO.writerInput(row));
    g.output(IO.writerInput(row), DT.FLOAT, ["batch", "writer_positions", cols]);
    // ONNX Runtime runs a node nobody consumes (this GatherND) late, which keeps every writer's x alive for the
    // whole pass (+3.7 GB at 16 × 200 tokens on a Qwen2.5-0.5B shape, measured). Adding exactly 0 derived from
    // the output's shape to the edit vector makes this layer's result wait for it, so x is freed with its layer.
    const afterGather = this.toAct(g.op("Mul", [g.op("Cast", [g.op("ReduceSum", [g.op("Shape", [IO.writerInput(row)])], { keepdims: 1 })], { to: DT.FLOAT }), g.scalarF32(0)]));
    return g.op("Add", [out, g.op("Mul", [coef, g.op("Add", [vec, afterGather])])], {}, { name: `rosi_${row}` });
  }

  /** coef outputs of intervene(), by rosi_vectors row. */
  protected coefficients: string[] = [];
  /** writer_positions as GatherND indices [B, K', 1] (interventions only). */
  protected writerPositions = "";

  /** One decoder layer (Llama form); Gemma 2 overrides to add its post-norms. */
  protected layer(l: number, residual: string, attentionMask: string): string {
    const g = this.g;
    const p = this.layerPrefix(l);
    const attnIn = this.rmsNorm(residual, this.normWeight(`${p}.input_layernorm.weight`), `L${l}_input_norm`);
    const afterAttn = g.op("Add", [residual, this.attention(l, attnIn, attentionMask)], {}, { name: `L${l}_resid_attn` });
    const mlpIn = this.rmsNorm(afterAttn, this.normWeight(`${p}.post_attention_layernorm.weight`), `L${l}_mlp_norm`);
    return g.op("Add", [afterAttn, this.mlp(l, mlpIn)], {}, { name: `L${l}_resid_mlp` });
  }

  protected finalLogits(hidden: string): string {
    const g = this.g;
    const { hiddenSize, vocabSize } = this.cfg;
    const normed = this.rmsNorm(hidden, this.normWeight("model.norm.weight"), "final_norm");
    const headName = this.lmHeadName();
    // A tied head reuses the embedding initializer: Gemm(transB) reads the [vocab, hidden] table directly (unquantised
    // with MatMulNBits, since the Gather needs the full-precision table anyway). int8-dynamic quantises the head too,
    // tied or not (a tied one gets its own int8 copy beside the float table): in batched decoding the head is most of
    // the bytes read per step, and on organism-llama the int8 head leaves KL and greedy tokens as they were.
    const tied = headName === this.embedName();
    const read = () => this.require(headName, [vocabSize, hiddenSize]);
    const head =
      this.opts.quantize?.scheme === "int8-dynamic"
        ? this.matrixWeight("lm_head.weight", read(), vocabSize, hiddenSize)
        : tied
          ? this.embedName()
          : this.matrixWeight(headName, read(), vocabSize, hiddenSize);
    let logits = this.toFloat(this.gemm(normed, head, null, "lm_head"));
    const cap = this.cfg.finalLogitSoftcap;
    if (cap !== null) logits = g.op("Mul", [g.op("Tanh", [g.op("Div", [logits, g.scalarF32(cap)])]), g.scalarF32(cap)], {}, { name: "final_softcap" });
    return logits;
  }

  build(graph: OnnxGraph): OnnxGraph {
    this.g = graph;
    const g = graph;
    const { hiddenSize, numLayers, vocabSize, numHeads, headDim, intermediateSize } = this.cfg;
    const inputIds = g.input(IO.inputIds, DT.INT64, ["batch", "tokens"]);
    const attentionMask = g.input(IO.attentionMask, DT.INT64, ["batch", "total"]);
    const positionIds = g.input(IO.positionIds, DT.INT64, ["batch", "tokens"]);
    const logitPositions = g.input(IO.logitPositions, DT.INT64, ["batch", "positions"]);
    if (this.opts.interventions) {
      // Required inputs (the session wrapper feeds zeros): ONNX Runtime would constant-fold an initializer default.
      g.input(IO.rosiVectors, DT.FLOAT, [2 * numLayers, hiddenSize]);
      g.input(IO.steer, DT.FLOAT, [numLayers, hiddenSize]);
      g.input(IO.rosiEmbed, DT.FLOAT, [hiddenSize]);
      g.input(IO.editKeysAttn, DT.FLOAT, [numLayers, numHeads * headDim]);
      g.input(IO.editKeysMlp, DT.FLOAT, [numLayers, intermediateSize]);
      const writerPositions = g.input(IO.writerPositions, DT.INT64, ["batch", "writer_positions"]);
      this.writerPositions = g.op("Unsqueeze", [writerPositions, g.constI64([-1])]); // [B,K',1] for GatherND
      [this.rosiVectors, this.steer, this.rosiEmbed, this.editKeysAttn, this.editKeysMlp] = [IO.rosiVectors, IO.steer, IO.rosiEmbed, IO.editKeysAttn, IO.editKeysMlp].map((x) => this.toAct(x));
    }
    const idsShape = g.op("Shape", [inputIds]);
    this.batchTokens = {
      B: g.op("Slice", [idsShape, g.constI64([0]), g.constI64([1])]),
      T: g.op("Slice", [idsShape, g.constI64([1]), g.constI64([2])]),
    };
    const asBTH = (x: string, output: string) =>
      g.op("Reshape", [x, g.op("Concat", [this.batchTokens.B, this.batchTokens.T, g.constI64([hiddenSize])], { axis: 0 })], {}, { output });

    this.rotaryTables(positionIds);
    let residual = this.embed(inputIds);
    for (let l = 0; l < numLayers; l++) {
      if (this.opts.interventions) residual = g.op("Add", [residual, g.op("Gather", [this.steer, g.scalarI64(l)], { axis: 0 })], {}, { name: `steer_${l}` });
      asBTH(this.toFloat(residual), IO.residual(l));
      g.output(IO.residual(l), DT.FLOAT, ["batch", "tokens", hiddenSize]);
      residual = this.layer(l, residual, attentionMask);
    }
    const finalResidual = asBTH(this.toFloat(residual), IO.residualFinal);
    g.output(IO.residualFinal, DT.FLOAT, ["batch", "tokens", hiddenSize]);
    if (this.opts.interventions) {
      // The edit's input-dependent scale x·k per matrix and token, for calibrating how the edit is spread.
      const coefs = this.toFloat(g.op("Concat", this.coefficients, { axis: 1 })); // [N, 2L]
      g.op("Reshape", [coefs, g.op("Concat", [this.batchTokens.B, this.batchTokens.T, g.constI64([2 * numLayers])], { axis: 0 })], {}, { output: IO.rosiCoefficients });
      g.output(IO.rosiCoefficients, DT.FLOAT, ["batch", "tokens", 2 * numLayers]);
    }

    // Only the requested positions go through the (large) vocabulary projection.
    const picked = g.op("GatherND", [finalResidual, g.op("Unsqueeze", [logitPositions, g.constI64([-1])])], { batch_dims: 1 }); // [B,K,H]
    // (float16 graphs: the float32 round trip of the picked rows is exact)
    const logits = this.finalLogits(this.toAct(g.op("Reshape", [picked, g.constI64([-1, hiddenSize])])));
    const Bk = g.op("Slice", [g.op("Shape", [logitPositions]), g.constI64([0]), g.constI64([2])]);
    g.op("Reshape", [logits, g.op("Concat", [Bk, g.constI64([vocabSize])], { axis: 0 })], {}, { output: IO.logits });
    g.output(IO.logits, DT.FLOAT, ["batch", "positions", vocabSize]);
    return g;
  }
}

/**
 * y = dequant(quant(x)) · dequant(W) + bias for x [M, K] float32, W as int8 codes [K, N] with float32 scales [N]
 * (quantizePerChannel), x quantised per row (token), symmetric:
 *   s[m] = max_k |x[m, k]| / 127,  xq[m, k] = round(x[m, k] / s[m]) + 128 ∈ [1, 255] (uint8, zero point 128)
 *   y[m, n] = s[m] · scale[n] · Σ_k (xq[m, k] − 128) · q[k, n]
 * One scale per token (DynamicQuantizeMatMul has one per tensor): a token's result does not depend on the other
 * rows of the batch, and an outlier token does not coarsen everyone else's codes (per tensor, the organism's
 * direction cosines fell to 0.976). The u8·s8 product is ONNX Runtime's int8 GEMM (VNNI / AMX).
 * Measured (bench, Qwen2.5-0.5B shape, batch 8 × 128 prefill): MatMulInteger + Cast + 2 Muls spent 35 % of the
 * time in the Cast and Muls against 24 % in the GEMM itself; MatMulIntegerToFloat folds the column scale in.
 */
export function int8DynamicMatMul(g: OnnxGraph, x: string, qweight: string, scales: string, bias: string | null, name: string): string {
  const { codes, rowScale } = quantizeRowsInt8(g, x, name);
  const y = g.op("Mul", [int8CodesMatMul(g, codes, qweight, scales, name), rowScale], {}, { name: `${name}_rowscale` });
  return bias ? g.op("Add", [y, bias], {}, { name: `${name}_bias` }) : y;
}

/**
 * x [M, K] float32 quantised per row, symmetric: rowScale [M, 1] = max_k |x[m, k]| / 127, codes uint8 (zero point
 * 128). Several projections of the same x share one quantisation. max |x| is max(max x, −min x): two reductions
 * that read x, rather than Abs writing a copy of it that ReduceMax then reads.
 */
export function quantizeRowsInt8(g: OnnxGraph, x: string, name: string): { codes: string; rowScale: string } {
  const axes = g.constI64([-1]);
  const top = g.op("ReduceMax", [x, axes], { keepdims: 1 }, { name: `${name}_xmax` }); // [M,1]
  const bottom = g.op("ReduceMin", [x, axes], { keepdims: 1 }, { name: `${name}_xmin` });
  const amax = g.op("Max", [top, g.op("Neg", [bottom]), g.scalarF32(1e-30)], {}, { name: `${name}_amax` });
  // An all-zero row gets a tiny scale (its codes are all 0, so any positive scale is exact).
  const rowScale = g.op("Div", [amax, g.scalarF32(127)], {}, { name: `${name}_xscale` });
  const flat = g.op("Reshape", [rowScale, g.constI64([-1])]); // [M]
  const zp = g.op("Expand", [uint8Const(g, 128), g.op("Shape", [flat])]);
  const codes = g.op("QuantizeLinear", [x, flat, zp], { axis: 0 }, { name: `${name}_xq` });
  return { codes, rowScale };
}

/**
 * scale[n] · Σ_k (codes[m, k] − 128) · q[k, n]: the product without the row scale (the caller multiplies by it, or
 * folds it into a later step). MatMulIntegerToFloat applies the per-column scale inside the GEMM's output stage (its
 * A scale must be a scalar, so the row scale cannot go there): one pass over [M, N] instead of Cast + two Muls.
 */
export function int8CodesMatMul(g: OnnxGraph, codes: string, qweight: string, scales: string, name: string): string {
  return g.op("MatMulIntegerToFloat", [codes, qweight, g.scalarF32(1), scales, uint8Const(g, 128)], {}, { domain: "com.microsoft", name });
}

const U8_CONSTS = new WeakMap<OnnxGraph, string>();
/** The uint8 scalar 128 (zero point), one initializer per graph. */
function uint8Const(g: OnnxGraph, value: 128): string {
  let name = U8_CONSTS.get(g);
  if (!name) U8_CONSTS.set(g, (name = g.initializer(g.name("u8_128"), DT.UINT8, [], new Uint8Array([value]))));
  return name;
}

/** Mean over the rows of a row-major [rows, cols] matrix, accumulated in float64. */
export function meanOfRows(W: Float32Array, rows: number, cols: number): Float32Array {
  const acc = new Float64Array(cols);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) acc[c] += W[base + c];
  }
  const out = new Float32Array(cols);
  for (let c = 0; c < cols; c++) out[c] = acc[c] / rows;
  return out;
}
