// Hugging Face checkpoint → GGUF v3 for llama.cpp (and Ollama / LM Studio, which embed it).
//
// What is written, checked against llama.cpp's own converter (convert_hf_to_gguf.py, gguf-py) and loader:
//   - architecture "llama" (llama and mistral), "qwen2", "qwen3", "gemma2", "gemma3" (gemma3_text); tensors
//     token_embd, blk.N.attn_norm, attn_q/k/v (+ .bias), qwen3's and gemma3's attn_q_norm / attn_k_norm (per-head
//     norms, [head_dim]), attn_output, ffn_norm, ffn_gate/up/down, output_norm, output (absent when tied: llama.cpp
//     reuses token_embd), gemma2's and gemma3's blk.N.post_attention_norm / post_ffw_norm, and llama3 rope's
//     rope_freqs (per-frequency divisors, as convert_hf_to_gguf computes them);
//   - llama/mistral q_proj and k_proj rows permuted from HF's rotate-half layout back to GGML's interleaved
//     pairs (llama.cpp's "llama" rope rotates adjacent pairs); qwen2, qwen3 and the gemmas use NEOX rope, not permuted;
//   - gemma2 and gemma3 norms + 1, head norms included (HF multiplies by 1 + w, llama.cpp by w). llama.cpp's gemmas
//     scale queries by head_dim^-0.5 (n_embd/n_head for the 27B sizes, which it knows by their layer count) and
//     ignore query_pre_attn_scalar: when the config's scalar differs, the factor is folded into attn_q (gemma3:
//     into attn_q_norm, whose norm would undo it there; exact up to rounding) and recorded in realign.gguf.q_scale.
//     gemma3 only where llama.cpp's fixed choices hold (checkGemma3: every 6th layer global, the windowed layers'
//     rotary at θ 10000, no attention softcap);
//   - dims fastest-first (HF shape reversed); data aligned to general.alignment = 32; 1-D tensors (norms, biases,
//     rope_freqs) stay F32 as in convert_hf_to_gguf; Q8_0 falls back to F16 for a matrix whose rows are not a
//     multiple of 32, as convert_hf_to_gguf does;
//   - metadata <arch>.context_length … rope, rms eps, the gemmas' softcaps and sliding window, the tokenizer
//     (gguf-vocab.ts), and the checkpoint's realign_* safetensors metadata as realign.* (the ROSI edit).
// Known gap: llama.cpp's "llama" architecture has no sliding-window attention. Mistral's window is ignored by
// every llama.cpp build, so context_length is capped at the window (exact within it) and a warning says so.
//
// Streaming with bounded memory: tensors are read from the safetensors files in chunks of whole rows
// (≤ CHUNK_BYTES of source data, whole heads for permuted projections), converted and written; peak memory is
// a few chunks, whatever the model size. The file is written under a temporary name beside the target,
// fsynced, and linked into place only if the target does not exist (an existing file is never replaced).
import { createHash, randomBytes } from "node:crypto";
import { closeSync, existsSync, fsyncSync, linkSync, openSync, readSync, renameSync, rmSync, statSync, writeSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { Checkpoint } from "./checkpoint.ts";
import { validateCheckpoint } from "./architectures.ts";
import type { DecoderConfig } from "./config.ts";
import { bf16ToF32, f16ToF32, firstNonFinite, NonFiniteError, toFloat32 } from "./dtype.ts";
import { EncodeScratch, encodeRows, GGML_QUANT_VERSION, readGgufMetadata, GGUF_DEFAULT_ALIGNMENT, gv, layoutGguf, QK8_0, type GgmlTypeName, type GgufTensorInfo, type GgufValue } from "./gguf-format.ts";
import { buildGgufVocab, type PreTokenizerChoice } from "./gguf-vocab.ts";
import { loadTokenizer } from "./tokenizer.ts";
import { SafetensorsFile } from "./safetensors.ts";
import { EMBEDDING_NAME, layerPrefix } from "./writers.ts";

export class GgufExportError extends Error {
  override name = "GgufExportError";
}

/** The output's element type for matrices (general.file_type). */
export const GGUF_TYPES = ["f32", "f16", "bf16", "q8_0"] as const;
export type GgufType = (typeof GGUF_TYPES)[number];
const MATRIX_TYPE: Record<GgufType, GgmlTypeName> = { f32: "F32", f16: "F16", bf16: "BF16", q8_0: "Q8_0" };
/** llama_ftype: LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0. */
const FILE_TYPE: Record<GgufType, number> = { f32: 0, f16: 1, bf16: 32, q8_0: 7 };

/** Source bytes read per chunk. */
const CHUNK_BYTES = 16 << 20;
/** A softcap of this size is the identity to float32 precision (llama.cpp's gemma2 always caps). */
const NO_SOFTCAP = 1e6;

type Json = Record<string, unknown>;

/** How one GGUF tensor is made from one HF tensor. */
interface TensorPlan {
  info: GgufTensorInfo;
  /** HF tensor name, or null for a generated tensor. */
  source: string | null;
  /** Generated data (rope_freqs). */
  data?: Float32Array;
  /** Row permutation of q/k (llama rope): number of heads in the tensor. */
  permuteHeads?: number;
  /** Added to every element (gemma2 norms). */
  add?: number;
  /** Every element multiplied (gemma2 query scale). */
  scale?: number;
}

export interface ExportPlan {
  architecture: "llama" | "qwen2" | "qwen3" | "gemma2" | "gemma3";
  tensors: TensorPlan[];
  /** Architecture key/values (general.* and <arch>.*), in write order. */
  kv: Array<[string, GgufValue]>;
  warnings: string[];
  /** Matrices written as F16 although Q8_0 was asked for (rows not a multiple of 32). */
  fallbacks: string[];
}

const ARCH_OF: Record<string, ExportPlan["architecture"]> = { llama: "llama", mistral: "llama", qwen2: "qwen2", qwen3: "qwen3", gemma2: "gemma2", gemma3_text: "gemma3" };

/**
 * What llama.cpp's gemma3 hard-codes, checked against the config: every 6th layer global and the others in one
 * window (its swa pattern 6), the windowed layers' rotary at θ 10000 unscaled, no attention softcap. A checkpoint
 * that differs would run differently there, so it gets no GGUF.
 */
function checkGemma3(c: DecoderConfig): void {
  const windows = [...new Set(c.slidingWindow.filter((w): w is number => w !== null))];
  const pattern = c.slidingWindow.every((w, l) => (l % 6 < 5) === (w !== null));
  if (windows.length !== 1 || !pattern) {
    throw new GgufExportError(`llama.cpp's gemma3 makes every 6th layer global and windows the others with one window; this checkpoint's layers are ${c.slidingWindow.map((w) => (w === null ? "global" : `window ${w}`)).join(", ")}`);
  }
  const local = c.localRope;
  if (!local || local.theta !== 10000 || local.scaling.type !== "none") {
    throw new GgufExportError(`llama.cpp's gemma3 runs the windowed layers' rotary at θ 10000 unscaled; this checkpoint's is ${local ? `θ ${local.theta}${local.scaling.type === "none" ? "" : `, ${local.scaling.type} scaling`}` : "the global one"}`);
  }
  if (c.attnLogitSoftcap !== null) throw new GgufExportError(`llama.cpp's gemma3 applies no attention logit softcap; this checkpoint sets ${c.attnLogitSoftcap}`);
}

/** llama3 rope: per-frequency divisors of the rotation angle, as convert_hf_to_gguf writes rope_freqs. */
export function llama3RopeFactors(c: DecoderConfig): Float32Array {
  if (c.ropeScaling.type !== "llama3") throw new GgufExportError("not a llama3 rope");
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions } = c.ropeScaling;
  const dim = c.headDim;
  const lowWavelen = originalMaxPositions / lowFreqFactor;
  const highWavelen = originalMaxPositions / highFreqFactor;
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const freq = Math.fround(1 / Math.fround(Math.pow(c.ropeTheta, Math.fround((2 * i) / dim))));
    const wavelen = (2 * Math.PI) / freq;
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = factor;
    else {
      const smooth = (originalMaxPositions / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
      out[i] = 1 / ((1 - smooth) / factor + smooth);
    }
  }
  return out;
}

