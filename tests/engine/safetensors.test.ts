import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  bf16ToF32,
  dtypeSize,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  fromFloat32,
  toFloat32,
} from "../../engine/dtype.ts";
import {
  SafetensorsError,
  SafetensorsFile,
  SafetensorsStreamWriter,
  writeSafetensors,
  type TensorData,
} from "../../engine/safetensors.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const MODELS = ["llama", "llama3_rope", "qwen2", "mistral", "gemma2"];
const tmp = mkdtempSync(join(tmpdir(), "realign-st-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let counter = 0;
const tmpFile = (): string => join(tmp, `t${counter++}.safetensors`);

const bytesOf = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
const f32Bits = (x: number): number => new Uint32Array(new Float32Array([x]).buffer)[0];
const bitsF32 = (u: number): number => new Float32Array(new Uint32Array([u]).buffer)[0];

// Independent reference for binary16: the engine's own Float16Array (IEEE RNE conversion).
function refF16Bits(values: Float32Array): Uint16Array {
  const h = new Float16Array(values.length);
  for (let i = 0; i < values.length; i++) h[i] = values[i];
  return new Uint16Array(h.buffer);
}

/** Deterministic pseudo-random u32s (xorshift32). */
function randomU32(n: number, seed = 0x9e3779b9): Uint32Array {
  const out = new Uint32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x;
  }
  return out;
}

describe("dtype conversions", () => {
  test("dtypeSize", () => {
    expect([dtypeSize("F64"), dtypeSize("F32"), dtypeSize("BF16"), dtypeSize("F16"), dtypeSize("I64"), dtypeSize("BOOL")]).toEqual([8, 4, 2, 2, 8, 1]);
    expect(() => dtypeSize("F12" as never)).toThrow(/unknown dtype "F12"/);
  });

  test("f16ToF32 matches Float16Array for all 65536 bit patterns", () => {
    const all = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i;
    const got = f16ToF32(all);
    const ref = new Float16Array(all.buffer);
    for (let i = 0; i < 65536; i++) {
      const r = ref[i];
      if (Number.isNaN(r)) {
        if (!Number.isNaN(got[i])) throw new Error(`f16 0x${i.toString(16)}: expected NaN, got ${got[i]}`);
      } else if (!Object.is(got[i], r)) {
        throw new Error(`f16 0x${i.toString(16)}: expected ${r}, got ${got[i]}`);
      }
    }
    // NaN payload and sign survive widening (checked on the bits: JS may canonicalise NaN values)
    const nan = f16ToF32(new Uint16Array([0xfe01, 0x7c01]));
    expect([...new Uint32Array(nan.buffer)]).toEqual([0xffc02000, 0x7f802000]);
    // f16 -> f32 -> f16 is the identity on all bit patterns, NaNs included
    expect(f32ToF16(got)).toEqual(all);
  });

  test("bf16ToF32 places the bits in the top half of an f32 (all 65536 patterns)", () => {
    const all = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i;
    const dst = new Float32Array(65536);
    expect(bf16ToF32(all, dst)).toBe(dst);
    const dv = new DataView(dst.buffer);
    for (let i = 0; i < 65536; i++) if (dv.getUint32(i * 4, true) !== i * 65536) throw new Error(`bf16 0x${i.toString(16)}`);
  });

  test("f32ToF16 matches IEEE round-to-nearest-even (Float16Array) on edges, ties and random bits", () => {
    const vals: number[] = [0, -0, 1, -1, 65504, 65519.99, 65520, -65520, 1e10, Infinity, -Infinity, 2 ** -14, 2 ** -24, 2 ** -25, 2 ** -25 * 1.0001, 2 ** -26, 3 * 2 ** -25, 1e-10, -1e-10];
    // every f16 value, plus the exact midpoints and their f32 neighbours between consecutive f16 values
    const h = new Uint16Array(0x7c00);
    for (let i = 0; i < h.length; i++) h[i] = i;
    const ups = f16ToF32(h);
    const cand: number[] = [...vals];
    for (let i = 0; i + 1 < ups.length; i++) {
      const mid = f32Bits((ups[i] + ups[i + 1]) / 2);
      cand.push(ups[i], bitsF32(mid), bitsF32(mid - 1), bitsF32(mid + 1), -bitsF32(mid));
    }
    const rnd = randomU32(400_000);
    const all = new Float32Array(cand.length + rnd.length);
    all.set(cand);
    all.set(new Float32Array(rnd.buffer), cand.length);
    const got = f32ToF16(all);
    const ref = refF16Bits(all);
    const allBits = new Uint32Array(all.buffer); // NaN bits must not pass through JS numbers
    let checked = 0;
    for (let i = 0; i < all.length; i++) {
      if (Number.isNaN(all[i])) {
        if ((got[i] & 0x7c00) !== 0x7c00 || (got[i] & 0x3ff) === 0) throw new Error(`NaN 0x${allBits[i].toString(16)} -> 0x${got[i].toString(16)} is not NaN`);
        if (got[i] >> 15 !== allBits[i] >>> 31) throw new Error(`NaN 0x${allBits[i].toString(16)}: sign lost`);
        continue;
      }
      if (got[i] !== ref[i]) throw new Error(`f32 ${all[i]} (0x${allBits[i].toString(16)}): got 0x${got[i].toString(16)}, want 0x${ref[i].toString(16)}`);
      checked++;
    }
    expect(checked).toBeGreaterThan(300_000);
    // spot values independent of Float16Array
    expect([...f32ToF16(new Float32Array([1, 65520, 2 ** -24, 2 ** -25, 3 * 2 ** -25, -0]))]).toEqual([0x3c00, 0x7c00, 0x0001, 0x0000, 0x0002, 0x8000]);
  });

  test("f32ToBf16 rounds to nearest even like torch, keeps Inf and NaN", () => {
    const u = new Uint32Array([0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff, 0x7f7fffff, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffffffff, 0x80000000, 0x00000001]);
    const got = f32ToBf16(new Float32Array(u.buffer));
    expect([...got.slice(0, 7)]).toEqual([0x3f80, 0x3f82, 0x3f81, 0x3f80, 0x7f80, 0x7f80, 0xff80]);
    for (const i of [7, 8, 9]) expect(Number.isNaN(bf16ToF32(got.subarray(i, i + 1))[0])).toBe(true);
    expect(got[9]).toBe(0xffff); // NaN sign and payload kept
    expect(got[8]).toBe(0x7fc0); // payload only in low bits: quiet bit set so it stays NaN
    // bf16 -> f32 -> bf16 is the identity on all bit patterns, NaNs included
    const all = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i;
    expect(f32ToBf16(bf16ToF32(all))).toEqual(all);
    expect([got[10], got[11]]).toEqual([0x8000, 0x0000]);
  });

  test.skipIf(!hasShared())("f32ToBf16 reproduces torch's bf16 rounding of every fixture weight", () => {
    for (const m of MODELS) {
      const f32 = SafetensorsFile.open(sharedPath("fixtures/hf-golden", m, "model.safetensors"));
      const bf = SafetensorsFile.open(sharedPath("fixtures/hf-golden", m, "model-bf16.safetensors"));
      expect(bf.names()).toEqual(f32.names());
      for (const n of f32.names()) {
        const want = bf.readBytes(n);
        const got = bytesOf(f32ToBf16(f32.readF32(n)));
        if (Buffer.compare(Buffer.from(got), Buffer.from(want)) !== 0) throw new Error(`${m} ${n}: bf16 rounding differs from torch`);
        // and bf16 -> f32 via readF32 widens exactly
        expect(bytesOf(f32ToBf16(bf.readF32(n)))).toEqual(want);
      }
      f32.close();
      bf.close();
    }
  });

  test("toFloat32: aligned F32 is zero-copy, unaligned is copied; other dtypes convert", () => {
    const src = new Float32Array([1.5, -2, 3.25]);
    const aligned = toFloat32("F32", bytesOf(src));
    expect(aligned.buffer).toBe(src.buffer);
    expect([...aligned]).toEqual([1.5, -2, 3.25]);
    const shifted = new Uint8Array(13);
    shifted.set(bytesOf(src), 1);
    const un = toFloat32("F32", shifted.subarray(1));
    expect(un.buffer).not.toBe(shifted.buffer);
    expect([...un]).toEqual([1.5, -2, 3.25]);
    expect([...toFloat32("BF16", new Uint8Array([0x80, 0x3f, 0x00, 0xc0]))]).toEqual([1, -2]);
    expect([...toFloat32("F16", new Uint8Array([0x00, 0x3c, 0x00, 0xc0]))]).toEqual([1, -2]);
    expect([...toFloat32("F64", bytesOf(new Float64Array([0.5, -4])))]).toEqual([0.5, -4]);
    expect([...toFloat32("I64", bytesOf(new BigInt64Array([-3n, 7n])))]).toEqual([-3, 7]);
    expect([...toFloat32("I8", new Uint8Array([0xff, 2]))]).toEqual([-1, 2]);
    expect(() => toFloat32("F32", new Uint8Array(6))).toThrow(/6 bytes is not a whole number of F32/);
    expect(() => toFloat32("F8_E4M3", new Uint8Array(2))).toThrow(/not supported/);
  });

  test("fromFloat32 inverts toFloat32 for F32/F16/BF16/F64", () => {
    const v = new Float32Array([0, -0, 1, -2.5, 0.125, 1024, -Infinity, Infinity]);
    for (const d of ["F32", "F16", "BF16", "F64"] as const) {
      const b = fromFloat32(d, v);
      expect(b.byteLength).toBe(v.length * dtypeSize(d));
      expect([...toFloat32(d, b)].map((x) => Object.is(x, -0) ? "-0" : x)).toEqual([...v].map((x) => Object.is(x, -0) ? "-0" : x));
    }
    expect(fromFloat32("F32", v).buffer).toBe(v.buffer);
    expect(() => fromFloat32("I32", v)).toThrow(/not supported/);
  });
});

describe("safetensors writer layout", () => {
  test("header matches the Rust serializer: metadata first, dtype-descending then name order, space padding", () => {
    const p = tmpFile();
    const t = (name: string, dtype: TensorData["dtype"], shape: number[], bytes: number[]): TensorData => ({ name, dtype, shape, data: new Uint8Array(bytes) });
    writeSafetensors(
      p,
      [
        t("z", "U8", [2], [1, 2]),
        t("b", "F16", [1], [3, 4]),
        t("a", "BF16", [1], [5, 6]),
        t("c2", "F32", [1], [7, 8, 9, 10]),
        t("c1", "F32", [], [11, 12, 13, 14]),
        t("d", "I64", [1, 1], [15, 16, 17, 18, 19, 20, 21, 22]),
        t("e", "F32", [0, 3], []),
      ],
      { format: "pt" },
    );
    const json =
      '{"__metadata__":{"format":"pt"},"d":{"dtype":"I64","shape":[1,1],"data_offsets":[0,8]},' +
      '"c1":{"dtype":"F32","shape":[],"data_offsets":[8,12]},"c2":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},' +
      '"e":{"dtype":"F32","shape":[0,3],"data_offsets":[16,16]},"a":{"dtype":"BF16","shape":[1],"data_offsets":[16,18]},' +
      '"b":{"dtype":"F16","shape":[1],"data_offsets":[18,20]},"z":{"dtype":"U8","shape":[2],"data_offsets":[20,22]}}';
    const n = Math.ceil(json.length / 8) * 8;
    const header = new Uint8Array(8);
    new DataView(header.buffer).setBigUint64(0, BigInt(n), true);
    const expected = Buffer.concat([
      header,
      Buffer.from(json.padEnd(n, " ")),
      Buffer.from([15, 16, 17, 18, 19, 20, 21, 22, 11, 12, 13, 14, 7, 8, 9, 10, 5, 6, 3, 4, 1, 2]),
    ]);
    expect(readFileSync(p)).toEqual(expected);
    const f = SafetensorsFile.open(p);
    expect(f.names()).toEqual(["d", "c1", "c2", "e", "a", "b", "z"]);
    expect(f.metadata).toEqual({ format: "pt" });
    expect(f.info("c2")).toEqual({ name: "c2", dtype: "F32", shape: [1], byteOffset: 8 + n + 12, byteLength: 4, file: p });
    f.close();
  });

  test("no metadata: key omitted; empty file is '{}' padded", () => {
    const p = tmpFile();
    writeSafetensors(p, []);
    expect(readFileSync(p).toString("latin1")).toBe("\x08\0\0\0\0\0\0\0{}      ");
    const f = SafetensorsFile.open(p);
    expect(f.names()).toEqual([]);
    expect(f.metadata).toEqual({});
    f.close();
  });

  test("write -> read is byte-identical for F32/F16/BF16 with special values", () => {
    const rnd = randomU32(3000, 12345);
    const f32 = new Float32Array(rnd.buffer.slice(0));
    f32.set([NaN, -NaN, Infinity, -Infinity, -0, 0, 3.4e38, 1e-45, 1e-40], 0);
    const f16 = new Uint16Array(randomU32(1000, 777).buffer);
    f16.set([0x7c00, 0xfc00, 0x7e01, 0x8000, 0x0001, 0x7bff], 0);
    const bf16 = new Uint16Array(randomU32(1000, 999).buffer);
    bf16.set([0x7f80, 0xff80, 0x7fc1, 0x8000, 0x0001], 0);
    const tensors: TensorData[] = [
      { name: "w.f32", dtype: "F32", shape: [3000], data: bytesOf(f32) },
      { name: "w.f16", dtype: "F16", shape: [50, 40], data: bytesOf(f16) },
      { name: "w.bf16", dtype: "BF16", shape: [2, 1000], data: bytesOf(bf16) },
    ];
    const p = tmpFile();
    writeSafetensors(p, tensors, { a: "1", "ünï": 'quote" back\\slash\nnewline' });
    const f = SafetensorsFile.open(p);
    expect(f.metadata).toEqual({ a: "1", "ünï": 'quote" back\\slash\nnewline' });
    for (const t of tensors) {
      expect(f.readBytes(t.name)).toEqual(t.data);
      expect(f.info(t.name).shape).toEqual(t.shape);
    }
    expect(bytesOf(f32ToBf16(f.readF32("w.bf16")))).toEqual(bytesOf(bf16));
    expect([...f.readF32("w.f16").subarray(0, 2)]).toEqual([Infinity, -Infinity]);
    const dst = new Uint8Array(4000);
    expect(f.readInto("w.f16", dst)).toEqual(bytesOf(f16));
    expect(() => f.readInto("w.f16", new Uint8Array(3))).toThrow(/"w.f16" has 4000 bytes/);
    expect(() => f.info("nope")).toThrow(/no tensor named "nope"/);
    // a rewrite of what was read is byte-identical to the first file
    const p2 = tmpFile();
    writeSafetensors(p2, f.names().map((n) => ({ ...f.info(n), data: f.readBytes(n) })), f.metadata);
    expect(readFileSync(p2)).toEqual(readFileSync(p));
    f.close();
    expect(() => f.readBytes("w.f32")).toThrow(/closed/);
  });

  test.skipIf(!hasShared())("re-writing every hf-golden weight file gives byte-identical output", () => {
    const files = MODELS.flatMap((m) => [join(m, "model.safetensors"), join(m, "model-bf16.safetensors")]);
    files.push(join("llama", "edit", "model-edited.safetensors"));
    for (const rel of files) {
      const src = sharedPath("fixtures/hf-golden", rel);
      const f = SafetensorsFile.open(src);
      const tensors = f.names().map((n) => ({ ...f.info(n), data: f.readBytes(n) }));
      // shuffle the input order: the writer must impose HF's order itself
      tensors.reverse();
      const out = tmpFile();
      writeSafetensors(out, tensors, f.metadata);
      if (Buffer.compare(readFileSync(out), readFileSync(src)) !== 0) throw new Error(`${rel}: rewrite is not byte-identical`);
      // and the same through the streaming writer
      const out2 = tmpFile();
      const w = new SafetensorsStreamWriter(out2, tensors, f.metadata);
      expect(w.order()).toEqual(f.names());
      for (const n of w.order()) w.write(n, f.readBytes(n));
      w.finish();
      if (Buffer.compare(readFileSync(out2), readFileSync(src)) !== 0) throw new Error(`${rel}: streamed rewrite is not byte-identical`);
      f.close();
    }
  });

  test.skipIf(!hasShared())("reader agrees with an independent parse of the fixture header", () => {
    const src = sharedPath("fixtures/hf-golden/llama/model.safetensors");
    const raw = readFileSync(src);
    const n = Number(raw.readBigUInt64LE(0));
    const hdr = JSON.parse(raw.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    const f = SafetensorsFile.open(src);
    expect(f.metadata).toEqual({ format: "pt" });
    const names = Object.keys(hdr).filter((k) => k !== "__metadata__");
    expect(f.names()).toEqual(names); // fixture header is already in data order
    for (const k of names) {
      const e = hdr[k];
      const b = raw.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1]);
      expect(f.readBytes(k)).toEqual(new Uint8Array(b));
      const v = f.readF32(k);
      expect(v[v.length - 1]).toBe(b.readFloatLE(b.length - 4));
    }
    f.close();
  });
});

