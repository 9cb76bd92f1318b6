// The GGUF v3 container, as llama.cpp reads it (ggml/src/gguf.cpp, gguf-py's constants.py):
//   "GGUF" magic, u32 version 3, u64 tensor count, u64 key/value count;
//   key/values: key (u64 length + UTF-8), u32 value type, value (arrays: u32 element type, u64 count, elements);
//   tensor infos: name, u32 n_dims, u64 ne[0..n_dims) FASTEST-FIRST (reversed from HF/PyTorch shapes),
//   u32 ggml type, u64 offset of the data inside the data section (a multiple of general.alignment);
//   padding to general.alignment, then the data section (each tensor padded to the alignment).
// All little-endian. This module only encodes: the caller streams tensor data after the header.
// Also the element encodings realign writes: F32, F16, BF16 and Q8_0 (blocks of 32 values: one fp16
// scale d = max|x|/127, then 32 int8 round(x/d), as ggml's quantize_row_q8_0_ref).
import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { f32ToBf16, f32ToF16 } from "./dtype.ts";

export class GgufFormatError extends Error {
  override name = "GgufFormatError";
}

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** ggml's GGML_MAX_NAME: longer tensor names are refused by the loader. */
export const GGML_MAX_NAME = 64;
/** GGML_QNT_VERSION, written as general.quantization_version. */
export const GGML_QUANT_VERSION = 2;

/** gguf value types (gguf_type). */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const;
type ScalarTypeName = "u8" | "i8" | "u16" | "i16" | "u32" | "i32" | "f32" | "bool" | "string" | "u64" | "i64" | "f64";

/** A typed metadata value; the type is explicit because GGUF readers check it (e.g. token_type must be INT32). */
export type GgufValue =
  | { type: Exclude<ScalarTypeName, "string" | "bool">; value: number | bigint }
  | { type: "bool"; value: boolean }
  | { type: "string"; value: string }
  | { type: "array"; of: Exclude<ScalarTypeName, "bool" | "string">; value: ArrayLike<number> }
  | { type: "array"; of: "string"; value: readonly string[] }
  | { type: "array"; of: "bool"; value: readonly boolean[] };

export const gv = {
  u32: (value: number): GgufValue => ({ type: "u32", value }),
  i32: (value: number): GgufValue => ({ type: "i32", value }),
  f32: (value: number): GgufValue => ({ type: "f32", value }),
  bool: (value: boolean): GgufValue => ({ type: "bool", value }),
  str: (value: string): GgufValue => ({ type: "string", value }),
  strs: (value: readonly string[]): GgufValue => ({ type: "array", of: "string", value }),
  i32s: (value: ArrayLike<number>): GgufValue => ({ type: "array", of: "i32", value }),
  f32s: (value: ArrayLike<number>): GgufValue => ({ type: "array", of: "f32", value }),
};

const SCALAR_CODE: Record<ScalarTypeName, number> = {
  u8: GgufValueType.UINT8,
  i8: GgufValueType.INT8,
  u16: GgufValueType.UINT16,
  i16: GgufValueType.INT16,
  u32: GgufValueType.UINT32,
  i32: GgufValueType.INT32,
  f32: GgufValueType.FLOAT32,
  bool: GgufValueType.BOOL,
  string: GgufValueType.STRING,
  u64: GgufValueType.UINT64,
  i64: GgufValueType.INT64,
  f64: GgufValueType.FLOAT64,
};
const SCALAR_SIZE: Record<Exclude<ScalarTypeName, "string">, number> = { u8: 1, i8: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, bool: 1, u64: 8, i64: 8, f64: 8 };

/** ggml tensor types realign writes (ggml_type values). */
export const GgmlType = { F32: 0, F16: 1, Q8_0: 8, BF16: 30 } as const;
export type GgmlTypeName = keyof typeof GgmlType;
export const QK8_0 = 32;
const Q8_0_BLOCK_BYTES = 2 + QK8_0;

/** Bytes of one row of `ne0` elements in `type` (Q8_0 needs ne0 % 32 == 0). */
export function rowBytes(type: GgmlTypeName, ne0: number): number {
  switch (type) {
    case "F32":
      return 4 * ne0;
    case "F16":
    case "BF16":
      return 2 * ne0;
    case "Q8_0":
      if (ne0 % QK8_0 !== 0) throw new GgufFormatError(`Q8_0 rows must hold a multiple of ${QK8_0} values, got ${ne0}`);
      return (ne0 / QK8_0) * Q8_0_BLOCK_BYTES;
  }
}