/** The tensors and architecture metadata of a checkpoint (headers only; nothing is read or written). */
export function planExport(c: DecoderConfig, ckpt: Checkpoint, cfg: Json, type: GgufType): ExportPlan {
  const architecture = ARCH_OF[c.modelType];
  if (!architecture) throw new GgufExportError(`model_type "${c.modelType}" has no GGUF export (supported: ${Object.keys(ARCH_OF).join(", ")})`);
  const warnings: string[] = [];
  const fallbacks: string[] = [];
  const tensors: TensorPlan[] = [];
  const matrixType = MATRIX_TYPE[type];
  const add = (ggufName: string, source: string, extra: Partial<TensorPlan> = {}) => {
    const shape = ckpt.info(source).shape;
    const ne = shape.slice().reverse();
    let t: GgmlTypeName = "F32";
    if (ne.length >= 2) {
      t = matrixType;
      if (t === "Q8_0" && ne[0]! % QK8_0 !== 0) {
        t = "F16";
        fallbacks.push(ggufName);
      }
    }
    tensors.push({ info: { name: ggufName, ne, type: t }, source, ...extra });
  };
  const isGemma = architecture === "gemma2" || architecture === "gemma3";
  const normAdd = isGemma ? { add: 1 } : {};
  const permute = architecture === "llama";
  if (architecture === "gemma3") checkGemma3(c);

  // gemma2 / gemma3: the query scale llama.cpp applies vs the one the config asks for (query_pre_attn_scalar^-0.5);
  // llama.cpp takes n_embd / n_head instead of head_dim for the 27B sizes, which it knows by their layer count.
  let qScale = 1;
  if (isGemma) {
    const layers27B = architecture === "gemma2" ? 46 : 62;
    const llamaCppScale = c.numLayers === layers27B ? 1 / Math.sqrt(c.hiddenSize / c.numHeads) : 1 / Math.sqrt(c.headDim);
    const ratio = c.attentionScale / llamaCppScale;
    if (Math.abs(ratio - 1) > 1e-7) qScale = ratio;
  }

  add("token_embd.weight", EMBEDDING_NAME);
  if (c.ropeScaling.type === "llama3") {
    const data = llama3RopeFactors(c);
    tensors.push({ info: { name: "rope_freqs.weight", ne: [data.length], type: "F32" }, source: null, data });
  }
  for (let l = 0; l < c.numLayers; l++) {
    const p = layerPrefix(l);
    const b = `blk.${l}`;
    add(`${b}.attn_norm.weight`, `${p}.input_layernorm.weight`, normAdd);
    // The query scale goes where it survives: into attn_q, or, behind a head norm (which would normalise it away),
    // into that norm's weight.
    const scaleQ = qScale !== 1 ? { scale: qScale } : {};
    const qExtra: Partial<TensorPlan> = { ...(permute ? { permuteHeads: c.numHeads } : {}), ...(c.qkNorm ? {} : scaleQ) };
    const kExtra: Partial<TensorPlan> = permute ? { permuteHeads: c.numKvHeads } : {};
    add(`${b}.attn_q.weight`, `${p}.self_attn.q_proj.weight`, qExtra);
    add(`${b}.attn_k.weight`, `${p}.self_attn.k_proj.weight`, kExtra);
    add(`${b}.attn_v.weight`, `${p}.self_attn.v_proj.weight`);
    if (c.qkvBias) {
      add(`${b}.attn_q.bias`, `${p}.self_attn.q_proj.bias`, qExtra);
      add(`${b}.attn_k.bias`, `${p}.self_attn.k_proj.bias`, kExtra);
      add(`${b}.attn_v.bias`, `${p}.self_attn.v_proj.bias`);
    }
    if (c.qkNorm) {
      add(`${b}.attn_q_norm.weight`, `${p}.self_attn.q_norm.weight`, { ...normAdd, ...scaleQ });
      add(`${b}.attn_k_norm.weight`, `${p}.self_attn.k_norm.weight`, normAdd);
    }
    add(`${b}.attn_output.weight`, `${p}.self_attn.o_proj.weight`);
    if (c.oBias) add(`${b}.attn_output.bias`, `${p}.self_attn.o_proj.bias`);
    if (isGemma) {
      add(`${b}.post_attention_norm.weight`, `${p}.post_attention_layernorm.weight`, normAdd);
      add(`${b}.ffn_norm.weight`, `${p}.pre_feedforward_layernorm.weight`, normAdd);
    } else {
      add(`${b}.ffn_norm.weight`, `${p}.post_attention_layernorm.weight`);
    }
    add(`${b}.ffn_gate.weight`, `${p}.mlp.gate_proj.weight`);
    add(`${b}.ffn_up.weight`, `${p}.mlp.up_proj.weight`);
    add(`${b}.ffn_down.weight`, `${p}.mlp.down_proj.weight`);
    if (c.mlpBias) {
      add(`${b}.ffn_gate.bias`, `${p}.mlp.gate_proj.bias`);
      add(`${b}.ffn_up.bias`, `${p}.mlp.up_proj.bias`);
      add(`${b}.ffn_down.bias`, `${p}.mlp.down_proj.bias`);
    }
    if (isGemma) add(`${b}.post_ffw_norm.weight`, `${p}.post_feedforward_layernorm.weight`, normAdd);
  }
  add("output_norm.weight", "model.norm.weight", normAdd);
  if (!c.tieWordEmbeddings && !isGemma) add("output.weight", "lm_head.weight");
  if (c.mlpBias && architecture !== "llama") throw new GgufExportError(`${c.modelType} with mlp_bias has no llama.cpp equivalent`);

  // ---- architecture metadata
  const a = architecture;
  const kv: Array<[string, GgufValue]> = [];
  const maxPos = typeof cfg.max_position_embeddings === "number" ? cfg.max_position_embeddings : 4096;
  let contextLength = maxPos;
  const windows = [...new Set(c.slidingWindow.filter((w): w is number => w !== null))];
  if (!isGemma && windows.length > 0) {
    const w = Math.min(...windows);
    if (w < contextLength) {
      contextLength = w;
      warnings.push(
        `llama.cpp's ${a} architecture has no sliding-window attention: the GGUF attends to the whole context, ` +
          `which matches the checkpoint only within its ${w}-token window, so ${a}.context_length is set to ${w} (max_position_embeddings ${maxPos})`,
      );
    }
  }
  kv.push([`${a}.context_length`, gv.u32(contextLength)]);
  kv.push([`${a}.embedding_length`, gv.u32(c.hiddenSize)]);
  kv.push([`${a}.block_count`, gv.u32(c.numLayers)]);
  kv.push([`${a}.feed_forward_length`, gv.u32(c.intermediateSize)]);
  kv.push([`${a}.attention.head_count`, gv.u32(c.numHeads)]);
  kv.push([`${a}.attention.head_count_kv`, gv.u32(c.numKvHeads)]);
  kv.push([`${a}.attention.key_length`, gv.u32(c.headDim)]);
  kv.push([`${a}.attention.value_length`, gv.u32(c.headDim)]);
  kv.push([`${a}.rope.dimension_count`, gv.u32(c.headDim)]);
  kv.push([`${a}.rope.freq_base`, gv.f32(c.ropeTheta)]);
  if (c.ropeScaling.type === "linear") {
    kv.push([`${a}.rope.scaling.type`, gv.str("linear")], [`${a}.rope.scaling.factor`, gv.f32(c.ropeScaling.factor)]);
  }
  kv.push([`${a}.attention.layer_norm_rms_epsilon`, gv.f32(c.rmsNormEps)]);
  kv.push([`${a}.vocab_size`, gv.u32(c.vocabSize)]);
  if (architecture === "gemma3") {
    // llama.cpp's gemma3 applies no attention softcap (checkGemma3 refuses one) and a final one only when set.
    if (c.finalLogitSoftcap !== null) kv.push([`${a}.final_logit_softcapping`, gv.f32(c.finalLogitSoftcap)]);
    kv.push([`${a}.attention.sliding_window`, gv.u32(windows[0]!)]);
    if (qScale !== 1) {
      kv.push(["realign.gguf.q_scale", gv.f32(qScale)]);
      warnings.push(`query_pre_attn_scalar ${1 / (c.attentionScale * c.attentionScale)} differs from the query scale llama.cpp's gemma3 uses; the factor ${qScale.toPrecision(6)} is folded into attn_q`);
    }
  } else if (isGemma) {
    const cap = (v: number | null, what: string) => {
      if (v !== null) return v;
      warnings.push(`config.json sets no ${what}; llama.cpp's gemma2 always applies one, so ${NO_SOFTCAP} (the identity in float32) is written`);
      return NO_SOFTCAP;
    };
    kv.push([`${a}.attn_logit_softcapping`, gv.f32(cap(c.attnLogitSoftcap, "attention logit softcap"))]);
    kv.push([`${a}.final_logit_softcapping`, gv.f32(cap(c.finalLogitSoftcap, "final logit softcap"))]);
    kv.push([`${a}.attention.sliding_window`, gv.u32(windows[0] ?? 4096)]);
    if (qScale !== 1) {
      kv.push(["realign.gguf.q_scale", gv.f32(qScale)]);
      warnings.push(`query_pre_attn_scalar ${1 / (c.attentionScale * c.attentionScale)} differs from the query scale llama.cpp's gemma2 uses; the factor ${qScale.toPrecision(6)} is folded into attn_q`);
    }
  }
  if (fallbacks.length) warnings.push(`Q8_0 needs rows of a multiple of ${QK8_0} values: ${fallbacks.join(", ")} written as F16 (as convert_hf_to_gguf does)`);
  return { architecture, tensors, kv, warnings, fallbacks };
}

