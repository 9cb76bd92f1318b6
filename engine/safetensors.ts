// safetensors reader/writer. Format: u64 LE header length N, N bytes of JSON header, then the data
// buffer; each tensor's `data_offsets` are relative to the data start. The reader only ever reads the
// header eagerly and fetches tensors with positional reads; the writer reproduces the byte layout of
// the Rust `safetensors` serializer that Hugging Face uses, so re-written files are byte-identical.
// A header is refused unless every tensor has exactly one entry (no repeated JSON key, which JSON.parse
// would silently resolve to the last) and the tensors tile the data buffer exactly.
import {
  closeSync,
  fstatSync,
  fsyncSync,
  openSync,
  readSync,
  renameSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { dirname } from "node:path";
import { randomBytes } from "node:crypto";
import { type DType, dtypeRank, dtypeSize, elementValue, firstNonFiniteBytes, isDType, NonFiniteError, toFloat32 } from "./dtype.ts";

export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute byte position of the tensor's data in the file. */
  byteOffset: number;
  byteLength: number;
  /** Path of the file that holds the tensor. */
  file: string;
}

/** Same limit as the Rust reader: a larger header is treated as corrupt, not read into memory. */
export const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = "__metadata__";
// readSync/writeSync take an int32 length; big tensors go through in chunks.
const IO_CHUNK = 1 << 30;

const utf8 = new TextDecoder("utf-8", { fatal: true });
const utf8enc = new TextEncoder();

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Number of elements of a tensor shape. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function readFully(fd: number, dst: Uint8Array, position: number, path: string, what: string): void {
  let done = 0;
  while (done < dst.byteLength) {
    const len = Math.min(IO_CHUNK, dst.byteLength - done);
    const got = readSync(fd, dst, done, len, position + done);
    if (got <= 0) throw new SafetensorsError(`${path}: unexpected end of file while reading ${what}`);
    done += got;
  }
}

function writeFully(fd: number, src: Uint8Array): void {
  let done = 0;
  while (done < src.byteLength) {
    const len = Math.min(IO_CHUNK, src.byteLength - done);
    done += writeSync(fd, src, done, len);
  }
}

// ---------------------------------------------------------------------------------------------
// Repeated JSON keys

/** A key that appears twice in one JSON object. */
export interface DuplicateJsonKey {
  /** Keys of the enclosing objects, outermost first ([] for a top-level key); array elements are "[i]". */
  path: string[];
  key: string;
  /** The two values, when both are strings (e.g. the two shards of an index entry); else null. */
  values: [string, string] | null;
}

interface ScanFrame {
  /** Keys seen so far → their value when it is a string (else null); null for an array. */
  keys: Map<string, string | null> | null;
  /** Object: the key whose value comes next, or null while a key is expected. Array: unused. */
  key: string | null;
  /** How this container is reached from its parent (its key, or "[i]"). */
  label: string;
  /** Array: elements started so far. */
  count: number;
}

/**
 * The first repeated key in any object of `text`, or null. `text` must already be valid JSON (this is
 * run after JSON.parse, which accepts repeats and keeps the last value). One pass, linear in the text.
 */