describe("streaming writer", () => {
  const plan = [
    { name: "a", dtype: "F32" as const, shape: [2] },
    { name: "b", dtype: "F16" as const, shape: [3] },
  ];
  const leftovers = (p: string): string[] => readdirSync(tmp).filter((x) => x.startsWith(p.slice(tmp.length + 1) + ".tmp-"));

  test("writes to a temp file and only renames into place on finish", () => {
    const p = tmpFile();
    const w = new SafetensorsStreamWriter(p, plan, { k: "v" });
    expect(w.order()).toEqual(["a", "b"]);
    expect(w.tempPath.startsWith(`${p}.tmp-${process.pid}-`)).toBe(true);
    w.write("a", new Uint8Array(8).fill(1));
    expect(existsSync(p)).toBe(false);
    expect(existsSync(w.tempPath)).toBe(true);
    w.write("b", new Uint8Array(6).fill(2));
    w.finish();
    expect(existsSync(w.tempPath)).toBe(false);
    const f = SafetensorsFile.open(p);
    expect(f.readBytes("b")).toEqual(new Uint8Array(6).fill(2));
    f.close();
    expect(() => w.write("a", new Uint8Array(8))).toThrow(/already finished/);
  });

  test("rejects out-of-order, unknown and wrong-size writes; abort removes the temp file", () => {
    const p = tmpFile();
    const w = new SafetensorsStreamWriter(p, plan);
    expect(() => w.write("b", new Uint8Array(6))).toThrow(/"b" written out of order; expected "a" next/);
    expect(() => w.write("zz", new Uint8Array(6))).toThrow(/"zz" written out of order \(not in the plan\)/);
    expect(() => w.write("a", new Uint8Array(7))).toThrow(/"a" \(F32 \[2\]\) needs 8 bytes, got 7/);
    w.abort();
    expect(existsSync(w.tempPath)).toBe(false);
    expect(existsSync(p)).toBe(false);
    w.abort(); // idempotent
  });

  test("finish with missing tensors fails and leaves nothing behind", () => {
    const p = tmpFile();
    const w = new SafetensorsStreamWriter(p, plan);
    w.write("a", new Uint8Array(8));
    expect(() => w.finish()).toThrow(/1 planned tensor\(s\) never written \(first: "b"\)/);
    expect(existsSync(p)).toBe(false);
    expect(leftovers(p)).toEqual([]);
  });

  test("plan validation", () => {
    const p = tmpFile();
    expect(() => new SafetensorsStreamWriter(p, [...plan, plan[0]])).toThrow(/duplicate tensor name "a"/);
    expect(() => new SafetensorsStreamWriter(p, [{ name: "x", dtype: "F7" as never, shape: [1] }])).toThrow(/"x": unknown dtype "F7"/);
    expect(() => new SafetensorsStreamWriter(p, [{ name: "x", dtype: "F32", shape: [-1] }])).toThrow(/"x": invalid shape/);
    expect(() => new SafetensorsStreamWriter(p, [{ name: "__metadata__", dtype: "F32", shape: [1] }])).toThrow(/cannot be used as a tensor name/);
    expect(() => writeSafetensors(p, [{ name: "x", dtype: "F32", shape: [2], data: new Uint8Array(4) }])).toThrow(/"x" \(F32 \[2\]\) needs 8 bytes, got 4/);
    expect(existsSync(p)).toBe(false);
    expect(leftovers(p)).toEqual([]);
  });
});