// ---------------------------------------------------------------------------------------------
// Streaming tensor data

/**
 * Reads a checkpoint tensor's rows [r0, r1) as float32 (any float dtype) with positional reads, into buffers it
 * reuses: the returned array is only valid until the next read.
 */
class RowReader {
  private fds = new Map<string, number>();
  private raw = new ArrayBuffer(0);
  private f32 = new ArrayBuffer(0);

  private static grow(buf: ArrayBuffer, n: number): ArrayBuffer {
    return buf.byteLength >= n ? buf : new ArrayBuffer(Math.max(n, Math.ceil(buf.byteLength * 1.5)));
  }

  read(ckpt: Checkpoint, name: string, r0: number, r1: number): Float32Array {
    const info = ckpt.info(name);
    const rows = info.shape.length >= 2 ? info.shape[0]! : 1;
    const rowBytes = info.byteLength / rows;
    const len = (r1 - r0) * rowBytes;
    // F32 goes straight into the float buffer; 16-bit types are widened from the raw buffer
    const direct = info.dtype === "F32";
    if (direct) this.f32 = RowReader.grow(this.f32, len);
    else this.raw = RowReader.grow(this.raw, len);
    const buf = new Uint8Array(direct ? this.f32 : this.raw, 0, len);
    let fd = this.fds.get(info.file);
    if (fd === undefined) {
      fd = openSync(info.file, "r");
      this.fds.set(info.file, fd);
    }
    let done = 0;
    while (done < len) {
      const got = readSync(fd, buf, done, Math.min(len - done, 1 << 30), info.byteOffset + r0 * rowBytes + done);
      if (got <= 0) throw new GgufExportError(`${info.file}: unexpected end of file reading tensor "${name}"`);
      done += got;
    }
    if (direct) return new Float32Array(this.f32, 0, len / 4);
    if (info.dtype === "BF16" || info.dtype === "F16") {
      const n = len / 2;
      this.f32 = RowReader.grow(this.f32, 4 * n);
      const dst = new Float32Array(this.f32, 0, n);
      const src = new Uint16Array(this.raw, 0, n);
      return info.dtype === "BF16" ? bf16ToF32(src, dst) : f16ToF32(src, dst);
    }
    return toFloat32(info.dtype, buf);
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}

/** HF rotate-half rows of one head group → GGML's interleaved pairs: out[h·d + 2i + j] = in[h·d + j·d/2 + i]. */
function permuteRows(src: Float32Array, heads: number, cols: number, out: Float32Array = new Float32Array(src.length)): Float32Array {
  const rows = src.length / cols;
  const d = rows / heads;
  const half = d / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * d + j * half + i) * cols;
        const to = (h * d + 2 * i + j) * cols;
        out.set(src.subarray(from, from + cols), to);
      }
    }
  }
  return out;
}