export function findDuplicateKey(text: string): DuplicateJsonKey | null {
  const stack: ScanFrame[] = [];
  let pending: { path: string[]; key: string; first: string | null } | null = null;
  // Called when a value starts in the current container; returns the duplicate once its second value is known.
  const valueStarts = (str: string | null): DuplicateJsonKey | null => {
    const top = stack[stack.length - 1];
    if (!top) return null;
    if (top.keys === null) {
      top.count++;
      return null;
    }
    const key = top.key as string;
    if (pending) return { path: pending.path, key, values: pending.first !== null && str !== null ? [pending.first, str] : null };
    top.keys.set(key, str);
    return null;
  };
  const childLabel = (): string => {
    const top = stack[stack.length - 1];
    if (!top) return "";
    return top.keys === null ? `[${top.count - 1}]` : (top.key as string);
  };
  const n = text.length;
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // string: jump to the closing quote (one not preceded by an odd run of backslashes)
      let j = text.indexOf('"', i + 1);
      for (;;) {
        if (j < 0) return null; // unterminated string: not valid JSON, which the caller has ruled out
        let b = 0;
        while (text.charCodeAt(j - 1 - b) === 0x5c) b++;
        if (b % 2 === 0) break;
        j = text.indexOf('"', j + 1);
      }
      const raw = text.slice(i + 1, j);
      const s = raw.includes("\\") ? (JSON.parse(text.slice(i, j + 1)) as string) : raw;
      i = j + 1;
      const top = stack[stack.length - 1];
      if (top && top.keys !== null && top.key === null) {
        if (top.keys.has(s)) pending = { path: stack.slice(1).map((f) => f.label), key: s, first: top.keys.get(s) as string | null };
        top.key = s;
      } else {
        const dup = valueStarts(s);
        if (dup) return dup;
      }
      continue;
    }
    if (c === 0x7b || c === 0x5b) {
      // { or [
      const dup = valueStarts(null);
      if (dup) return dup;
      stack.push({ keys: c === 0x7b ? new Map() : null, key: null, label: childLabel(), count: 0 });
      i++;
      continue;
    }
    if (c === 0x7d || c === 0x5d) {
      stack.pop();
      i++;
      continue;
    }
    if (c === 0x2c) {
      // , : the next string in an object is a key again
      const top = stack[stack.length - 1];
      if (top && top.keys !== null) top.key = null;
      i++;
      continue;
    }
    if (c === 0x3a || c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) {
      i++;
      continue;
    }
    // number, true, false, null
    const dup = valueStarts(null);
    if (dup) return dup;
    while (i < n) {
      const d = text.charCodeAt(i);
      if (d === 0x2c || d === 0x7d || d === 0x5d || d === 0x20 || d === 0x0a || d === 0x0d || d === 0x09) break;
      i++;
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Reader

export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  /** Total file size in bytes. */
  readonly size: number;
  /** The 8 length bytes plus the JSON header exactly as stored (used for cheap fingerprints). */
  readonly headerBytes: Uint8Array;
  /** Absolute file position where the data buffer starts (8 + header length). */
  readonly dataStart: number;
  private fd: number | null;
  private readonly tensors: Map<string, TensorInfo>;
  private readonly ordered: string[];

  private constructor(path: string, fd: number, size: number, headerBytes: Uint8Array, metadata: Record<string, string>, tensors: Map<string, TensorInfo>, ordered: string[]) {
    this.path = path;
    this.fd = fd;
    this.size = size;
    this.headerBytes = headerBytes;
    this.dataStart = headerBytes.byteLength;
    this.metadata = metadata;
    this.tensors = tensors;
    this.ordered = ordered;
  }

  /** Opens `path` and parses and validates its header; tensor data is not read. */
  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = openSync(path, "r");
    } catch (e) {
      throw new SafetensorsError(`cannot open safetensors file ${path}: ${(e as Error).message}`);
    }
    try {
      const size = fstatSync(fd).size;
      const parsed = parseHeader(fd, size, path);
      return new SafetensorsFile(path, fd, size, parsed.headerBytes, parsed.metadata, parsed.tensors, parsed.ordered);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** Tensor names in the order their data appears in the file. */
  names(): string[] {
    return this.ordered.slice();
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(`${this.path}: no tensor named "${name}"`);
    return { ...t, shape: t.shape.slice() };
  }

  /** Reads the tensor's raw little-endian bytes into a fresh (8-byte aligned) buffer. */
  readBytes(name: string): Uint8Array {
    const t = this.lookup(name);
    const out = new Uint8Array(t.byteLength);
    this.readAt(t, out);
    return out;
  }

  /** Reads the tensor's raw bytes into `dst` (exactly byteLength bytes), e.g. to reuse a buffer. */
  readInto(name: string, dst: Uint8Array): Uint8Array {
    const t = this.lookup(name);
    if (dst.byteLength !== t.byteLength) {
      throw new SafetensorsError(`${this.path}: tensor "${name}" has ${t.byteLength} bytes but the destination holds ${dst.byteLength}`);
    }
    this.readAt(t, dst);
    return dst;
  }

  /** Reads the tensor as float32 (F16/BF16/F64/integers are converted; F32 is not copied twice). */
  readF32(name: string): Float32Array {
    const t = this.lookup(name);
    try {
      return toFloat32(t.dtype, this.readBytes(name));
    } catch (e) {
      throw new SafetensorsError(`${this.path}: tensor "${name}": ${(e as Error).message}`);
    }
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
  }

  private lookup(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new SafetensorsError(`${this.path}: no tensor named "${name}"`);
    return t;
  }

  private readAt(t: TensorInfo, dst: Uint8Array): void {
    if (this.fd === null) throw new SafetensorsError(`${this.path}: file is closed`);
    readFully(this.fd, dst, t.byteOffset, this.path, `tensor "${t.name}"`);
  }
}