describe("malformed files are rejected with a clear error", () => {
  /** Builds a raw file from a header (object or literal text) and a data buffer of `dataLen` bytes. */
  function raw(header: unknown, dataLen: number, opts: { n?: bigint } = {}): string {
    const text = typeof header === "string" ? header : JSON.stringify(header);
    const json = Buffer.from(text);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(opts.n ?? BigInt(json.length));
    const p = tmpFile();
    writeFileSync(p, Buffer.concat([len, json, Buffer.alloc(dataLen)]));
    return p;
  }
  const t = (dtype: string, shape: unknown, offs: unknown) => ({ dtype, shape, data_offsets: offs });
  const rejects = (p: string, re: RegExp): void => {
    let err: unknown;
    try {
      SafetensorsFile.open(p).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SafetensorsError);
    expect((err as Error).message).toContain(p);
    expect((err as Error).message).toMatch(re);
  };

  test("file shorter than 8 bytes", () => {
    const p = tmpFile();
    writeFileSync(p, Buffer.from([1, 2, 3]));
    rejects(p, /3 bytes, shorter than the 8-byte header length/);
  });
  test("missing file", () => {
    expect(() => SafetensorsFile.open(join(tmp, "nope.safetensors"))).toThrow(/cannot open safetensors file .*nope\.safetensors/);
  });
  test("header length 0, oversized, or beyond file end", () => {
    rejects(raw("{}", 0, { n: 0n }), /header length is 0/);
    rejects(raw("{}", 0, { n: 200_000_000n }), /header length 200000000 exceeds the 100000000-byte limit/);
    rejects(raw("{}", 0, { n: 0xffffffffffffffffn }), /exceeds the 100000000-byte limit/);
    rejects(raw("{}", 0, { n: 50n }), /header length 50 extends beyond the end of the file/);
  });
  test("bad JSON / not an object / bad UTF-8", () => {
    rejects(raw('{"a": ', 0), /header is not valid JSON/);
    rejects(raw("[1,2]   ", 0), /not a JSON object/);
    rejects(raw("null    ", 0), /not a JSON object/);
    const p = tmpFile();
    writeFileSync(p, Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([0x7b, 0xff, 0xfe, 0x7d])]));
    rejects(p, /not valid UTF-8/);
  });
  test("unknown dtype and malformed entries", () => {
    rejects(raw({ w: t("F12", [1], [0, 4]) }, 4), /tensor "w": unknown dtype "F12"/);
    rejects(raw({ w: { shape: [1], data_offsets: [0, 4] } }, 4), /tensor "w": missing "dtype"/);
    rejects(raw({ w: { dtype: "F32", data_offsets: [0, 4] } }, 4), /tensor "w": missing "shape"/);
    rejects(raw({ w: { dtype: "F32", shape: [1] } }, 4), /tensor "w": missing "data_offsets"/);
    rejects(raw({ w: t("F32", "1", [0, 4]) }, 4), /tensor "w": "shape" must be an array/);
    rejects(raw({ w: t("F32", [-1], [0, 4]) }, 4), /tensor "w": shape \[-1\] has an invalid dimension -1/);
    rejects(raw({ w: t("F32", [1.5], [0, 4]) }, 4), /invalid dimension 1.5/);
    rejects(raw({ w: t("F32", [1], [0]) }, 4), /"data_offsets" must be \[begin, end\]/);
    rejects(raw({ w: t("F32", [1], [0, "4"]) }, 4), /data_offsets \[0,"4"\] must be non-negative integers/);
    rejects(raw({ w: t("F32", [1], [0, 4.5]) }, 4), /must be non-negative integers/);
    rejects(raw({ w: 5 }, 4), /tensor "w": entry must be an object/);
  });
  test("offsets: begin > end, past the end of file, wrong byte count", () => {
    rejects(raw({ w: t("F32", [0], [4, 0]) }, 4), /tensor "w": data_offsets begin 4 is after end 0/);
    rejects(raw({ w: t("F32", [2], [0, 8]) }, 4), /tensor "w": data_offsets end 8 is beyond the data buffer \(4 bytes/);
    rejects(raw({ w: t("F32", [2], [0, 4]) }, 4), /tensor "w": F32 shape \[2\] needs 8 bytes but data_offsets \[0, 4\] span 4/);
    rejects(raw({ w: t("BF16", [3], [0, 4]) }, 4), /needs 6 bytes/);
  });
  test("overlapping tensors, gaps and trailing bytes", () => {
    rejects(raw({ a: t("F32", [2], [0, 8]), b: t("F32", [1], [4, 8]) }, 8), /tensor "b" \(data_offsets \[4, 8\]\) overlaps tensor "a"/);
    rejects(raw({ a: t("F32", [1], [0, 4]), b: t("F32", [1], [8, 12]) }, 12), /gap in data buffer: bytes \[4, 8\) before tensor "b"/);
    rejects(raw({ a: t("F32", [1], [0, 4]) }, 10), /data buffer has 10 bytes but tensors cover only \[0, 4\)/);
  });
  test("metadata values must be strings", () => {
    rejects(raw({ __metadata__: { format: 1 } }, 0), /"__metadata__" value for "format" must be a string/);
    rejects(raw({ __metadata__: [1] }, 0), /"__metadata__" must be an object of strings/);
  });
  test("a truncated copy of a real file is rejected", () => {
    const p = tmpFile();
    writeSafetensors(p, [{ name: "w", dtype: "F32", shape: [16], data: new Uint8Array(64) }]);
    const full = readFileSync(p);
    const cut = tmpFile();
    writeFileSync(cut, full.subarray(0, full.length - 1));
    rejects(cut, /tensor "w": data_offsets end 64 is beyond the data buffer \(63 bytes; file truncated\?\)/);
    writeFileSync(cut, full.subarray(0, 20));
    rejects(cut, /extends beyond the end of the file/);
  });
});