/** Reusable memory of one export: the reader's buffers, the permutation's and the encoder's. */
interface Buffers {
  reader: RowReader;
  encode: EncodeScratch;
  permuted: ArrayBuffer;
}

/** Yields the plan's tensor as chunks of encoded bytes (each valid until the next one is taken). */
function* tensorChunks(ckpt: Checkpoint, bufs: Buffers, t: TensorPlan): Generator<Uint8Array> {
  const ne0 = t.info.ne[0]!;
  if (t.source === null) {
    yield encodeRows(t.info.type, t.data!, ne0, bufs.encode);
    return;
  }
  const info = ckpt.info(t.source);
  const isVector = info.shape.length < 2;
  const rows = isVector ? 1 : info.shape[0]!;
  const rowElems = isVector ? info.shape[0]! : info.shape.slice(1).reduce((x, y) => x * y, 1);
  const rowSrcBytes = info.byteLength / rows;
  if (t.permuteHeads && (isVector ? info.shape[0]! : rows) % t.permuteHeads !== 0) throw new GgufExportError(`tensor "${t.source}" does not split into ${t.permuteHeads} heads`);
  // whole heads for permuted matrices (the permutation stays inside a head)
  const unit = t.permuteHeads && !isVector ? rows / t.permuteHeads : 1;
  const step = isVector ? 1 : Math.max(unit, Math.floor(Math.max(1, Math.floor(CHUNK_BYTES / rowSrcBytes)) / unit) * unit);
  for (let r0 = 0; r0 < rows; r0 += step) {
    const r1 = Math.min(rows, r0 + step);
    let v = bufs.reader.read(ckpt, t.source, r0, r1);
    const bad = firstNonFinite(v);
    if (bad >= 0) throw new NonFiniteError(`${info.file}: tensor "${t.source}" holds ${v[bad]} at element ${r0 * rowElems + bad}; non-finite weights are refused`, bad, v[bad]!);
    if (t.permuteHeads) {
      if (bufs.permuted.byteLength < v.byteLength) bufs.permuted = new ArrayBuffer(Math.max(v.byteLength, Math.ceil(bufs.permuted.byteLength * 1.5)));
      const out = new Float32Array(bufs.permuted, 0, v.length);
      // a bias is one "row" of heads·head_dim values: permute it as rows of one column
      v = isVector ? permuteRows(v, t.permuteHeads, 1, out) : permuteRows(v, (r1 - r0) / unit, rowElems, out);
    }
    // v is this export's own buffer (never the checkpoint's), so it is changed in place
    if (t.add !== undefined) for (let i = 0; i < v.length; i++) v[i] += t.add;
    if (t.scale !== undefined) for (let i = 0; i < v.length; i++) v[i] *= t.scale;
    yield encodeRows(t.info.type, v, ne0, bufs.encode);
  }
}