interface ParsedHeader {
  headerBytes: Uint8Array;
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
  ordered: string[];
}

function parseHeader(fd: number, size: number, path: string): ParsedHeader {
  const fail = (msg: string): never => {
    throw new SafetensorsError(`${path}: ${msg}`);
  };
  if (size < 8) fail(`file is ${size} bytes, shorter than the 8-byte header length prefix (truncated or not a safetensors file)`);
  const prefix = new Uint8Array(8);
  readFully(fd, prefix, 0, path, "header length");
  const n64 = new DataView(prefix.buffer).getBigUint64(0, true);
  if (n64 === 0n) fail("header length is 0");
  if (n64 > BigInt(MAX_HEADER_BYTES)) fail(`header length ${n64} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt or not a safetensors file)`);
  const n = Number(n64);
  if (8 + n > size) fail(`header length ${n} extends beyond the end of the file (${size} bytes; truncated?)`);

  const headerBytes = new Uint8Array(8 + n);
  headerBytes.set(prefix, 0);
  readFully(fd, headerBytes.subarray(8), 8, path, "header");

  let text: string;
  try {
    text = utf8.decode(headerBytes.subarray(8));
  } catch {
    return fail("header is not valid UTF-8");
  }
  if (!text.startsWith("{")) fail("header is not a JSON object (must start with '{')");
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (!isPlainObject(json)) return fail("header is not a JSON object");
  // JSON.parse keeps the last of two entries with one name: the file would mean two different things.
  const dup = findDuplicateKey(text);
  if (dup) {
    if (dup.path.length === 0) fail(dup.key === METADATA_KEY ? `"${METADATA_KEY}" appears twice in the header` : `tensor "${dup.key}" is listed twice in the header (a tensor must have exactly one entry)`);
    const owner = dup.path[0] === METADATA_KEY ? `"${METADATA_KEY}"` : `tensor "${dup.path[0]}"`;
    fail(`key "${dup.key}" appears twice in the header entry of ${owner}`);
  }

  const dataStart = 8 + n;
  const dataSize = size - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const ranges: Array<{ name: string; begin: number; end: number }> = [];

  for (const key of Object.keys(json)) {
    const entry = json[key];
    if (key === METADATA_KEY) {
      if (entry === null) continue;
      if (!isPlainObject(entry)) fail(`"${METADATA_KEY}" must be an object of strings`);
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== "string") fail(`"${METADATA_KEY}" value for "${k}" must be a string, got ${JSON.stringify(v)}`);
        metadata[k] = v as string;
      }
      continue;
    }
    const where = `tensor "${key}"`;
    if (!isPlainObject(entry)) fail(`${where}: entry must be an object`);
    const e = entry as Record<string, unknown>;
    for (const field of ["dtype", "shape", "data_offsets"]) {
      if (!(field in e)) fail(`${where}: missing "${field}"`);
    }
    if (typeof e.dtype !== "string") fail(`${where}: "dtype" must be a string`);
    if (!isDType(e.dtype)) fail(`${where}: unknown dtype ${JSON.stringify(e.dtype)}`);
    const dtype = e.dtype as DType;
    if (!Array.isArray(e.shape)) fail(`${where}: "shape" must be an array`);
    const shape = e.shape as unknown[];
    for (const d of shape) {
      if (typeof d !== "number" || !Number.isSafeInteger(d) || d < 0) fail(`${where}: shape ${JSON.stringify(shape)} has an invalid dimension ${JSON.stringify(d)} (must be a non-negative integer)`);
    }
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2) fail(`${where}: "data_offsets" must be [begin, end]`);
    const [begin, end] = offs as unknown[];
    if (typeof begin !== "number" || typeof end !== "number" || !Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || begin < 0 || end < 0) {
      fail(`${where}: data_offsets ${JSON.stringify(offs)} must be non-negative integers`);
    }
    const b = begin as number;
    const en = end as number;
    if (b > en) fail(`${where}: data_offsets begin ${b} is after end ${en}`);
    if (en > dataSize) fail(`${where}: data_offsets end ${en} is beyond the data buffer (${dataSize} bytes; file truncated?)`);
    const expected = dtypeSize(dtype) * numel(shape as number[]);
    if (expected !== en - b) {
      fail(`${where}: ${dtype} shape ${JSON.stringify(shape)} needs ${expected} bytes but data_offsets [${b}, ${en}] span ${en - b}`);
    }
    tensors.set(key, { name: key, dtype, shape: (shape as number[]).slice(), byteOffset: dataStart + b, byteLength: en - b, file: path });
    ranges.push({ name: key, begin: b, end: en });
  }

  // Like HF's reader: tensors must tile the data buffer exactly, with no overlap, gap or trailing bytes.
  ranges.sort((x, y) => x.begin - y.begin || x.end - y.end);
  let pos = 0;
  let prev = "";
  for (const r of ranges) {
    if (r.begin < pos) fail(`tensor "${r.name}" (data_offsets [${r.begin}, ${r.end}]) overlaps tensor "${prev}" which ends at ${pos}`);
    if (r.begin > pos) fail(`gap in data buffer: bytes [${pos}, ${r.begin}) before tensor "${r.name}" belong to no tensor`);
    pos = r.end;
    prev = r.name;
  }
  if (pos !== dataSize) fail(`data buffer has ${dataSize} bytes but tensors cover only [0, ${pos}) (trailing bytes or truncated header offsets)`);

  return { headerBytes, metadata, tensors, ordered: ranges.map((r) => r.name) };
}