/** Bytes of a tensor with ggml dims `ne` (fastest first). */
export function tensorBytes(type: GgmlTypeName, ne: readonly number[]): number {
  let rows = 1;
  for (let i = 1; i < ne.length; i++) rows *= ne[i]!;
  return rowBytes(type, ne[0] ?? 1) * rows;
}

export const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

// ---------------------------------------------------------------------------------------------
// Encoding

const utf8 = new TextEncoder();

/** Growable little-endian byte buffer. */
class ByteSink {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private ensure(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.ensure(1);
    this.view.setUint8(this.length, v);
    this.length += 1;
  }
  i8(v: number): void {
    this.ensure(1);
    this.view.setInt8(this.length, v);
    this.length += 1;
  }
  u16(v: number): void {
    this.ensure(2);
    this.view.setUint16(this.length, v, true);
    this.length += 2;
  }
  i16(v: number): void {
    this.ensure(2);
    this.view.setInt16(this.length, v, true);
    this.length += 2;
  }
  u32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number): void {
    this.ensure(4);
    this.view.setInt32(this.length, v, true);
    this.length += 4;
  }
  f32(v: number): void {
    this.ensure(4);
    this.view.setFloat32(this.length, v, true);
    this.length += 4;
  }
  f64(v: number): void {
    this.ensure(8);
    this.view.setFloat64(this.length, v, true);
    this.length += 8;
  }
  u64(v: number | bigint): void {
    this.ensure(8);
    this.view.setBigUint64(this.length, BigInt(v), true);
    this.length += 8;
  }
  i64(v: number | bigint): void {
    this.ensure(8);
    this.view.setBigInt64(this.length, BigInt(v), true);
    this.length += 8;
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  str(s: string): void {
    const b = utf8.encode(s);
    this.u64(b.length);
    this.bytes(b);
  }
  zeros(n: number): void {
    this.ensure(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

function checkInt(key: string, t: string, v: number | bigint, min: bigint, max: bigint): void {
  const b = typeof v === "bigint" ? v : Number.isInteger(v) ? BigInt(v) : null;
  if (b === null || b < min || b > max) throw new GgufFormatError(`metadata ${key}: ${String(v)} is not a valid ${t}`);
}

const INT_RANGE: Record<string, [bigint, bigint]> = {
  u8: [0n, 255n],
  i8: [-128n, 127n],
  u16: [0n, 65535n],
  i16: [-32768n, 32767n],
  u32: [0n, 0xffffffffn],
  i32: [-0x80000000n, 0x7fffffffn],
  u64: [0n, 0xffffffffffffffffn],
  i64: [-0x8000000000000000n, 0x7fffffffffffffffn],
};

function writeScalar(sink: ByteSink, key: string, t: Exclude<ScalarTypeName, "string">, v: number | bigint | boolean): void {
  if (t === "bool") {
    sink.u8(v ? 1 : 0);
    return;
  }
  if (t === "f32" || t === "f64") {
    if (typeof v !== "number" || !Number.isFinite(v)) throw new GgufFormatError(`metadata ${key}: ${String(v)} is not a finite number`);
    if (t === "f32") sink.f32(v);
    else sink.f64(v);
    return;
  }
  const range = INT_RANGE[t]!;
  checkInt(key, t, v as number | bigint, range[0], range[1]);
  switch (t) {
    case "u8":
      return sink.u8(Number(v));
    case "i8":
      return sink.i8(Number(v));
    case "u16":
      return sink.u16(Number(v));
    case "i16":
      return sink.i16(Number(v));
    case "u32":
      return sink.u32(Number(v));
    case "i32":
      return sink.i32(Number(v));
    case "u64":
      return sink.u64(v as number | bigint);
    case "i64":
      return sink.i64(v as number | bigint);
  }
}

function writeValue(sink: ByteSink, key: string, v: GgufValue): void {
  if (v.type === "array") {
    sink.u32(GgufValueType.ARRAY);
    sink.u32(SCALAR_CODE[v.of]);
    sink.u64(v.value.length);
    if (v.of === "string") for (const s of v.value as readonly string[]) sink.str(s);
    else for (let i = 0; i < v.value.length; i++) writeScalar(sink, key, v.of, (v.value as ArrayLike<number | boolean>)[i]!);
    return;
  }
  sink.u32(SCALAR_CODE[v.type]);
  if (v.type === "string") sink.str(v.value);
  else writeScalar(sink, key, v.type, v.value);
}

/** A tensor as the header describes it. */
export interface GgufTensorInfo {
  name: string;
  /** ggml dims, fastest first (HF shape reversed). */
  ne: number[];
  type: GgmlTypeName;
}

export interface GgufLayout {
  /** Everything before the data section, padding included. */
  header: Uint8Array;
  /** Byte offset of each tensor inside the data section, in `tensors` order. */
  offsets: number[];
  /** Byte length of each tensor (unpadded). */
  sizes: number[];
  /** Total file size. */
  fileBytes: number;
  alignment: number;
}

/**
 * The header of a GGUF v3 file holding `kv` (in order; general.alignment is read from it when present)
 * and `tensors`, with each tensor's data offset. Keys must be unique and tensor names unique and at most
 * GGML_MAX_NAME − 1 bytes.
 */
export function layoutGguf(kv: ReadonlyArray<[string, GgufValue]>, tensors: readonly GgufTensorInfo[]): GgufLayout {
  const keys = new Set<string>();
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  for (const [k, v] of kv) {
    if (keys.has(k)) throw new GgufFormatError(`metadata key ${k} appears twice`);
    keys.add(k);
    if (k === "general.alignment") {
      if (v.type !== "u32" || typeof v.value !== "number" || v.value <= 0 || v.value % 8 !== 0) throw new GgufFormatError(`general.alignment must be a u32 multiple of 8`);
      alignment = v.value;
    }
  }
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new GgufFormatError(`tensor ${t.name} appears twice`);
    names.add(t.name);
    if (utf8.encode(t.name).length >= GGML_MAX_NAME) throw new GgufFormatError(`tensor name ${t.name} is longer than ggml's limit of ${GGML_MAX_NAME - 1} bytes`);
    if (t.ne.length < 1 || t.ne.length > 4 || t.ne.some((d) => !Number.isSafeInteger(d) || d < 1)) throw new GgufFormatError(`tensor ${t.name}: invalid dims [${t.ne}]`);
  }
  const sink = new ByteSink();
  sink.u32(GGUF_MAGIC);
  sink.u32(GGUF_VERSION);
  sink.u64(tensors.length);
  sink.u64(kv.length);
  for (const [k, v] of kv) {
    sink.str(k);
    writeValue(sink, k, v);
  }
  const offsets: number[] = [];
  const sizes: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    const size = tensorBytes(t.type, t.ne);
    sink.str(t.name);
    sink.u32(t.ne.length);
    for (const d of t.ne) sink.u64(d);
    sink.u32(GgmlType[t.type]);
    sink.u64(offset);
    offsets.push(offset);
    sizes.push(size);
    offset = alignUp(offset + size, alignment);
  }
  sink.zeros(alignUp(sink.length, alignment) - sink.length);
  const header = sink.result();
  // the last tensor's padding is written too, so every tensor ends on the alignment
  return { header, offsets, sizes, fileBytes: header.length + offset, alignment };
}

// ---------------------------------------------------------------------------------------------
// Element encodings

const asBytes = (a: Float32Array | Uint16Array | Uint8Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** Reusable output memory for encodeRows (grown on demand), so streaming a model allocates no garbage per chunk. */
export class EncodeScratch {
  private buf = new ArrayBuffer(0);
  bytes(n: number): Uint8Array {
    if (this.buf.byteLength < n) this.buf = new ArrayBuffer(Math.max(n, Math.ceil(this.buf.byteLength * 1.5)));
    return new Uint8Array(this.buf, 0, n);
  }
}

/**
 * float32 values (whole rows of ne0) → the bytes of `type`. F32 returns a view of `values`; the other types write
 * into `scratch` when given (the result is then only valid until its next use).
 */
export function encodeRows(type: GgmlTypeName, values: Float32Array, ne0: number, scratch?: EncodeScratch): Uint8Array {
  switch (type) {
    case "F32":
      return asBytes(values);
    case "F16":
    case "BF16": {
      const out = scratch ? new Uint16Array(scratch.bytes(2 * values.length).buffer, 0, values.length) : undefined;
      return asBytes(type === "F16" ? f32ToF16(values, out) : f32ToBf16(values, out));
    }
    case "Q8_0":
      return quantizeQ8_0(values, ne0, scratch);
  }
}

/** ggml's quantize_row_q8_0_ref over whole rows: per 32 values, d = amax/127 (fp16), q = roundf(x·(1/d)), float32 arithmetic. */
export function quantizeQ8_0(values: Float32Array, ne0: number, scratch?: EncodeScratch): Uint8Array {
  if (ne0 % QK8_0 !== 0 || values.length % ne0 !== 0) throw new GgufFormatError(`Q8_0 needs rows of a multiple of ${QK8_0} values (row ${ne0}, ${values.length} values)`);
  const nBlocks = values.length / QK8_0;
  const out = scratch ? scratch.bytes(nBlocks * Q8_0_BLOCK_BYTES) : new Uint8Array(nBlocks * Q8_0_BLOCK_BYTES);
  const q = new Int8Array(out.buffer, out.byteOffset, out.length);
  const d = new Float32Array(nBlocks);
  for (let b = 0; b < nBlocks; b++) {
    const base = b * QK8_0;
    let amax = 0;
    for (let j = 0; j < QK8_0; j++) {
      const a = Math.abs(values[base + j]!);
      if (a > amax) amax = a;
    }
    const db = Math.fround(amax / 127);
    d[b] = db;
    const id = db !== 0 ? Math.fround(1 / db) : 0;
    const o = b * Q8_0_BLOCK_BYTES + 2;
    for (let j = 0; j < QK8_0; j++) {
      // roundf (halves away from zero) of the float32 product
      const x = Math.fround(values[base + j]! * id);
      q[o + j] = x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
    }
  }
  const half = f32ToF16(d);
  for (let b = 0; b < nBlocks; b++) {
    const o = b * Q8_0_BLOCK_BYTES;
    out[o] = half[b]! & 0xff;
    out[o + 1] = half[b]! >>> 8;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading metadata back (e.g. the tokenizer.ggml.pre of a base model's GGUF)

/** Largest header read into memory (a 256k-token vocabulary with scores and types is ~10 MB). */
const MAX_HEADER_BYTES = 256 << 20;

/**
 * The key/values of a GGUF file's header (arrays of numbers as number[], strings as string[]; 64-bit integers
 * as numbers when exact, else bigint). Reads the header only. Throws GgufFormatError on anything malformed.
 */
export function readGgufMetadata(path: string): Map<string, unknown> {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    let buf = new Uint8Array(Math.min(size, 1 << 20));
    let have = readSync(fd, buf, 0, buf.length, 0);
    let pos = 0;
    const fail = (m: string): never => {
      throw new GgufFormatError(`${path}: ${m}`);
    };
    const need = (n: number) => {
      if (pos + n <= have) return;
      if (pos + n > size) fail("truncated header");
      if (pos + n > MAX_HEADER_BYTES) fail(`header larger than ${MAX_HEADER_BYTES} bytes`);
      const next = new Uint8Array(Math.min(size, Math.max(pos + n, buf.length * 2)));
      next.set(buf.subarray(0, have));
      have += readSync(fd, next, have, next.length - have, have);
      buf = next;
    };
    const dv = () => new DataView(buf.buffer, buf.byteOffset, have);
    const u32 = () => {
      need(4);
      const v = dv().getUint32(pos, true);
      pos += 4;
      return v;
    };
    const u64 = () => {
      need(8);
      const v = dv().getBigUint64(pos, true);
      pos += 8;
      return v;
    };
    const dec = new TextDecoder("utf-8", { fatal: false });
    const str = () => {
      const n = Number(u64());
      need(n);
      const s = dec.decode(buf.subarray(pos, pos + n));
      pos += n;
      return s;
    };
    const num64 = (v: bigint) => (v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
    const scalar = (t: number): unknown => {
      const sizes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
      if (t === GgufValueType.STRING) return str();
      const n = sizes[t];
      if (n === undefined) return fail(`unknown value type ${t}`);
      need(n);
      const d = dv();
      const at = pos;
      pos += n;
      switch (t) {
        case 0: return d.getUint8(at);
        case 1: return d.getInt8(at);
        case 2: return d.getUint16(at, true);
        case 3: return d.getInt16(at, true);
        case 4: return d.getUint32(at, true);
        case 5: return d.getInt32(at, true);
        case 6: return d.getFloat32(at, true);
        case 7: return d.getUint8(at) !== 0;
        case 10: return num64(d.getBigUint64(at, true));
        case 11: return num64(d.getBigInt64(at, true));
        default: return d.getFloat64(at, true);
      }
    };
    if (u32() !== GGUF_MAGIC) fail("not a GGUF file (bad magic)");
    const version = u32();
    if (version < 2 || version > 3) fail(`GGUF version ${version} is not supported (2, 3)`);
    u64(); // tensor count
    const nkv = Number(u64());
    const out = new Map<string, unknown>();
    for (let i = 0; i < nkv; i++) {
      const key = str();
      const t = u32();
      if (t === GgufValueType.ARRAY) {
        const et = u32();
        const n = Number(u64());
        const arr: unknown[] = [];
        for (let j = 0; j < n; j++) arr.push(scalar(et));
        out.set(key, arr);
      } else out.set(key, scalar(t));
    }
    return out;
  } finally {
    closeSync(fd);
  }
}
