// Two quantisation schemes for the projection matrices.
//
// 1. Weight-only block quantisation in the layout of ONNX Runtime's `com.microsoft.MatMulNBits`, so that
// checkpoints too large for float32 (an 8B model is 32 GB in f32) still run on CPU.
//
// MatMulNBits computes Y = A · dequant(B)ᵀ with B logically [N, K] — exactly the HF Linear weight
// [out_features = N, in_features = K], so no transpose is needed. Each row is cut into blocks of
// `blockSize` consecutive K values; every block has one float32 scale and one zero point:
//   w ≈ (q − zero_point) · scale,  q ∈ [0, 2^bits − 1]
// Layout (contrib-op spec):
// - packed:      uint8 [N, nBlocks, blockSize·bits/8], nBlocks = ceil(K / blockSize); codes run along K,
//                for 4 bits two per byte with the FIRST code in the LOW nibble. K is padded to a block
//                multiple; padding codes equal the zero point, so they dequantise to exactly 0.
// - scales:      float32 [N, nBlocks].
// - zero_points: uint8 [N, ceil(nBlocks·bits/8)], packed like B (4 bits: two per byte, low nibble first,
//                each row starting on a fresh byte). Absent means 2^(bits−1): 8 for int4, 128 for int8.

//
// 2. int8-dynamic, for speed: weights int8 per output channel, activations quantised per token at run time
// (the decoder's dynamicInt8MatMul), multiplied by ONNX Runtime's u8·s8 GEMM (`MatMulInteger`: AVX-512 VNNI, or
// AMX where the CPU has it):
//   w[n, k] ≈ q[k, n] · scale[n],  scale[n] = max_k |w[n, k]| / 127,  q ∈ [−127, 127] (symmetric, no zero point)
//   x[m, k] ≈ (xq[m, k] − 128) · s[m], s[m] = max_k |x[m, k]| / 127 (one scale per token)
// The lm_head is quantised too (the bulk of batched decoding's reads); the embedding table, residual adds,
// norms, attention and the logits stay float32.
// - qweight: int8 [K, N] (the HF [N, K] weight transposed: B as MatMulInteger / DynamicQuantizeMatMul take it).
// - scales:  float32 [N].

export type QuantBits = 4 | 8;

export type QuantizeConfig = BlockQuantizeConfig | DynamicQuantizeConfig;

/** int8 weights per output channel, activations quantised per token (MatMulInteger). */
export interface DynamicQuantizeConfig {
  scheme: "int8-dynamic";
}

/** Weight-only MatMulNBits blocks. `scheme` may be left out (the original form, e.g. `{ bits: 8, blockSize: 32 }`). */
export interface BlockQuantizeConfig {
  scheme?: "blockwise";
  bits: QuantBits;
  /** Weights per block along K: a power of 2 ≥ 16 (32, 64 or 128 in practice). */
  blockSize: number;
  /**
   * MatMulNBits `accuracy_level`: 4 (default) lets ONNX Runtime quantise the activations to int8 per block, 0 keeps
   * them float32 (the exact product with the dequantised weights). Measured with `bun run bench` (random
   * Qwen2.5-0.5B, 2-core CPU, batch 8): level 4 decodes int4 at 90 vs 61 tokens/s and int8 at 82 vs 8 tokens/s
   * (int8 has no fast float path), for ~12% slower int4 prefill and ~1e-3 relative error per matmul.
   */
  accuracyLevel?: 0 | 4;
}

export const DEFAULT_ACCURACY_LEVEL = 4;

export interface BlockQuantized {
  N: number;
  K: number;
  bits: QuantBits;
  blockSize: number;
  nBlocks: number;
  /** [N, nBlocks, blockSize·bits/8]. */
  packed: Uint8Array;
  /** [N · nBlocks]. */
  scales: Float32Array;
  /** Asymmetric only: [N · ceil(nBlocks·bits/8)]; symmetric blocks use the default 2^(bits−1). */
  zeroPoints?: Uint8Array;
}