// ---------------------------------------------------------------------------------------------
// Writer

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface TensorData extends TensorSpec {
  data: Uint8Array;
}

/** UTF-8 byte comparison, as Rust's `String::cmp` (JS `<` compares UTF-16 units, which differs for astral chars). */
function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

interface Plan {
  header: Uint8Array;
  order: TensorSpec[];
  lengths: Map<string, number>;
}

function planLayout(path: string, specs: readonly TensorSpec[], metadata: Record<string, string> | undefined): Plan {
  const fail = (msg: string): never => {
    throw new SafetensorsError(`${path}: ${msg}`);
  };
  const seen = new Set<string>();
  for (const s of specs) {
    if (typeof s.name !== "string") fail("tensor name must be a string");
    if (s.name === METADATA_KEY) fail(`"${METADATA_KEY}" cannot be used as a tensor name`);
    if (seen.has(s.name)) fail(`duplicate tensor name "${s.name}"`);
    seen.add(s.name);
    if (!isDType(s.dtype)) fail(`tensor "${s.name}": unknown dtype ${JSON.stringify(s.dtype)}`);
    if (!Array.isArray(s.shape) || s.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      fail(`tensor "${s.name}": invalid shape ${JSON.stringify(s.shape)} (dimensions must be non-negative integers)`);
    }
  }
  if (metadata) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") fail(`metadata value for "${k}" must be a string`);
    }
  }
  // Rust serializer order: dtype descending (enum order), then name ascending; data follows the same order.
  const order = specs.slice().sort((a, b) => dtypeRank(b.dtype) - dtypeRank(a.dtype) || compareBytes(a.name, b.name));
  const parts: string[] = [];
  if (metadata && Object.keys(metadata).length > 0) {
    const kv = Object.entries(metadata).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
    parts.push(`${JSON.stringify(METADATA_KEY)}:{${kv.join(",")}}`);
  }
  const lengths = new Map<string, number>();
  let offset = 0;
  for (const s of order) {
    const len = dtypeSize(s.dtype) * numel(s.shape);
    lengths.set(s.name, len);
    parts.push(`${JSON.stringify(s.name)}:{"dtype":"${s.dtype}","shape":[${s.shape.join(",")}],"data_offsets":[${offset},${offset + len}]}`);
    offset += len;
  }
  const json = utf8enc.encode(`{${parts.join(",")}}`);
  // pad with spaces so the data buffer starts 8-byte aligned (8 + N ≡ 0 mod 8)
  const n = json.byteLength + ((8 - (json.byteLength % 8)) % 8);
  const header = new Uint8Array(8 + n);
  new DataView(header.buffer).setBigUint64(0, BigInt(n), true);
  header.set(json, 8);
  header.fill(0x20, 8 + json.byteLength);
  return { header, order: order.map((s) => ({ name: s.name, dtype: s.dtype, shape: s.shape.slice() })), lengths };
}

