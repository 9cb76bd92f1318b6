// Tensor element types as spelled in safetensors headers, and fast conversions to/from float32.
// Everything here assumes a little-endian host (x86-64, arm64): typed-array views are used
// directly on file bytes, which are little-endian by the safetensors spec.

export type DType =
  | "BOOL"
  | "U8"
  | "I8"
  | "F8_E5M2"
  | "F8_E4M3"
  | "F8_E8M0"
  | "I16"
  | "U16"
  | "F16"
  | "BF16"
  | "I32"
  | "U32"
  | "F32"
  | "F64"
  | "I64"
  | "U64";

export class DTypeError extends Error {
  override name = "DTypeError";
}

// Byte size per element, listed in the Rust safetensors `Dtype` enum order; the writer sorts
// tensors by this rank (descending), so the order of these entries matters.
const DTYPES: ReadonlyArray<readonly [DType, number]> = [
  ["BOOL", 1],
  ["U8", 1],
  ["I8", 1],
  ["F8_E5M2", 1],
  ["F8_E4M3", 1],
  ["F8_E8M0", 1],
  ["I16", 2],
  ["U16", 2],
  ["F16", 2],
  ["BF16", 2],
  ["I32", 4],
  ["U32", 4],
  ["F32", 4],
  ["F64", 8],
  ["I64", 8],
  ["U64", 8],
];

const SIZE = new Map<string, number>(DTYPES);
const RANK = new Map<string, number>(DTYPES.map(([d], i) => [d, i]));

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new DTypeError("realign requires a little-endian host (safetensors data is little-endian)");
}

export function isDType(s: unknown): s is DType {
  return typeof s === "string" && SIZE.has(s);
}

/** Bytes per element. */
export function dtypeSize(d: DType): number {
  const s = SIZE.get(d);
  if (s === undefined) throw new DTypeError(`unknown dtype ${JSON.stringify(d)}`);
  return s;
}

/** Position in the Rust safetensors `Dtype` enum (BOOL = 0 … U64 = last); used for HF's write order. */
export function dtypeRank(d: DType): number {
  const r = RANK.get(d);
  if (r === undefined) throw new DTypeError(`unknown dtype ${JSON.stringify(d)}`);
  return r;
}

// ---------------------------------------------------------------------------------------------
// bf16 / f16 <-> f32

/** bf16 is the top half of an f32, so widening is a shift. */
export function bf16ToF32(src: Uint16Array, dst?: Float32Array): Float32Array {
  const out = dst ?? new Float32Array(src.length);
  checkLen(src.length, out.length);
  const o = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) o[i] = src[i] << 16;
  return out;
}

// 65536-entry table (256 KiB): f16 widening becomes one load per element.
let F16_TABLE: Uint32Array | null = null;
function f16Table(): Uint32Array {
  if (F16_TABLE) return F16_TABLE;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    let bits: number;
    if (exp === 0x1f) {
      bits = sign | 0x7f800000 | (man << 13); // inf / NaN (payload kept)
    } else if (exp !== 0) {
      bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man === 0) {
      bits = sign;
    } else {
      // subnormal: normalise the mantissa
      let e = 113;
      while ((man & 0x400) === 0) {
        man <<= 1;
        e--;
      }
      bits = sign | (e << 23) | ((man & 0x3ff) << 13);
    }
    t[h] = bits >>> 0;
  }
  F16_TABLE = t;
  return t;
}

export function f16ToF32(src: Uint16Array, dst?: Float32Array): Float32Array {
  const out = dst ?? new Float32Array(src.length);
  checkLen(src.length, out.length);
  const t = f16Table();
  const o = new Uint32Array(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < src.length; i++) o[i] = t[src[i]];
  return out;
}

/**
 * f32 -> bf16 with round-to-nearest-even, the formula torch uses (c10::BFloat16). NaN stays NaN
 * (sign and top payload bits kept) rather than rounding into Inf; torch's scalar path would
 * canonicalise it to 0x7FC0, which only differs in the payload.
 */