export function validateQuantizeConfig(q: QuantizeConfig): void {
  if (q.scheme === "int8-dynamic") return;
  if (q.scheme !== undefined && q.scheme !== "blockwise") throw new Error(`quantize: unknown scheme "${(q as { scheme: unknown }).scheme}"`);
  if (q.bits !== 4 && q.bits !== 8) throw new Error(`quantize: bits must be 4 or 8, got ${q.bits}`);
  const b = q.blockSize;
  if (!Number.isInteger(b) || b < 16 || (b & (b - 1)) !== 0) throw new Error(`quantize: blockSize must be a power of 2 ≥ 16, got ${b}`);
  if (q.accuracyLevel !== undefined && q.accuracyLevel !== 0 && q.accuracyLevel !== 4) throw new Error(`quantize: accuracyLevel must be 0 or 4, got ${q.accuracyLevel}`);
}

/** "int4", "int8", optionally with a block size ("int4:64"; block 32 by default), or "int8-dynamic". */
export function parseQuantize(spec: string): QuantizeConfig {
  if (spec.trim() === "int8-dynamic") return { scheme: "int8-dynamic" };
  const m = /^int(4|8)(?::(\d+))?$/.exec(spec.trim());
  if (!m) throw new Error(`--quantize: expected int4, int8 (optionally :blockSize, e.g. int4:64) or int8-dynamic, got "${spec}"`);
  const q: BlockQuantizeConfig = { bits: Number(m[1]) as QuantBits, blockSize: m[2] ? Number(m[2]) : 32 };
  validateQuantizeConfig(q);
  return q;
}

/** Human-readable label for reports, e.g. "int4 (block 32)"; null for float32. */
export function describeQuantization(q: QuantizeConfig | null | undefined): string | null {
  if (!q) return null;
  if (q.scheme === "int8-dynamic") return "int8-dynamic (int8 weights per channel, int8 activations per token)";
  return `int${q.bits} (block ${q.blockSize}${(q.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL) === 0 ? ", float activations" : ""})`;
}

/**
 * Quantises a row-major [N, K] float32 matrix block by block along K, rounding to nearest.
 * - asymmetric (default): the block's range [min(0, lo), max(0, hi)] is mapped onto [0, 2^bits − 1];
 *   including 0 keeps the zero point an in-range integer and 0 exactly representable. The per-element
 *   error is at most scale/2.
 * - symmetric: scale = max|w| / (2^(bits−1) − 1) and the default zero point, so no zero_points tensor;
 *   one code is unused but the error is still at most scale/2.
 */
export function quantizeBlockwise(W: Float32Array, N: number, K: number, bits: QuantBits, blockSize: number, symmetric = false): BlockQuantized {
  validateQuantizeConfig({ bits, blockSize });
  if (W.length !== N * K) throw new Error(`quantizeBlockwise: got ${W.length} values for [${N}, ${K}]`);
  const nBlocks = Math.ceil(K / blockSize);
  const blob = (blockSize * bits) / 8;
  const qmax = (1 << bits) - 1;
  const zpRow = Math.ceil((nBlocks * bits) / 8);
  const packed = new Uint8Array(N * nBlocks * blob);
  const scales = new Float32Array(N * nBlocks);
  const zeroPoints = symmetric ? undefined : new Uint8Array(N * zpRow);
  const codes = new Uint8Array(blockSize);
  for (let n = 0; n < N; n++) {
    const row = n * K;
    for (let b = 0; b < nBlocks; b++) {
      const k0 = b * blockSize;
      const len = Math.min(blockSize, K - k0);
      let lo = 0;
      let hi = 0;
      for (let i = 0; i < len; i++) {
        const v = W[row + k0 + i];
        if (v < lo) lo = v;
        else if (v > hi) hi = v;
      }
      let scale: number;
      let zp: number;
      if (symmetric) {
        zp = 1 << (bits - 1);
        scale = Math.fround(Math.max(-lo, hi) / (zp - 1));
      } else {
        scale = Math.fround((hi - lo) / qmax);
        zp = scale > 0 ? Math.min(qmax, Math.max(0, Math.round(-lo / scale))) : 0;
      }
      // An all-zero block: any scale works with q = zp; 1 avoids dividing by zero.
      if (!(scale > 0)) scale = 1;
      scales[n * nBlocks + b] = scale;
      for (let i = 0; i < len; i++) codes[i] = Math.min(qmax, Math.max(0, Math.round(W[row + k0 + i] / scale) + zp));
      codes.fill(zp, len); // padding past K dequantises to 0
      const out = (n * nBlocks + b) * blob;
      if (bits === 8) packed.set(codes, out);
      else for (let i = 0; i < blob; i++) packed[out + i] = codes[2 * i] | (codes[2 * i + 1] << 4);
      if (zeroPoints) {
        if (bits === 8) zeroPoints[n * zpRow + b] = zp;
        else zeroPoints[n * zpRow + (b >> 1)] |= zp << (4 * (b & 1));
      }
    }
  }
  return { N, K, bits, blockSize, nBlocks, packed, scales, zeroPoints };
}