/**
 * Streams a safetensors file tensor by tensor. The header (and hence the data order) is fixed up
 * front from the plan; call `write` in `order()`, then `finish()`. Data goes to a temp file beside
 * `path` that is fsynced and renamed on finish, so an interrupted writer never leaves a complete-looking file.
 */
export class SafetensorsStreamWriter {
  readonly path: string;
  readonly tempPath: string;
  private fd: number | null;
  private readonly plan: Plan;
  private next = 0;
  private done = false;

  constructor(path: string, tensors: readonly TensorSpec[], metadata?: Record<string, string>) {
    this.path = path;
    this.plan = planLayout(path, tensors, metadata);
    this.tempPath = `${path}.tmp-${process.pid}-${randomBytes(6).toString("hex")}`;
    try {
      this.fd = openSync(this.tempPath, "wx");
    } catch (e) {
      throw new SafetensorsError(`cannot create ${this.tempPath}: ${(e as Error).message}`);
    }
    try {
      writeFully(this.fd, this.plan.header);
    } catch (e) {
      this.abort();
      throw new SafetensorsError(`${this.tempPath}: writing header failed: ${(e as Error).message}`);
    }
  }

  /** Tensor names in the order their data must be written. */
  order(): string[] {
    return this.plan.order.map((s) => s.name);
  }

  /** Appends the data of the next tensor in `order()`. */
  write(name: string, data: Uint8Array): void {
    if (this.fd === null) throw new SafetensorsError(`${this.path}: writer is already ${this.done ? "finished" : "aborted"}`);
    const expected = this.plan.order[this.next];
    if (!expected) throw new SafetensorsError(`${this.path}: tensor "${name}" written but all ${this.plan.order.length} planned tensors are already written`);
    if (expected.name !== name) {
      const known = this.plan.lengths.has(name);
      throw new SafetensorsError(`${this.path}: tensor "${name}" written out of order${known ? "" : " (not in the plan)"}; expected "${expected.name}" next`);
    }
    const len = this.plan.lengths.get(name) as number;
    if (data.byteLength !== len) {
      throw new SafetensorsError(`${this.path}: tensor "${name}" (${expected.dtype} ${JSON.stringify(expected.shape)}) needs ${len} bytes, got ${data.byteLength}`);
    }
    writeFully(this.fd, data);
    this.next++;
  }