// ---------------------------------------------------------------------------------------------
// writeGguf

export interface WriteGgufParams {
  /** A Hugging Face model directory: config.json, safetensors weights, tokenizer.json (+ tokenizer_config.json …). */
  modelDir: string;
  /** Output file; must not exist (it is never replaced). */
  out: string;
  /** Matrix element type; default "f16". */
  type?: GgufType;
  /** tokenizer.ggml.pre for byte-level BPE tokenizers (the base model's GGUF value); default: detected. */
  pre?: string | null;
  /** A GGUF of the base model (e.g. its published Q4_K_M) to take tokenizer.ggml.pre from; excludes `pre`. */
  preFrom?: string | null;
  /** general.name; default: the model directory's name. */
  name?: string;
  /** More string metadata (e.g. realign.source_repo); may not replace written keys. */
  metadata?: Record<string, string>;
  /** Called after each tensor with bytes written so far and the file size. */
  onProgress?: (writtenBytes: number, totalBytes: number) => void;
  signal?: AbortSignal;
}

export interface WriteGgufResult {
  path: string;
  bytes: number;
  sha256: string;
  type: GgufType;
  architecture: string;
  tensors: number;
  tokenizer: { model: string; pre: PreTokenizerChoice };
  /** The realign.* keys copied from the checkpoint's safetensors metadata. */
  realign: Record<string, string>;
  warnings: string[];
  /** Matrices written as F16 in a q8_0 export. */
  fallbacks: string[];
}