export function f32ToBf16(src: Float32Array, dst?: Uint16Array): Uint16Array {
  const out = dst ?? new Uint16Array(src.length);
  checkLen(src.length, out.length);
  const s = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < s.length; i++) {
    const u = s[i];
    if ((u & 0x7fffffff) > 0x7f800000) {
      // NaN: keep sign and top payload bits so bf16 -> f32 -> bf16 is the identity; if truncation
      // would leave an all-zero mantissa (= Inf), set the quiet bit instead
      const hi = u >>> 16;
      out[i] = (hi & 0x7f) !== 0 ? hi : hi | 0x40;
    } else out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** f32 -> IEEE binary16, round-to-nearest-even, including subnormals, overflow to Inf, NaN kept. */
export function f32ToF16(src: Float32Array, dst?: Uint16Array): Uint16Array {
  const out = dst ?? new Uint16Array(src.length);
  checkLen(src.length, out.length);
  const s = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < s.length; i++) out[i] = f32BitsToF16(s[i]);
  return out;
}

function f32BitsToF16(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a >= 0x7f800000) {
    if (a === 0x7f800000) return sign | 0x7c00;
    // NaN keeps its top payload bits (so f16 -> f32 -> f16 is the identity); quiet bit only if
    // truncation would otherwise turn it into Inf
    const m = (a >>> 13) & 0x3ff;
    return sign | 0x7c00 | (m !== 0 ? m : 0x200);
  }
  if (a >= 0x477ff000) return sign | 0x7c00; // ≥ 65520 rounds to Inf
  if (a >= 0x38800000) {
    // normal half: rebias exponent (127 -> 15), round away 13 mantissa bits (ties to even);
    // a mantissa carry correctly bumps the exponent
    return sign | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
  }
  if (a < 0x33000000) return sign; // < 2^-25: rounds to ±0 (exactly 2^-25 is a tie -> 0, even)
  // subnormal half: value = m * 2^(e-150) with the implicit bit; result = round(value / 2^-24)
  const e = a >>> 23;
  const m = (a & 0x7fffff) | 0x800000;
  const shift = 126 - e; // 14..24 bits dropped
  const half = 1 << (shift - 1);
  const rem = m & ((1 << shift) - 1);
  let r = m >>> shift;
  if (rem > half || (rem === half && (r & 1) === 1)) r++;
  return sign | r;
}

function checkLen(n: number, m: number): void {
  if (n !== m) throw new DTypeError(`conversion length mismatch: source has ${n} elements, destination ${m}`);
}

// ---------------------------------------------------------------------------------------------
// raw little-endian bytes <-> float32

/**
 * Interprets little-endian tensor bytes as `dtype` and returns float32 values. F32 input that is
 * 4-byte aligned is returned as a zero-copy view of the same memory; everything else is a new array.
 */