  /**
   * Appends the next tensor by copying its bytes straight from another safetensors file in fixed-size
   * chunks, so copying a large unedited tensor costs one small buffer instead of the whole tensor.
   * `requireFinite` refuses (NonFiniteError) a floating tensor holding NaN or Inf, checked chunk by chunk.
   */
  copyFrom(name: string, src: SafetensorsFile, opts: { chunkBytes?: number; requireFinite?: boolean } = {}): void {
    const info = src.info(name);
    const expected = this.plan.order[this.next];
    if (!expected || expected.name !== name) {
      throw new SafetensorsError(`${this.path}: tensor "${name}" copied out of order; expected "${expected?.name ?? "(none)"}" next`);
    }
    if (this.fd === null) throw new SafetensorsError(`${this.path}: writer is already ${this.done ? "finished" : "aborted"}`);
    if (info.byteLength !== this.plan.lengths.get(name)) throw new SafetensorsError(`${this.path}: tensor "${name}" has ${info.byteLength} bytes in ${src.path}, the plan says ${this.plan.lengths.get(name)}`);
    // whole elements per chunk, so each chunk can be checked on its own
    const elem = dtypeSize(info.dtype);
    const chunk = Math.max(elem, Math.floor((opts.chunkBytes ?? 8 << 20) / elem) * elem);
    const buf = new Uint8Array(Math.min(chunk, Math.max(info.byteLength, 1)));
    const fd = openSync(src.path, "r");
    try {
      for (let done = 0; done < info.byteLength; ) {
        const n = Math.min(buf.byteLength, info.byteLength - done);
        let got = 0;
        while (got < n) {
          const r = readSync(fd, buf, got, n - got, info.byteOffset + done + got);
          if (r === 0) throw new SafetensorsError(`${src.path}: unexpected end of file while copying "${name}"`);
          got += r;
        }
        if (opts.requireFinite) {
          const bad = firstNonFiniteBytes(info.dtype, buf.subarray(0, n));
          if (bad >= 0) {
            const index = done / elem + bad;
            const value = elementValue(info.dtype, buf.subarray(0, n), bad);
            throw new NonFiniteError(`${src.path}: tensor "${name}" holds ${value} at element ${index}; refusing to write a checkpoint with non-finite weights`, index, value);
          }
        }
        writeFully(this.fd, buf.subarray(0, n));
        done += n;
      }
    } finally {
      closeSync(fd);
    }
    this.next++;
  }

  /** Checks every planned tensor was written, then fsyncs and atomically renames into place. */
  finish(): void {
    if (this.fd === null) throw new SafetensorsError(`${this.path}: writer is already ${this.done ? "finished" : "aborted"}`);
    if (this.next !== this.plan.order.length) {
      const missing = this.plan.order.slice(this.next).map((s) => s.name);
      this.abort();
      throw new SafetensorsError(`${this.path}: ${missing.length} planned tensor(s) never written (first: "${missing[0]}"); file not created`);
    }
    try {
      fsyncSync(this.fd);
      closeSync(this.fd);
      this.fd = null;
      renameSync(this.tempPath, this.path);
    } catch (e) {
      this.abort();
      throw new SafetensorsError(`${this.path}: finishing write failed: ${(e as Error).message}`);
    }
    this.done = true;
    syncDir(dirname(this.path));
  }

  /** Discards the partial file. Safe to call more than once, or after a failed write. */
  abort(): void {
    if (this.fd !== null) {
      try {
        closeSync(this.fd);
      } catch {
        // already unusable; removing the temp file is what matters
      }
      this.fd = null;
    }
    if (!this.done) {
      try {
        unlinkSync(this.tempPath);
      } catch {
        // never created or already removed
      }
    }
  }
}

/** Best effort: persist the rename itself (not supported on every platform/filesystem). */
function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // directory fsync is an extra durability step, not required for correctness
  }
}

/** Writes a whole safetensors file in Hugging Face's exact layout (temp file + fsync + rename). */
export function writeSafetensors(path: string, tensors: readonly TensorData[], metadata?: Record<string, string>): void {
  const byName = new Map<string, Uint8Array>();
  for (const t of tensors) byName.set(t.name, t.data);
  const w = new SafetensorsStreamWriter(path, tensors, metadata);
  try {
    for (const name of w.order()) w.write(name, byName.get(name) as Uint8Array);
    w.finish();
  } catch (e) {
    w.abort();
    throw e;
  }
}