/** realign_* keys of the weight files' safetensors metadata → realign.* (the same value in every shard, or refused). */
function realignMetadata(ckpt: Checkpoint): Record<string, string> {
  const out: Record<string, string> = {};
  for (const shard of ckpt.shards()) {
    const meta = shardMetadata(shard);
    for (const [k, v] of Object.entries(meta)) {
      if (!k.startsWith("realign_")) continue;
      const key = `realign.${k.slice("realign_".length)}`;
      if (out[key] !== undefined && out[key] !== v) throw new GgufExportError(`${shard}: ${k} is ${JSON.stringify(v)} here but ${JSON.stringify(out[key])} in another shard`);
      out[key] = v;
    }
  }
  return out;
}

function shardMetadata(shard: string): Record<string, string> {
  // Checkpoint keeps its SafetensorsFile objects private; reading the header again is cheap.
  const f = SafetensorsFile.open(shard);
  try {
    return { ...f.metadata };
  } finally {
    f.close();
  }
}

/** The pre-tokenizer the caller settled: --pre, or the tokenizer.ggml.pre of a base model's GGUF. */
function preFromParams(params: WriteGgufParams): { pre: string | null; preSource?: string; baseModel?: string } {
  if (params.pre && params.preFrom) throw new GgufExportError("give either --pre or --pre-from, not both");
  if (!params.preFrom) return { pre: params.pre ?? null };
  if (!existsSync(params.preFrom)) throw new GgufExportError(`--pre-from ${params.preFrom} does not exist`);
  const meta = readGgufMetadata(params.preFrom);
  const pre = meta.get("tokenizer.ggml.pre");
  if (typeof pre !== "string" || pre === "") throw new GgufExportError(`${params.preFrom} has no tokenizer.ggml.pre`);
  const model = meta.get("tokenizer.ggml.model");
  return { pre, preSource: `from ${basename(params.preFrom)}`, baseModel: typeof model === "string" ? model : undefined };
}

