// Hostile and broken checkpoints (issue 12, classes "sizes and values are checked before they are used" and
// "one tensor, one place"): every input is written by the test into a temp dir, from a tiny synthetic
// llama checkpoint built here. Each case asserts the typed error, that its message names the file and the
// problem, and that nothing is left behind (no output dir, no temporaries, the user's files unchanged).
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Checkpoint, CheckpointError, assertFiniteTensors } from "../../engine/checkpoint.ts";
import { checkWeights, createBuilder, expectedTensors, readDecoderConfig, validateCheckpoint } from "../../engine/architectures.ts";
import { CONFIG_LIMITS, ModelConfigError } from "../../engine/config.ts";
import { MissingWeightError } from "../../engine/decoder.ts";
import { type DType, firstNonFinite, firstNonFiniteBytes, fromFloat32, NonFiniteError } from "../../engine/dtype.ts";
import { OnnxGraph } from "../../engine/onnx/graph.ts";
import { findDuplicateKey, SafetensorsError, SafetensorsFile, writeSafetensors, type TensorData } from "../../engine/safetensors.ts";
import { InjectError, writeEditedCheckpoint } from "../../rosi/edit.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const root = mkdtempSync(join(tmpdir(), "realign-hostile-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;
const freshDir = (): string => {
  const d = join(root, `d${counter++}`);
  mkdirSync(d);
  return d;
};

/** A tiny llama: 2 layers, hidden 16, 4 heads (2 KV), intermediate 24, vocab 32. */
const BASE_CONFIG = {
  model_type: "llama",
  hidden_size: 16,
  intermediate_size: 24,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  num_hidden_layers: 2,
  vocab_size: 32,
  max_position_embeddings: 64,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  bos_token_id: 1,
  eos_token_id: 2,
  tie_word_embeddings: false,
};
type Config = Record<string, unknown>;

/** Deterministic small weights for every tensor the config implies, encoded as `dtype`. */
function tinyTensors(cfg: Config, dtype: DType = "F32"): TensorData[] {
  return expectedTensors(readDecoderConfig(cfg)).map((t, k) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const f = new Float32Array(n);
    for (let i = 0; i < n; i++) f[i] = 0.02 * Math.sin(1 + i + 7 * k);
    return { name: t.name, dtype, shape: t.shape, data: fromFloat32(dtype, f).slice() };
  });
}

/** Writes a checkpoint dir: config.json (as given, or raw text) and model.safetensors from `tensors`. */
function writeCheckpoint(dir: string, config: Config | string, tensors: TensorData[]): string {
  writeFileSync(join(dir, "config.json"), typeof config === "string" ? config : JSON.stringify(config));
  writeSafetensors(join(dir, "model.safetensors"), tensors);
  return dir;
}

/** A valid tiny checkpoint, then `edit` applied to its tensors (by name) and config. */
function tinyCheckpoint(opts: { config?: Config; weightsConfig?: Config; dtype?: DType; poke?: (t: TensorData[]) => TensorData[] } = {}): string {
  const config = opts.config ?? BASE_CONFIG;
  let tensors = tinyTensors(opts.weightsConfig ?? config, opts.dtype);
  if (opts.poke) tensors = opts.poke(tensors);
  return writeCheckpoint(freshDir(), config, tensors);
}

/** Sets element `index` of a tensor to `value` (encoded in the tensor's dtype). */
function setElement(tensors: TensorData[], name: string, index: number, value: number): TensorData[] {
  return tensors.map((t) => {
    if (t.name !== name) return t;
    const f = new Float32Array(t.data.byteLength / (t.dtype === "F32" ? 4 : 2));
    const src = t.dtype === "F32" ? new Float32Array(t.data.buffer.slice(0)) : null;
    if (src) f.set(src);
    else {
      const h = new Uint16Array(t.data.buffer.slice(0));
      const bits = new Uint32Array(f.buffer);
      for (let i = 0; i < h.length; i++) bits[i] = h[i] << 16; // BF16 only
    }
    f[index] = value;
    return { ...t, data: fromFloat32(t.dtype, f).slice() };
  });
}