/** The float32 [N, K] matrix that MatMulNBits multiplies by: (q − zero_point) · scale. */
export function dequantizeBlockwise(q: BlockQuantized): Float32Array {
  const { N, K, bits, blockSize, nBlocks, packed, scales, zeroPoints } = q;
  const blob = (blockSize * bits) / 8;
  const zpRow = Math.ceil((nBlocks * bits) / 8);
  const out = new Float32Array(N * K);
  for (let n = 0; n < N; n++) {
    for (let b = 0; b < nBlocks; b++) {
      const scale = scales[n * nBlocks + b];
      let zp = 1 << (bits - 1);
      if (zeroPoints) zp = bits === 8 ? zeroPoints[n * zpRow + b] : (zeroPoints[n * zpRow + (b >> 1)] >> (4 * (b & 1))) & 15;
      const base = (n * nBlocks + b) * blob;
      const len = Math.min(blockSize, K - b * blockSize);
      for (let i = 0; i < len; i++) {
        const code = bits === 8 ? packed[base + i] : (packed[base + (i >> 1)] >> (4 * (i & 1))) & 15;
        out[n * K + b * blockSize + i] = Math.fround((code - zp) * scale);
      }
    }
  }
  return out;
}

export interface ChannelQuantized {
  N: number;
  K: number;
  /** int8 [K, N]: column n holds row n of the HF weight. */
  qweight: Int8Array;
  /** float32 [N]. */
  scales: Float32Array;
}

/**
 * Symmetric int8 per output channel of a row-major [N, K] float32 matrix, written transposed ([K, N]):
 * q[k, n] = round(w[n, k] / scale[n]) with scale[n] = max_k |w[n, k]| / 127. Error at most scale[n]/2.
 */
export function quantizePerChannel(W: Float32Array, N: number, K: number): ChannelQuantized {
  if (W.length !== N * K) throw new Error(`quantizePerChannel: got ${W.length} values for [${N}, ${K}]`);
  const qweight = new Int8Array(K * N);
  const scales = new Float32Array(N);
  for (let n = 0; n < N; n++) {
    const row = n * K;
    let amax = 0;
    for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(W[row + k]));
    // An all-zero row: any scale works with q = 0; 1 avoids dividing by zero.
    const scale = amax > 0 ? Math.fround(amax / 127) : 1;
    scales[n] = scale;
    for (let k = 0; k < K; k++) qweight[k * N + n] = Math.max(-127, Math.min(127, Math.round(W[row + k] / scale)));
  }
  return { N, K, qweight, scales };
}

/** The float32 [N, K] matrix the int8-dynamic product multiplies by (HF layout): q[k, n] · scale[n]. */
export function dequantizePerChannel(q: ChannelQuantized): Float32Array {
  const out = new Float32Array(q.N * q.K);
  for (let n = 0; n < q.N; n++) for (let k = 0; k < q.K; k++) out[n * q.K + k] = Math.fround(q.qweight[k * q.N + n] * q.scales[n]);
  return out;
}