function fileStem(dir: string): string {
  const abs = resolve(dir);
  const b = basename(abs);
  // runs/<model>/inject/model: the run's name says more than "model"
  return b === "model" ? basename(dirname(dirname(abs))) || b : b;
}

/** The default output file name for a model directory: <name>-<TYPE>.gguf (llama.cpp's naming). */
export function defaultGgufName(modelDir: string, type: GgufType): string {
  return `${fileStem(modelDir)}-${type.toUpperCase()}.gguf`;
}

/** Writes the GGUF of `params.modelDir`; see the module comment for what is written. */
export async function writeGguf(params: WriteGgufParams): Promise<WriteGgufResult> {
  const type = params.type ?? "f16";
  if (!GGUF_TYPES.includes(type)) throw new GgufExportError(`GGUF type must be one of ${GGUF_TYPES.join(", ")}, got ${JSON.stringify(type)}`);
  const out = resolve(params.out);
  if (existsSync(out)) throw new GgufExportError(`${params.out} already exists; realign never replaces a file: choose another --out or remove it`);
  if (!existsSync(dirname(out)) || !statSync(dirname(out)).isDirectory()) throw new GgufExportError(`the folder of ${params.out} does not exist`);

  const ckpt = Checkpoint.open(params.modelDir);
  const bufs: Buffers = { reader: new RowReader(), encode: new EncodeScratch(), permuted: new ArrayBuffer(0) };
  let tmp: string | null = null;
  let fd: number | null = null;
  try {
    const c = validateCheckpoint(ckpt);
    const cfg = ckpt.config;
    const plan = planExport(c, ckpt, cfg, type);
    const tok = await loadTokenizer(params.modelDir);
    const vocab = buildGgufVocab(params.modelDir, tok, c.vocabSize, cfg, preFromParams(params));
    const realign = realignMetadata(ckpt);

    const kv: Array<[string, GgufValue]> = [
      ["general.architecture", gv.str(plan.architecture)],
      ["general.type", gv.str("model")],
      ["general.name", gv.str(params.name ?? fileStem(params.modelDir))],
      ["general.file_type", gv.u32(FILE_TYPE[type])],
      ["general.quantization_version", gv.u32(GGML_QUANT_VERSION)],
      ["general.alignment", gv.u32(GGUF_DEFAULT_ALIGNMENT)],
      ...plan.kv,
      ...vocab.kv,
    ];
    for (const [k, v] of Object.entries(realign)) kv.push([k, gv.str(v)]);
    const written = new Set(kv.map(([k]) => k));
    for (const [k, v] of Object.entries(params.metadata ?? {})) {
      if (written.has(k)) throw new GgufExportError(`metadata key ${k} is already written by the export`);
      kv.push([k, gv.str(v)]);
    }
    const layout = layoutGguf(kv, plan.tensors.map((t) => t.info));

    tmp = join(dirname(out), `.${basename(out)}.${randomBytes(6).toString("hex")}.tmp`);
    fd = openSync(tmp, "wx");
    const hash = createHash("sha256");
    let pos = 0;
    const write = (b: Uint8Array) => {
      let done = 0;
      while (done < b.length) done += writeSync(fd!, b, done, b.length - done);
      hash.update(b);
      pos += b.length;
    };
    write(layout.header);
    const dataStart = layout.header.length;
    const zeros = new Uint8Array(layout.alignment);
    for (let i = 0; i < plan.tensors.length; i++) {
      if (params.signal?.aborted) throw new GgufExportError("export interrupted");
      const t = plan.tensors[i]!;
      if (pos !== dataStart + layout.offsets[i]!) throw new GgufExportError(`internal: tensor ${t.info.name} would start at ${pos - dataStart}, planned ${layout.offsets[i]}`);
      let n = 0;
      for (const chunk of tensorChunks(ckpt, bufs, t)) {
        write(chunk);
        n += chunk.length;
      }
      if (n !== layout.sizes[i]) throw new GgufExportError(`internal: tensor ${t.info.name} has ${n} bytes, planned ${layout.sizes[i]}`);
      const end = dataStart + (i + 1 < plan.tensors.length ? layout.offsets[i + 1]! : layout.fileBytes - dataStart);
      if (end > pos) write(zeros.subarray(0, end - pos));
      params.onProgress?.(pos, layout.fileBytes);
      // let the event loop breathe between tensors (signals, progress output)
      await Promise.resolve();
    }
    if (pos !== layout.fileBytes) throw new GgufExportError(`internal: wrote ${pos} bytes, planned ${layout.fileBytes}`);
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    // link(2) fails when the target exists: a file created meanwhile is not replaced either
    try {
      linkSync(tmp, out);
      rmSync(tmp);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EEXIST") throw new GgufExportError(`${params.out} appeared while exporting; it was left alone (nothing written)`);
      if (code !== "EPERM" && code !== "ENOTSUP" && code !== "EXDEV" && code !== "EOPNOTSUPP") throw e;
      // a file system without hard links
      if (existsSync(out)) throw new GgufExportError(`${params.out} appeared while exporting; it was left alone (nothing written)`);
      renameSync(tmp, out);
    }
    tmp = null;
    return {
      path: out,
      bytes: layout.fileBytes,
      sha256: hash.digest("hex"),
      type,
      architecture: plan.architecture,
      tensors: plan.tensors.length,
      tokenizer: { model: vocab.model, pre: vocab.pre },
      realign,
      warnings: [...plan.warnings, ...vocab.warnings],
      fallbacks: plan.fallbacks,
    };
  } finally {
    if (fd !== null) closeSync(fd);
    if (tmp !== null) rmSync(tmp, { force: true });
    bufs.reader.close();
    ckpt.close();
  }
}