/** The error `fn` throws (fails the test when it does not throw). */
function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected an error, none was thrown");
}

/** Snapshot of a directory's files and contents, to show a refused run changed nothing. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(dir).sort()) out[f] = readFileSync(join(dir, f)).toString("base64");
  return out;
}

// ---------------------------------------------------------------------------------------------
describe("sizes are checked before anything is sized from them", () => {
  test("the synthetic checkpoint itself is valid (validateCheckpoint, createBuilder, a graph builds)", () => {
    const dir = tinyCheckpoint();
    const cfg = validateCheckpoint(dir);
    expect(cfg.numLayers).toBe(2);
    const ckpt = Checkpoint.open(dir);
    try {
      expect(validateCheckpoint(ckpt).vocabSize).toBe(32);
      const graph = createBuilder(ckpt.config, ckpt).build(new OnnxGraph(null));
      expect(graph.nodes.length).toBeGreaterThan(0);
    } finally {
      ckpt.close();
    }
  });

  test("num_hidden_layers 1e9 in a tiny checkpoint is refused from the config, naming the file and the limit", () => {
    const dir = tinyCheckpoint({ config: { ...BASE_CONFIG, num_hidden_layers: 1_000_000_000 }, weightsConfig: BASE_CONFIG });
    const before = snapshot(dir);
    const e = thrown(() => validateCheckpoint(dir));
    expect(e).toBeInstanceOf(ModelConfigError);
    expect(e.message).toBe(`${join(dir, "config.json")}: "num_hidden_layers" is 1000000000, above the limit ${CONFIG_LIMITS.num_hidden_layers} (a corrupt config?)`);
    // the same refusal on the paths that read the config without the weights, and on model load
    expect(() => readDecoderConfig(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")))).toThrow(/^config\.json: "num_hidden_layers" is 1000000000, above the limit/);
    const ckpt = Checkpoint.open(dir);
    try {
      expect(() => createBuilder(ckpt.config, ckpt)).toThrow(ModelConfigError);
    } finally {
      ckpt.close();
    }
    expect(snapshot(dir)).toEqual(before);
  });

  test("every size field has a whole-number range", () => {
    const cases: Array<[Config, RegExp]> = [
      [{ hidden_size: 1e7 }, /"hidden_size" is 10000000, above the limit 65536/],
      [{ num_attention_heads: 1e6 }, /"num_attention_heads" is 1000000, above the limit 1024/],
      [{ num_key_value_heads: 1e6 }, /"num_key_value_heads" is 1000000, above the limit 1024/],
      [{ head_dim: 1 << 20 }, /"head_dim" is 1048576, above the limit 1024/],
      [{ intermediate_size: 1e9 }, /"intermediate_size" is 1000000000, above the limit 1048576/],
      [{ vocab_size: 1e10 }, /"vocab_size" is 10000000000, above the limit 4194304/],
      [{ max_position_embeddings: 1e15 }, /"max_position_embeddings" is 1000000000000000, above the limit/],
      [{ num_hidden_layers: 0 }, /"num_hidden_layers" is 0, must be at least 1/],
      [{ num_hidden_layers: -3 }, /"num_hidden_layers" is -3, must be at least 1/],
      [{ hidden_size: 16.5 }, /"hidden_size" must be a whole number, got 16.5/],
      [{ intermediate_size: "24" }, /"intermediate_size" must be a number, got "24"/],
      [{ rms_norm_eps: 0 }, /"rms_norm_eps" must be greater than 0/],
      [{ rope_theta: -1 }, /"rope_theta" must be greater than 0/],
      [{ rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 1e12 } }, /"original_max_position_embeddings" is 1000000000000, above the limit/],
      [{ model_type: "mistral", sliding_window: 1e12 }, /"sliding_window" is 1000000000000, above the limit/],
      [{ model_type: "qwen2", use_sliding_window: true, sliding_window: 0 }, /"sliding_window" is 0, must be at least 1/],
      [{ model_type: "gemma2", final_logit_softcapping: 0 }, /"final_logit_softcapping" must be greater than 0 or null/],
      [{ rope_parameters: { rope_type: "default", rope_theta: -5 } }, /"rope_theta" must be greater than 0/],
      [{ rope_parameters: [1e6] }, /"rope_parameters" must be an object/],
      [{ model_type: "qwen3", use_sliding_window: true, sliding_window: 8, layer_types: ["sliding_attention"] }, /"layer_types" lists 1 layers, num_hidden_layers is 2/],
      [{ model_type: "gemma3_text", layer_types: ["full_attention", "chunked_attention"] }, /layer_types\[1\] "chunked_attention" is not supported/],
      [{ model_type: "gemma3_text", sliding_window_pattern: 0 }, /"sliding_window_pattern" is 0, must be at least 1/],
      [{ model_type: "gemma3_text", rope_local_base_freq: 0 }, /"rope_local_base_freq" must be greater than 0/],
      [{ model_type: "gemma3_text", rope_parameters: { full_attention: { rope_type: "yarn", rope_theta: 1e6, factor: 4 } } }, /rope_parameters.full_attention type "yarn" is not supported/],
      [{ model_type: "gemma3_text", rope_parameters: { sliding_attention: 10000 } }, /"rope_parameters.sliding_attention" must be an object/],
      [{ model_type: "gemma3_text", use_bidirectional_attention: true }, /use_bidirectional_attention \(an encoder\) is not supported/],
    ];
    for (const [patch, message] of cases) {
      const e = thrown(() => readDecoderConfig({ ...BASE_CONFIG, ...patch }, "/x/config.json"));
      expect(e).toBeInstanceOf(ModelConfigError);
      expect(e.message).toStartWith("/x/config.json: ");
      expect(e.message).toMatch(message);
    }
  });

  test("vocab_size 0 with matching empty tables is refused from the config, not by ONNX Runtime", () => {
    const dir = tinyCheckpoint({
      config: { ...BASE_CONFIG, vocab_size: 0, bos_token_id: null, eos_token_id: null },
      weightsConfig: BASE_CONFIG,
      poke: (ts) => ts.map((t) => (t.name === "model.embed_tokens.weight" || t.name === "lm_head.weight" ? { ...t, shape: [0, 16], data: new Uint8Array(0) } : t)),
    });
    const e = thrown(() => validateCheckpoint(dir));
    expect(e).toBeInstanceOf(ModelConfigError);
    expect(e.message).toBe(`${join(dir, "config.json")}: "vocab_size" is 0, must be at least 1`);
  });

  test("bos/eos token ids outside the vocabulary are refused", () => {
    expect(() => readDecoderConfig({ ...BASE_CONFIG, bos_token_id: 32 }, "/x/config.json")).toThrow('/x/config.json: "bos_token_id" 32 is not a token id of the vocabulary (vocab_size 32)');
    expect(() => readDecoderConfig({ ...BASE_CONFIG, eos_token_id: [2, -1] }, "/x/config.json")).toThrow('/x/config.json: "eos_token_id" -1 is not a token id of the vocabulary (vocab_size 32)');
  });

  test("a config with more layers than the weights names what the weights hold", () => {
    const dir = tinyCheckpoint({ config: { ...BASE_CONFIG, num_hidden_layers: 5 }, weightsConfig: BASE_CONFIG });
    const e = thrown(() => validateCheckpoint(dir));
    expect(e).toBeInstanceOf(MissingWeightError);
    expect(e.message).toBe(`${dir}: config.json says num_hidden_layers 5, but the weights hold layers 0–1 only (missing tensor "model.layers.2.input_layernorm.weight")`);
  });

  test("weights with more layers than the config (an extra layer) are refused", () => {
    const dir = tinyCheckpoint({ config: { ...BASE_CONFIG, num_hidden_layers: 1 }, weightsConfig: BASE_CONFIG });
    const e = thrown(() => validateCheckpoint(dir));
    expect(e).toBeInstanceOf(MissingWeightError);
    expect(e.message).toMatch(new RegExp(`^${dir}: tensor "model\\.layers\\.1\\.[a-z_.]+" belongs to layer 1, but config.json says num_hidden_layers 1 \\(layers 0–0\\)$`));
    // and on model load, before any graph is built
    const ckpt = Checkpoint.open(dir);
    try {
      expect(() => createBuilder(ckpt.config, ckpt)).toThrow(/belongs to layer 1/);
    } finally {
      ckpt.close();
    }
  });

  test("counts that disagree with the tensors (heads, KV heads, head_dim, intermediate), a missing tensor, an integer tensor", () => {
    const cases: Array<[Partial<typeof BASE_CONFIG> | Config, RegExp]> = [
      [{ num_key_value_heads: 4 }, /tensor "model\.layers\.0\.self_attn\.k_proj\.weight" has shape \[8,16\], expected \[16,16\] from config\.json/],
      [{ num_attention_heads: 2, num_key_value_heads: 2 }, /tensor "model\.layers\.0\.self_attn\.k_proj\.weight" has shape \[8,16\], expected \[16,16\]/],
      [{ head_dim: 2 }, /tensor "model\.layers\.0\.self_attn\.q_proj\.weight" has shape \[16,16\], expected \[8,16\]/],
      [{ intermediate_size: 12 }, /tensor "model\.layers\.0\.mlp\.gate_proj\.weight" has shape \[24,16\], expected \[12,16\]/],
      [{ vocab_size: 31 }, /tensor "model\.embed_tokens\.weight" has shape \[32,16\], expected \[31,16\]/],
      [{ attention_bias: true }, /checkpoint is missing tensor "model\.layers\.0\.self_attn\.q_proj\.bias" \(needed by llama\)/],
    ];
    for (const [patch, message] of cases) {
      const dir = tinyCheckpoint({ config: { ...BASE_CONFIG, ...patch }, weightsConfig: BASE_CONFIG });
      const e = thrown(() => validateCheckpoint(dir));
      expect(e).toBeInstanceOf(MissingWeightError);
      expect(e.message).toStartWith(`${dir}: `);
      expect(e.message).toMatch(message);
    }
    const missing = tinyCheckpoint({ poke: (ts) => ts.filter((t) => t.name !== "model.layers.1.post_attention_layernorm.weight") });
    expect(() => validateCheckpoint(missing)).toThrow(`${missing}: checkpoint is missing tensor "model.layers.1.post_attention_layernorm.weight" (needed by llama)`);
    const integer = tinyCheckpoint({ poke: (ts) => ts.map((t) => (t.name === "model.norm.weight" ? { ...t, dtype: "I32" as const } : t)) });
    expect(() => validateCheckpoint(integer)).toThrow(`${integer}: tensor "model.norm.weight" has dtype I32; weights must be F32, F16, BF16 or F64`);
  });

  test("a weight source without names() is still probed for an extra layer", () => {
    const cfg = readDecoderConfig({ ...BASE_CONFIG, num_hidden_layers: 1 });
    const tensors = new Map(tinyTensors(BASE_CONFIG).map((t) => [t.name, t]));
    const source = { has: (n: string) => tensors.has(n), info: (n: string) => ({ shape: tensors.get(n)!.shape }) };
    expect(() => checkWeights(cfg, source, "src")).toThrow("src: the weights hold layer 1, but config.json says num_hidden_layers 1");
  });

  test.skipIf(!hasShared())("every hf-golden fixture validates, in F32 and BF16", () => {
    for (const m of ["llama", "llama3_rope", "qwen2", "mistral", "gemma2"]) {
      for (const weights of ["model.safetensors", "model-bf16.safetensors"]) {
        const ckpt = Checkpoint.open(sharedPath("fixtures", "hf-golden", m), { weights });
        try {
          expect(validateCheckpoint(ckpt).modelType).toBe(m === "llama3_rope" ? "llama" : m);
          assertFiniteTensors(ckpt);
        } finally {
          ckpt.close();
        }
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
describe("NaN and Inf weights are refused, naming the tensor", () => {
  const O0 = "model.layers.0.self_attn.o_proj.weight";
  const D1 = "model.layers.1.mlp.down_proj.weight";
  const Q0 = "model.layers.0.self_attn.q_proj.weight";

  test("firstNonFinite / firstNonFiniteBytes find NaN and ±Inf in F32, F16, BF16, F64 and pass finite extremes", () => {
    expect(firstNonFinite(new Float32Array([0, -0, 3.4e38, -3.4e38, 1e-45]))).toBe(-1);
    expect(firstNonFinite(new Float32Array([1, 2, NaN, Infinity]))).toBe(2);
    expect(firstNonFinite(new Float64Array([1, -Infinity]))).toBe(1);
    for (const dtype of ["F32", "F16", "BF16", "F64"] as const) {
      const finite = new Float32Array([0, -0, 1, -2.5, 1e-8, dtype === "F16" ? 65504 : 3.0e38]);
      expect(firstNonFiniteBytes(dtype, fromFloat32(dtype, finite))).toBe(-1);
      for (const bad of [NaN, Infinity, -Infinity]) {
        expect(firstNonFiniteBytes(dtype, fromFloat32(dtype, new Float32Array([1, 2, 3, bad, 5])))).toBe(3);
      }
      // unaligned views are handled
      const bytes = fromFloat32(dtype, new Float32Array([1, NaN]));
      const shifted = new Uint8Array(bytes.byteLength + 1);
      shifted.set(bytes, 1);
      expect(firstNonFiniteBytes(dtype, shifted.subarray(1))).toBe(1);
    }
    expect(firstNonFiniteBytes("I32", new Uint8Array(new Int32Array([0x7f800000]).buffer))).toBe(-1);
  });

  for (const dtype of ["F32", "BF16"] as const) {
    for (const [bad, label] of [[NaN, "NaN"], [Infinity, "Infinity"], [-Infinity, "-Infinity"]] as const) {
      test(`${dtype} ${label} in an edited matrix: writeEditedCheckpoint refuses, naming the tensor; nothing is written`, () => {
        const dir = tinyCheckpoint({ dtype, poke: (ts) => setElement(ts, O0, 5, bad) });
        const out = join(freshDir(), "edited");
        const before = snapshot(dir);
        const e = thrown(() => writeEditedCheckpoint(dir, out, { vectors: new Map([[O0, new Float32Array(16).fill(0.1)]]), metadata: {} }));
        expect(e).toBeInstanceOf(NonFiniteError);
        expect(e.message).toBe(`${join(dir, "model.safetensors")}: tensor "${O0}" holds ${label} at element 5; refusing to edit a checkpoint with non-finite weights`);
        expect(existsSync(out)).toBe(false);
        expect(readdirSync(join(out, ".."))).toEqual([]); // no temporary left beside it
        expect(snapshot(dir)).toEqual(before);

        const ckpt = Checkpoint.open(dir);
        try {
          // the helper steps call on the matrices they read, and the graph build, both name it too
          const f = thrown(() => assertFiniteTensors(ckpt, [Q0, O0]));
          expect(f).toBeInstanceOf(NonFiniteError);
          expect(f.message).toBe(`${join(dir, "model.safetensors")}: tensor "${O0}" (${dtype} [16,16]) holds ${label} at element 5; non-finite weights are refused`);
          expect(() => assertFiniteTensors(ckpt, [Q0])).not.toThrow();
          expect(() => createBuilder(ckpt.config, ckpt).build(new OnnxGraph(null))).toThrow(`${dir}: tensor "${O0}" holds ${label} at element 5; non-finite weights are refused`);
        } finally {
          ckpt.close();
        }
      });
    }

    test(`${dtype} NaN in a tensor the edit only copies is refused too, and an existing output is left alone`, () => {
      const dir = tinyCheckpoint({ dtype, poke: (ts) => setElement(ts, Q0, 7, NaN) });
      const parent = freshDir();
      const out = join(parent, "edited");
      mkdirSync(out);
      writeFileSync(join(out, "previous.txt"), "kept");
      const e = thrown(() => writeEditedCheckpoint(dir, out, { vectors: new Map([[D1, new Float32Array(16).fill(0.1)]]), metadata: {} }));
      expect(e).toBeInstanceOf(NonFiniteError);
      expect(e.message).toBe(`${join(dir, "model.safetensors")}: tensor "${Q0}" holds NaN at element 7; refusing to write a checkpoint with non-finite weights`);
      expect(readdirSync(parent)).toEqual(["edited"]);
      expect(snapshot(out)).toEqual({ "previous.txt": Buffer.from("kept").toString("base64") });
    });
  }

  test("an edit whose result overflows the stored dtype (F16 and F32) is refused before the rename", () => {
    for (const dtype of ["F16", "F32"] as const) {
      const dir = tinyCheckpoint({ dtype });
      const out = join(freshDir(), "edited");
      const huge = new Float32Array(16).fill(dtype === "F16" ? 1e7 : 3e38);
      const key = new Float32Array(24).fill(dtype === "F16" ? 1 : 3e38);
      const e = thrown(() => writeEditedCheckpoint(dir, out, { vectors: new Map([[D1, huge]]), keys: new Map([[D1, key]]), metadata: {} }));
      expect(e).toBeInstanceOf(NonFiniteError);
      expect(e.message).toMatch(new RegExp(`^${join(dir, "model.safetensors")}: the edited tensor "${D1.replace(/\./g, "\\.")}" would hold -?Infinity at element 0 in ${dtype} `));
      expect(existsSync(out)).toBe(false);
      expect(readdirSync(join(out, ".."))).toEqual([]);
    }
  });

  test("a NaN in an edit vector, a key or the embedding vector is refused before anything is read", () => {
    const dir = tinyCheckpoint();
    const out = join(freshDir(), "edited");
    const v = new Float32Array(16);
    v[3] = NaN;
    expect(() => writeEditedCheckpoint(dir, out, { vectors: new Map([[O0, v]]), metadata: {} })).toThrow(`the edit vector for "${O0}" holds NaN at entry 3`);
    const k = new Float32Array(16);
    k[0] = Infinity;
    expect(() => writeEditedCheckpoint(dir, out, { vectors: new Map([[O0, new Float32Array(16)]]), keys: new Map([[O0, k]]), metadata: {} })).toThrow(`the key for "${O0}" holds Infinity at entry 0`);
    expect(() => writeEditedCheckpoint(dir, out, { vectors: new Map(), embedding: v, metadata: {} })).toThrow(NonFiniteError);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(join(out, ".."))).toEqual([]);
  });

  test("NaN in the embedding table is refused by --include-embeddings", () => {
    const dir = tinyCheckpoint({ dtype: "BF16", poke: (ts) => setElement(ts, "model.embed_tokens.weight", 40, NaN) });
    const out = join(freshDir(), "edited");
    expect(() => writeEditedCheckpoint(dir, out, { vectors: new Map(), embedding: new Float32Array(16).fill(0.01), metadata: {} })).toThrow(
      `${join(dir, "model.safetensors")}: tensor "model.embed_tokens.weight" holds NaN at element 40; refusing to edit a checkpoint with non-finite weights`,
    );
    expect(existsSync(out)).toBe(false);
  });

  test("a clean checkpoint still edits (the checks let finite weights through)", () => {
    const dir = tinyCheckpoint({ dtype: "BF16" });
    const out = join(freshDir(), "edited");
    writeEditedCheckpoint(dir, out, { vectors: new Map([[O0, new Float32Array(16).fill(0.1)]]), metadata: {} });
    const ckpt = Checkpoint.open(out);
    try {
      expect(validateCheckpoint(ckpt).numLayers).toBe(2);
      assertFiniteTensors(ckpt);
    } finally {
      ckpt.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------
describe("one tensor, one place", () => {
  /** A safetensors file with a hand-written header (the writer would never produce a repeated key). */
  function rawSafetensors(path: string, header: string, dataBytes: number): void {
    const json = Buffer.from(header, "utf8");
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(BigInt(json.byteLength));
    writeFileSync(path, Buffer.concat([prefix, json, Buffer.alloc(dataBytes)]));
  }
  const entry = (b: number, e: number): string => `{"dtype":"F32","shape":[${(e - b) / 4}],"data_offsets":[${b},${e}]}`;

  test("findDuplicateKey: top level, nested, escaped spellings of one key; none in clean JSON", () => {
    expect(findDuplicateKey(`{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}`)).toBeNull();
    expect(findDuplicateKey(`{"a":"x","b":1,"a":"y"}`)).toEqual({ path: [], key: "a", values: ["x", "y"] });
    expect(findDuplicateKey(`{"m":{"k":[1,{"t":1, "t" :2}]}}`)).toEqual({ path: ["m", "k", "[1]"], key: "t", values: null });
    expect(findDuplicateKey(`{"w\\u0031":"s1","w1":"s2"}`)).toEqual({ path: [], key: "w1", values: ["s1", "s2"] });
    expect(findDuplicateKey(`{"q\\"":"a\\\\","q\\"":"b"}`)).toEqual({ path: [], key: 'q"', values: ["a\\", "b"] });
  });

  test("a safetensors header listing one tensor twice is refused (JSON.parse would keep the last)", () => {
    const dir = freshDir();
    const p = join(dir, "dup.safetensors");
    // "x" twice: the second entry points at y's bytes, so the two would silently swap meaning
    rawSafetensors(p, `{"x":${entry(0, 8)},"y":${entry(8, 16)},"x":${entry(8, 16)}}`, 16);
    const e = thrown(() => SafetensorsFile.open(p));
    expect(e).toBeInstanceOf(SafetensorsError);
    expect(e.message).toBe(`${p}: tensor "x" is listed twice in the header (a tensor must have exactly one entry)`);
    // the same name spelt with an escape is the same key
    rawSafetensors(p, `{"x":${entry(0, 8)},"\\u0078":${entry(8, 16)}}`, 16);
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: tensor "x" is listed twice in the header`);
    rawSafetensors(p, `{"x":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}}`, 8);
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: key "dtype" appears twice in the header entry of tensor "x"`);
    rawSafetensors(p, `{"__metadata__":{"a":"1"},"x":${entry(0, 8)},"__metadata__":{"a":"2"}}`, 8);
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: "__metadata__" appears twice in the header`);
    // and through Checkpoint.open
    writeFileSync(join(dir, "config.json"), JSON.stringify(BASE_CONFIG));
    rawSafetensors(join(dir, "model.safetensors"), `{"x":${entry(0, 8)},"x":${entry(8, 16)}}`, 16);
    expect(() => Checkpoint.open(dir)).toThrow(`${join(dir, "model.safetensors")}: tensor "x" is listed twice in the header`);
  });

  test("a repeated key in config.json is refused", () => {
    const dir = freshDir();
    const text = JSON.stringify(BASE_CONFIG).replace('"num_hidden_layers":2', '"num_hidden_layers":2,"num_hidden_layers":3');
    writeCheckpoint(dir, text, tinyTensors(BASE_CONFIG));
    const e = thrown(() => Checkpoint.open(dir));
    expect(e).toBeInstanceOf(CheckpointError);
    expect(e.message).toBe(`${join(dir, "config.json")}: key "num_hidden_layers" appears twice (JSON keeps only the last; refusing an ambiguous file)`);
  });

  /** Two shards of the tiny checkpoint: layer 0 + embedding in s1, the rest in s2, plus an index. */
  function sharded(opts: { s1Extra?: string[]; s2Extra?: string[]; indexText?: (map: Record<string, string>) => string; drop?: string } = {}): string {
    const dir = freshDir();
    writeFileSync(join(dir, "config.json"), JSON.stringify(BASE_CONFIG));
    const all = tinyTensors(BASE_CONFIG);
    const byName = new Map(all.map((t) => [t.name, t]));
    const inS1 = (n: string): boolean => n.startsWith("model.layers.0.") || n === "model.embed_tokens.weight";
    const s1 = all.filter((t) => inS1(t.name)).map((t) => t.name).concat(opts.s1Extra ?? []);
    const s2 = all.filter((t) => !inS1(t.name)).map((t) => t.name).concat(opts.s2Extra ?? []);
    writeSafetensors(join(dir, "s1.safetensors"), s1.map((n) => byName.get(n)!));
    writeSafetensors(join(dir, "s2.safetensors"), s2.map((n) => byName.get(n)!));
    const map: Record<string, string> = {};
    for (const n of s1) map[n] = "s1.safetensors";
    for (const n of s2) if (!(n in map)) map[n] = "s2.safetensors";
    if (opts.drop) delete map[opts.drop];
    writeFileSync(join(dir, "model.safetensors.index.json"), opts.indexText ? opts.indexText(map) : JSON.stringify({ metadata: {}, weight_map: map }));
    return dir;
  }

  test("the sharded tiny checkpoint itself opens and validates", () => {
    const dir = sharded();
    const ckpt = Checkpoint.open(dir);
    try {
      expect(ckpt.shards().length).toBe(2);
      validateCheckpoint(ckpt);
    } finally {
      ckpt.close();
    }
  });

  test("a tensor stored in two shards is refused, naming the tensor and both shards", () => {
    const t = "model.layers.0.mlp.down_proj.weight";
    const dir = sharded({ s2Extra: [t] }); // the index maps it to s1; s2 holds a second copy
    const e = thrown(() => Checkpoint.open(dir));
    expect(e).toBeInstanceOf(CheckpointError);
    expect(e.message).toBe(`${join(dir, "model.safetensors.index.json")}: tensor "${t}" is stored in two shards, s1.safetensors and s2.safetensors (the index maps it to s1.safetensors); a tensor must have exactly one place`);
  });

  test("a tensor named twice in weight_map is refused, naming both shards", () => {
    const t = "model.norm.weight";
    const dir = sharded({
      indexText: (map) => JSON.stringify({ weight_map: map }).replace(`"${t}":"s2.safetensors"`, `"${t}":"s2.safetensors","${t}":"s1.safetensors"`),
    });
    const e = thrown(() => Checkpoint.open(dir));
    expect(e).toBeInstanceOf(CheckpointError);
    expect(e.message).toBe(`${join(dir, "model.safetensors.index.json")}: tensor "${t}" is listed twice in "weight_map" (mapped to s2.safetensors and to s1.safetensors); a tensor must have exactly one place`);
  });

  test("an index that sends a tensor to a shard that does not hold it says where it is", () => {
    const t = "model.norm.weight";
    const dir = sharded({ indexText: (map) => JSON.stringify({ weight_map: { ...map, [t]: "s1.safetensors" } }) });
    expect(() => Checkpoint.open(dir)).toThrow(
      `${join(dir, "model.safetensors.index.json")}: tensor "${t}" is mapped to s1.safetensors, but that shard's header does not contain it (it is stored in s2.safetensors)`,
    );
  });

  test("the edit refuses a shard holding a tensor the index does not list (it would be republished unchecked)", () => {
    const t = "model.layers.1.input_layernorm.weight";
    const dir = sharded({ drop: t }); // s2 still stores it
    const out = join(freshDir(), "edited");
    const e = thrown(() => writeEditedCheckpoint(dir, out, { vectors: new Map([["model.layers.0.self_attn.o_proj.weight", new Float32Array(16)]]), metadata: {} }));
    expect(e).toBeInstanceOf(InjectError);
    expect(e.message).toBe(`${join(dir, "s2.safetensors")}: tensor "${t}" is stored in this shard but the checkpoint's index does not list it; refusing to republish an unchecked tensor`);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(join(out, ".."))).toEqual([]);
    // and the unlisted tensor makes the checkpoint incomplete for the architecture
    expect(() => validateCheckpoint(dir)).toThrow(`checkpoint is missing tensor "${t}"`);
  });
});