export function toFloat32(dtype: DType, bytes: Uint8Array): Float32Array {
  const size = dtypeSize(dtype);
  if (bytes.byteLength % size !== 0) {
    throw new DTypeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${size} bytes each)`);
  }
  const n = bytes.byteLength / size;
  const aligned = bytes.byteOffset % size === 0;
  // An unaligned source is copied once into fresh (aligned) memory so typed views can be used.
  const buf = aligned ? bytes : bytes.slice();
  const view = <T>(C: new (b: ArrayBufferLike, o: number, l: number) => T): T => new C(buf.buffer, buf.byteOffset, n);
  switch (dtype) {
    case "F32":
      return aligned ? view(Float32Array) : new Float32Array(buf.buffer, buf.byteOffset, n);
    case "BF16":
      return bf16ToF32(view(Uint16Array));
    case "F16":
      return f16ToF32(view(Uint16Array));
    case "F64":
      return Float32Array.from(view(Float64Array));
    case "I32":
      return Float32Array.from(view(Int32Array));
    case "U32":
      return Float32Array.from(view(Uint32Array));
    case "I16":
      return Float32Array.from(view(Int16Array));
    case "U16":
      return Float32Array.from(view(Uint16Array));
    case "I8":
      return Float32Array.from(view(Int8Array));
    case "U8":
    case "BOOL":
      return Float32Array.from(view(Uint8Array));
    case "I64": {
      const v = view(BigInt64Array);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = Number(v[i]);
      return out;
    }
    case "U64": {
      const v = view(BigUint64Array);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = Number(v[i]);
      return out;
    }
    default:
      throw new DTypeError(`conversion from ${dtype} to float32 is not supported`);
  }
}

/**
 * Encodes float32 values as little-endian bytes of a floating `dtype` (F32, F16, BF16, F64).
 * For F32 the result is a view of the input's memory (no copy).
 */
export function fromFloat32(dtype: DType, f32: Float32Array): Uint8Array {
  switch (dtype) {
    case "F32":
      return new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength);
    case "BF16": {
      const h = f32ToBf16(f32);
      return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    }
    case "F16": {
      const h = f32ToF16(f32);
      return new Uint8Array(h.buffer, h.byteOffset, h.byteLength);
    }
    case "F64": {
      const d = Float64Array.from(f32);
      return new Uint8Array(d.buffer);
    }
    default:
      throw new DTypeError(`conversion from float32 to ${dtype} is not supported (only F32, F16, BF16, F64)`);
  }
}

// ---------------------------------------------------------------------------------------------
// finiteness: one NaN or Inf weight turns every logit into NaN, so weights are checked, not trusted

/** The floating dtypes a weight may be stored in (what the engine reads and the edit writes back). */
export function isFloatDType(d: DType): boolean {
  return d === "F32" || d === "F16" || d === "BF16" || d === "F64";
}

/** A tensor (or vector) holds NaN or ±Inf; `index` is the flat index of the first such element. */
export class NonFiniteError extends Error {
  override name = "NonFiniteError";
  constructor(
    message: string,
    readonly index: number,
    readonly value: number,
  ) {
    super(message);
  }
}

/** Index of the first NaN or ±Inf in `data`, or -1. `x - x` is 0 for every finite x and NaN otherwise. */
export function firstNonFinite(data: Float32Array | Float64Array): number {
  for (let i = 0; i < data.length; i++) {
    const x = data[i];
    if (x - x !== 0) return i;
  }
  return -1;
}

/**
 * Index of the first NaN or ±Inf element in little-endian `bytes` of a floating `dtype`, or -1 (always -1
 * for integer dtypes). Looks at the exponent bits only, so no float32 copy is made: this is the check
 * for bytes about to be written (an f32 value can become Inf only when narrowed to F16).
 */
export function firstNonFiniteBytes(dtype: DType, bytes: Uint8Array): number {
  const size = dtypeSize(dtype);
  if (bytes.byteLength % size !== 0) throw new DTypeError(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${size} bytes each)`);
  if (!isFloatDType(dtype)) return -1;
  // typed views need aligned memory; an unaligned slice is copied once
  const buf = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const n = buf.byteLength / size;
  if (dtype === "F32") {
    const u = new Uint32Array(buf.buffer, buf.byteOffset, n);
    for (let i = 0; i < n; i++) if ((u[i] & 0x7f800000) === 0x7f800000) return i;
  } else if (dtype === "F64") {
    // high word of each little-endian f64 holds the 11 exponent bits
    const u = new Uint32Array(buf.buffer, buf.byteOffset, 2 * n);
    for (let i = 0; i < n; i++) if ((u[2 * i + 1] & 0x7ff00000) === 0x7ff00000) return i;
  } else {
    const mask = dtype === "BF16" ? 0x7f80 : 0x7c00;
    const u = new Uint16Array(buf.buffer, buf.byteOffset, n);
    for (let i = 0; i < n; i++) if ((u[i] & mask) === mask) return i;
  }
  return -1;
}

/** The value of element `index` of `bytes` (a floating dtype), for error messages. */
export function elementValue(dtype: DType, bytes: Uint8Array, index: number): number {
  const size = dtypeSize(dtype);
  return toFloat32(dtype, bytes.subarray(index * size, (index + 1) * size))[0];
}
