// engine/gguf.ts: what the GGUF writer puts in the file, read back with @huggingface/gguf (an independent parser)
// and by hand from the data section. A synthetic checkpoint is built here, so these tests need no ../shared; the
// ones on real models skip without it. Whether llama.cpp runs the files is tests/e2e/gguf-llamacpp.test.ts.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gguf } from "@huggingface/gguf";
import { writeGguf, type GgufType, type WriteGgufResult } from "../../engine/gguf.ts";
import { gv, layoutGguf, readGgufMetadata } from "../../engine/gguf-format.ts";
import { f16ToF32, bf16ToF32 } from "../../engine/dtype.ts";
import { SafetensorsFile, writeSafetensors } from "../../engine/safetensors.ts";
import { writeEditedCheckpoint } from "../../rosi/edit.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const tmp = mkdtempSync(join(tmpdir(), "realign-gguf-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// ---- a synthetic llama checkpoint with a byte-level tokenizer

const H = 64;
const HEADS = 4;
const KV = 2;
const D = H / HEADS;
const FF = 80; // not a multiple of 32: down_proj cannot be Q8_0
const VOCAB = 300;
const LAYERS = 2;

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296 - 0.5;
  };
}

function byteLevelAlphabet(): string[] {
  const keep = new Set<number>();
  for (let b = 33; b <= 126; b++) keep.add(b);
  for (let b = 161; b <= 172; b++) keep.add(b);
  for (let b = 174; b <= 255; b++) keep.add(b);
  let extra = 0;
  return Array.from({ length: 256 }, (_, b) => (keep.has(b) ? String.fromCodePoint(b) : String.fromCodePoint(256 + extra++)));
}

const weights = new Map<string, { shape: number[]; data: Float32Array }>();

function makeModel(dir: string, opts: { config?: Record<string, unknown>; metadata?: Record<string, string>; tokenizer?: (tj: Record<string, unknown>) => void } = {}): string {
  mkdirSync(dir, { recursive: true });
  const r = rng(7);
  const tensors: { name: string; shape: number[] }[] = [{ name: "model.embed_tokens.weight", shape: [VOCAB, H] }];
  for (let l = 0; l < LAYERS; l++) {
    const p = `model.layers.${l}`;
    tensors.push(
      { name: `${p}.input_layernorm.weight`, shape: [H] },
      { name: `${p}.self_attn.q_proj.weight`, shape: [HEADS * D, H] },
      { name: `${p}.self_attn.k_proj.weight`, shape: [KV * D, H] },
      { name: `${p}.self_attn.v_proj.weight`, shape: [KV * D, H] },
      { name: `${p}.self_attn.o_proj.weight`, shape: [H, HEADS * D] },
      { name: `${p}.post_attention_layernorm.weight`, shape: [H] },
      { name: `${p}.mlp.gate_proj.weight`, shape: [FF, H] },
      { name: `${p}.mlp.up_proj.weight`, shape: [FF, H] },
      { name: `${p}.mlp.down_proj.weight`, shape: [H, FF] },
    );
  }
  tensors.push({ name: "model.norm.weight", shape: [H] }, { name: "lm_head.weight", shape: [VOCAB, H] });
  const data = tensors.map((t) => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const f = Float32Array.from({ length: n }, () => (t.name.endsWith("norm.weight") ? 1 + 0.2 * r() : 0.2 * r()));
    weights.set(t.name, { shape: t.shape, data: f });
    return { name: t.name, dtype: "F32" as const, shape: t.shape, data: new Uint8Array(f.buffer) };
  });
  writeSafetensors(join(dir, "model.safetensors"), data, opts.metadata);
  const config = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: H,
    intermediate_size: FF,
    num_hidden_layers: LAYERS,
    num_attention_heads: HEADS,
    num_key_value_heads: KV,
    vocab_size: VOCAB,
    max_position_embeddings: 1024,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: 256,
    eos_token_id: 257,
    ...opts.config,
  };
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  const vocab: Record<string, number> = Object.fromEntries(byteLevelAlphabet().map((c, i) => [c, i]));
  // 256, 257: special added tokens; 258..299: merges of letter pairs
  const merges: string[] = [];
  const letters = "abcdefghijklmnopqrstu";
  for (let i = 0; merges.length < VOCAB - 258; i++) {
    const m = `${letters[i % 21]}${letters[Math.floor(i / 21) % 21]}`;
    if (vocab[m] !== undefined) continue;
    vocab[m] = 258 + merges.length;
    merges.push(`${m[0]} ${m[1]}`);
  }
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tj: Record<string, unknown> = {
    version: "1.0",
    added_tokens: [
      { id: 256, content: "<|bos|>", special: true, single_word: false, lstrip: false, rstrip: false, normalized: false },
      { id: 257, content: "<|eos|>", special: true, single_word: false, lstrip: false, rstrip: false, normalized: false },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: { type: "BPE", vocab, merges },
  };
  opts.tokenizer?.(tj);
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tj));
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ bos_token: "<|bos|>", eos_token: "<|eos|>", chat_template: "{% for m in messages %}{{ m.content }}{% endfor %}" }));
  return dir;
}

const model = makeModel(join(tmp, "synthetic"));

let n = 0;
async function exportTo(dir: string, type: GgufType): Promise<{ path: string; result: WriteGgufResult; parsed: Awaited<ReturnType<typeof gguf>>; file: Uint8Array }> {
  const path = join(tmp, `out-${n++}-${type}.gguf`);
  const result = await writeGguf({ modelDir: dir, out: path, type });
  const parsed = await gguf(path, { allowLocalFile: true });
  return { path, result, parsed, file: new Uint8Array(readFileSync(path)) };
}

/** A tensor's bytes in the file: data section start + its offset. */
function tensorBytes(e: Awaited<ReturnType<typeof exportTo>>, name: string): Uint8Array {
  const t = e.parsed.tensorInfos.find((x) => x.name === name);
  if (!t) throw new Error(`no tensor ${name}`);
  const start = Number(e.parsed.tensorDataOffset) + Number(t.offset);
  return e.file.subarray(start);
}

const f32At = (b: Uint8Array, count: number): Float32Array => new Float32Array(b.slice(0, 4 * count).buffer);

describe("GGUF v3 container", () => {
  test("header, typed metadata and tensor infos read back with @huggingface/gguf: dims reversed from HF, data 32-byte aligned, file size exact", async () => {
    const e = await exportTo(model, "f32");
    const m = e.parsed.metadata as Record<string, unknown>;
    expect(m.version).toBe(3);
    expect(m["general.architecture"]).toBe("llama");
    expect(m["general.alignment"]).toBe(32);
    expect(m["general.file_type"]).toBe(0);
    expect(m["llama.block_count"]).toBe(LAYERS);
    expect(m["llama.embedding_length"]).toBe(H);
    expect(m["llama.feed_forward_length"]).toBe(FF);
    expect(m["llama.attention.head_count"]).toBe(HEADS);
    expect(m["llama.attention.head_count_kv"]).toBe(KV);
    expect(m["llama.context_length"]).toBe(1024);
    expect(m["llama.rope.dimension_count"]).toBe(D);
    expect(m["llama.rope.freq_base"]).toBe(10000);
    expect(Math.abs((m["llama.attention.layer_norm_rms_epsilon"] as number) - 1e-5)).toBeLessThan(1e-11);
    expect(Number(m.tensor_count)).toBe(e.parsed.tensorInfos.length);
    expect(e.parsed.tensorInfos.length).toBe(1 + 9 * LAYERS + 2);
    const byName = new Map(e.parsed.tensorInfos.map((t) => [t.name, t]));
    expect(byName.get("token_embd.weight")!.shape.map(Number)).toEqual([H, VOCAB]);
    expect(byName.get("blk.1.attn_k.weight")!.shape.map(Number)).toEqual([H, KV * D]);
    expect(byName.get("blk.0.ffn_down.weight")!.shape.map(Number)).toEqual([FF, H]);
    expect(byName.get("output.weight")!.shape.map(Number)).toEqual([H, VOCAB]);
    expect(byName.get("output_norm.weight")!.shape.map(Number)).toEqual([H]);
    expect(Number(e.parsed.tensorDataOffset) % 32).toBe(0);
    for (const t of e.parsed.tensorInfos) expect(Number(t.offset) % 32).toBe(0);
    const last = e.parsed.tensorInfos.reduce((a, b) => (Number(b.offset) > Number(a.offset) ? b : a));
    const lastBytes = last.shape.reduce((a, b) => a * Number(b), 1) * 4;
    expect(e.file.length).toBe(Number(e.parsed.tensorDataOffset) + Math.ceil((Number(last.offset) + lastBytes) / 32) * 32);
    expect(e.result.bytes).toBe(e.file.length);
    expect(e.result.sha256).toBe(new Bun.CryptoHasher("sha256").update(e.file).digest("hex"));
  });

  test("f32 data: every weight exactly; q_proj and k_proj rows interleaved per head (HF row h·d + j·d/2 + i lands at h·d + 2i + j), the rest untouched", async () => {
    const e = await exportTo(model, "f32");
    const check = (gg: string, hf: string, permuteHeads?: number) => {
      const src = weights.get(hf)!;
      const got = f32At(tensorBytes(e, gg), src.data.length);
      if (!permuteHeads) {
        expect(got).toEqual(src.data);
        return;
      }
      const cols = src.shape[1]!;
      for (let h = 0; h < permuteHeads; h++)
        for (let i = 0; i < D / 2; i++)
          for (let j = 0; j < 2; j++) {
            const to = (h * D + 2 * i + j) * cols;
            const from = (h * D + j * (D / 2) + i) * cols;
            expect(got.subarray(to, to + cols)).toEqual(src.data.subarray(from, from + cols));
          }
    };
    check("token_embd.weight", "model.embed_tokens.weight");
    check("output.weight", "lm_head.weight");
    check("output_norm.weight", "model.norm.weight");
    for (let l = 0; l < LAYERS; l++) {
      const p = `model.layers.${l}`;
      check(`blk.${l}.attn_q.weight`, `${p}.self_attn.q_proj.weight`, HEADS);
      check(`blk.${l}.attn_k.weight`, `${p}.self_attn.k_proj.weight`, KV);
      check(`blk.${l}.attn_v.weight`, `${p}.self_attn.v_proj.weight`);
      check(`blk.${l}.attn_output.weight`, `${p}.self_attn.o_proj.weight`);
      check(`blk.${l}.attn_norm.weight`, `${p}.input_layernorm.weight`);
      check(`blk.${l}.ffn_norm.weight`, `${p}.post_attention_layernorm.weight`);
      check(`blk.${l}.ffn_gate.weight`, `${p}.mlp.gate_proj.weight`);
      check(`blk.${l}.ffn_up.weight`, `${p}.mlp.up_proj.weight`);
      check(`blk.${l}.ffn_down.weight`, `${p}.mlp.down_proj.weight`);
    }
  });

  test("f16 and bf16: matrices rounded (relative error ≤ 2⁻¹¹ and 2⁻⁸), norms kept F32; general.file_type 1 and 32", async () => {
    for (const [type, fileType, ggml, bound, decode] of [
      ["f16", 1, 1, 2 ** -11, f16ToF32],
      ["bf16", 32, 30, 2 ** -8, bf16ToF32],
    ] as const) {
      const e = await exportTo(model, type);
      expect((e.parsed.metadata as Record<string, unknown>)["general.file_type"]).toBe(fileType);
      const info = (name: string) => e.parsed.tensorInfos.find((t) => t.name === name)!;
      expect(info("blk.0.attn_v.weight").dtype as number).toBe(ggml);
      expect(info("blk.0.attn_norm.weight").dtype as number).toBe(0);
      const src = weights.get("model.layers.0.self_attn.v_proj.weight")!.data;
      const got = decode(new Uint16Array(tensorBytes(e, "blk.0.attn_v.weight").slice(0, 2 * src.length).buffer));
      let worst = 0;
      // relative to the value, or to half of f16's smallest subnormal (2⁻²⁵) for tiny values
      for (let i = 0; i < src.length; i++) worst = Math.max(worst, Math.abs(got[i]! - src[i]!) / Math.max(Math.abs(src[i]!), 2 ** -25 / bound));
      expect(worst).toBeLessThanOrEqual(bound);
      expect(worst).toBeGreaterThan(0);
      expect(f32At(tensorBytes(e, "blk.0.attn_norm.weight"), H)).toEqual(weights.get("model.layers.0.input_layernorm.weight")!.data);
    }
  });

  test("q8_0: blocks of 32 values, an fp16 scale max|x|/127 and int8 round(x/d), dequantized within d/2; rows of 80 (down_proj) fall back to F16 with a warning", async () => {
    const e = await exportTo(model, "q8_0");
    expect((e.parsed.metadata as Record<string, unknown>)["general.file_type"]).toBe(7);
    const info = (name: string) => e.parsed.tensorInfos.find((t) => t.name === name)!;
    expect(info("blk.0.ffn_gate.weight").dtype as number).toBe(8);
    expect(info("blk.0.ffn_down.weight").dtype as number).toBe(1);
    expect(e.result.fallbacks).toEqual(["blk.0.ffn_down.weight", "blk.1.ffn_down.weight"]);
    expect(e.result.warnings.some((w) => w.includes("Q8_0") && w.includes("blk.0.ffn_down.weight"))).toBe(true);
    const src = weights.get("model.layers.0.mlp.gate_proj.weight")!.data;
    const bytes = tensorBytes(e, "blk.0.ffn_gate.weight");
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    for (let b = 0; b < src.length / 32; b++) {
      const d = f16ToF32(new Uint16Array([view.getUint16(b * 34, true)]))[0]!;
      const block = src.subarray(b * 32, b * 32 + 32);
      const amax = Math.max(...block.map(Math.abs));
      expect(Math.abs(d - amax / 127)).toBeLessThanOrEqual((amax / 127) * 2 ** -11);
      let maxQ = 0;
      for (let j = 0; j < 32; j++) {
        const q = view.getInt8(b * 34 + 2 + j);
        maxQ = Math.max(maxQ, Math.abs(q));
        expect(Math.abs(q * d - block[j]!)).toBeLessThanOrEqual(d / 2 + amax * 2e-3);
      }
      expect(maxQ).toBe(127);
    }
  });
});

describe("GGUF metadata", () => {
  test("byte-level BPE tokenizer: gpt2 model, tokens in id order, special added tokens CONTROL, merges, bos/eos, add_bos false, chat template", async () => {
    const e = await exportTo(model, "f16");
    const m = e.parsed.metadata as Record<string, unknown>;
    expect(m["tokenizer.ggml.model"]).toBe("gpt2");
    expect(m["tokenizer.ggml.pre"]).toBe("gpt-2");
    const tokens = m["tokenizer.ggml.tokens"] as string[];
    expect(tokens.length).toBe(VOCAB);
    expect(tokens[65]).toBe("A");
    expect(tokens[32]).toBe("Ġ");
    expect(tokens[256]).toBe("<|bos|>");
    const types = m["tokenizer.ggml.token_type"] as number[];
    expect(types[65]).toBe(1);
    expect(types[256]).toBe(3);
    expect(types[257]).toBe(3);
    const merges = m["tokenizer.ggml.merges"] as string[];
    expect(merges.length).toBe(VOCAB - 258);
    expect(tokens[258]).toBe(merges[0]!.replace(" ", ""));
    expect(m["tokenizer.ggml.bos_token_id"]).toBe(256);
    expect(m["tokenizer.ggml.eos_token_id"]).toBe(257);
    expect(m["tokenizer.ggml.add_bos_token"]).toBe(false);
    expect(m["tokenizer.chat_template"]).toBe("{% for m in messages %}{{ m.content }}{% endfor %}");
    expect(e.result.tokenizer.pre.name).toBe("gpt-2");
  });

  test("the ROSI edit: the realign_* metadata that writeEditedCheckpoint records becomes realign.* strings", async () => {
    const edited = join(tmp, "edited");
    const v = new Float32Array(H).fill(0.01);
    const metadata = { realign_method: "gated", realign_include_embeddings: "false", realign_alpha: "-152.5", realign_layer: "1", realign_position: "last", realign_direction_sha256: "ab".repeat(32) };
    writeEditedCheckpoint(model, edited, { vectors: new Map([["model.layers.1.mlp.down_proj.weight", v]]), metadata });
    for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) writeFileSync(join(edited, f), readFileSync(join(model, f)));
    const e = await exportTo(edited, "f32");
    const m = e.parsed.metadata as Record<string, unknown>;
    expect(m["realign.method"]).toBe("gated");
    expect(m["realign.alpha"]).toBe("-152.5");
    expect(m["realign.layer"]).toBe("1");
    expect(m["realign.position"]).toBe("last");
    expect(m["realign.direction_sha256"]).toBe("ab".repeat(32));
    expect(m["realign.include_embeddings"]).toBe("false");
    expect(e.result.realign).toEqual({
      "realign.method": "gated",
      "realign.include_embeddings": "false",
      "realign.alpha": "-152.5",
      "realign.layer": "1",
      "realign.position": "last",
      "realign.direction_sha256": "ab".repeat(32),
    });
    // the edited matrix is what is written, the others are the source's
    const plain = await exportTo(model, "f32");
    expect(plain.result.realign).toEqual({});
    expect(tensorBytes(e, "blk.1.ffn_down.weight").subarray(0, 64)).not.toEqual(tensorBytes(plain, "blk.1.ffn_down.weight").subarray(0, 64));
    expect(tensorBytes(e, "blk.0.ffn_down.weight").subarray(0, 4 * H * FF)).toEqual(tensorBytes(plain, "blk.0.ffn_down.weight").subarray(0, 4 * H * FF));
  });
});

describe("the base model's pre-tokenizer", () => {
  test("readGgufMetadata reads back what @huggingface/gguf reads; --pre-from takes tokenizer.ggml.pre from a base model's GGUF and refuses one of another tokenizer kind", async () => {
    const e = await exportTo(model, "q8_0");
    const mine = readGgufMetadata(e.path);
    const theirs = e.parsed.metadata as Record<string, unknown>;
    for (const [k, v] of mine) {
      const t = theirs[k];
      if (typeof v === "number" && typeof t === "number") expect(Math.abs(v - t)).toBeLessThanOrEqual(Math.abs(t) * 1e-7);
      else expect([k, v]).toEqual([k, typeof t === "bigint" ? Number(t) : t]);
    }
    expect(mine.size).toBe(Object.keys(theirs).length - 3); // @huggingface/gguf adds version, tensor_count, kv_count
    // a header-only "base model GGUF"
    const base = (model: string, pre: string) => {
      const path = join(tmp, `base-${model}-${pre}.gguf`);
      writeFileSync(path, layoutGguf([["general.architecture", gv.str("llama")], ["tokenizer.ggml.model", gv.str(model)], ["tokenizer.ggml.pre", gv.str(pre)]], []).header);
      return path;
    };
    const r = await writeGguf({ modelDir: model, out: join(tmp, "pre-from.gguf"), preFrom: base("gpt2", "llama-bpe") });
    expect(r.tokenizer.pre).toEqual({ name: "llama-bpe", source: "from base-gpt2-llama-bpe.gguf" });
    expect(readGgufMetadata(r.path).get("tokenizer.ggml.pre")).toBe("llama-bpe");
    await expect(writeGguf({ modelDir: model, out: join(tmp, "pre-from-spm.gguf"), preFrom: base("llama", "default") })).rejects.toThrow(/tokenizer\.ggml\.model "llama", but this tokenizer is "gpt2"/);
    await expect(writeGguf({ modelDir: model, out: join(tmp, "pre-both.gguf"), pre: "qwen2", preFrom: base("gpt2", "qwen2") })).rejects.toThrow(/either --pre or --pre-from/);
  });
});

describe("refusals", () => {
  const leftovers = () => readdirSync(tmp).filter((f) => f.endsWith(".tmp"));

  test("an existing output file is never replaced (content unchanged); a missing output folder is an error; no temporary file is left", async () => {
    const out = join(tmp, "taken.gguf");
    writeFileSync(out, "user data");
    await expect(writeGguf({ modelDir: model, out, type: "f16" })).rejects.toThrow(/already exists/);
    expect(readFileSync(out, "utf8")).toBe("user data");
    await expect(writeGguf({ modelDir: model, out: join(tmp, "no-such-dir", "x.gguf") })).rejects.toThrow(/does not exist/);
    // a file that appears while the export runs is not replaced either (the temporary file is linked, never renamed over it)
    const racing = join(tmp, "racing.gguf");
    await expect(writeGguf({ modelDir: model, out: racing, onProgress: () => existsSync(racing) || writeFileSync(racing, "theirs") })).rejects.toThrow(/appeared while exporting/);
    expect(readFileSync(racing, "utf8")).toBe("theirs");
    expect(leftovers()).toEqual([]);
  });

  test("unsupported architecture, a tokenizer llama.cpp cannot hold (two ids with one text), an unknown byte-level pre-tokenizer, a NaN weight, an interrupted export: clear errors, nothing written", async () => {
    const cases: [string, Parameters<typeof makeModel>[1], RegExp][] = [
      ["arch", { config: { model_type: "phi3" } }, /model_type "phi3" is not supported/],
      ["dup", { tokenizer: (tj) => (tj.added_tokens as unknown[]).push({ id: 299, content: "A", special: false }) }, /tokens 65 and 299 are both "A".*unique/],
      ["pre", { tokenizer: (tj) => (tj.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "Split", pattern: { Regex: "\\s+" }, behavior: "Isolated" }, { type: "ByteLevel", use_regex: false }] }) }, /pre-tokenizer is not one realign recognises.*--pre/],
    ];
    for (const [name, opts, message] of cases) {
      const dir = makeModel(join(tmp, `bad-${name}`), opts);
      const out = join(tmp, `bad-${name}.gguf`);
      await expect(writeGguf({ modelDir: dir, out })).rejects.toThrow(message);
      expect(existsSync(out)).toBe(false);
    }
    // a NaN weight: refused naming the tensor and the element, nothing written
    const nan = makeModel(join(tmp, "bad-nan"));
    const bad = weights.get("model.layers.1.mlp.up_proj.weight")!;
    bad.data[77] = Number.NaN;
    const tensors = [...weights].map(([name, t]) => ({ name, dtype: "F32" as const, shape: t.shape, data: new Uint8Array(t.data.buffer) }));
    writeSafetensors(join(nan, "model.safetensors.new"), tensors);
    writeFileSync(join(nan, "model.safetensors"), readFileSync(join(nan, "model.safetensors.new")));
    rmSync(join(nan, "model.safetensors.new"));
    makeModel(join(tmp, "restore-weights")); // the shared table back to finite values
    await expect(writeGguf({ modelDir: nan, out: join(tmp, "nan.gguf") })).rejects.toThrow(/model\.layers\.1\.mlp\.up_proj\.weight" holds NaN at element 77/);
    expect(existsSync(join(tmp, "nan.gguf"))).toBe(false);
    // an interrupted export removes its temporary file
    const ac = new AbortController();
    await expect(writeGguf({ modelDir: model, out: join(tmp, "aborted.gguf"), signal: ac.signal, onProgress: () => ac.abort() })).rejects.toThrow(/interrupted/);
    expect(existsSync(join(tmp, "aborted.gguf"))).toBe(false);
    // --pre settles the unknown pre-tokenizer
    const r = await writeGguf({ modelDir: join(tmp, "bad-pre"), out: join(tmp, "pre-given.gguf"), pre: "llama-bpe" });
    expect(r.tokenizer.pre).toEqual({ name: "llama-bpe", source: "given (--pre)" });
    expect(leftovers()).toEqual([]);
  });
});

describe.skipIf(!hasShared())("real checkpoints", () => {
  test("stories260K: sentencepiece-style vocabulary (llama model, BYTE and CONTROL types, merge-rank scores, add_space_prefix, add_bos), tied: no output tensor", async () => {
    const e = await exportTo(sharedPath("models", "stories260K"), "f32");
    const m = e.parsed.metadata as Record<string, unknown>;
    expect(m["tokenizer.ggml.model"]).toBe("llama");
    expect(m["tokenizer.ggml.pre"]).toBe("default");
    const tokens = m["tokenizer.ggml.tokens"] as string[];
    const types = m["tokenizer.ggml.token_type"] as number[];
    const scores = m["tokenizer.ggml.scores"] as number[];
    expect(tokens.slice(0, 4)).toEqual(["<unk>", "<s>", "</s>", "<0x00>"]);
    expect(types.slice(0, 4)).toEqual([2, 3, 3, 6]);
    const tj = JSON.parse(readFileSync(sharedPath("models", "stories260K", "tokenizer.json"), "utf8")) as { model: { merges: string[] } };
    const [l, r] = tj.model.merges[0]!.split(" ");
    expect(scores[tokens.indexOf(l! + r!)]).toBe(-0);
    const [l5, r5] = tj.model.merges[5]!.split(" ");
    expect(scores[tokens.indexOf(l5! + r5!)]).toBe(-5);
    expect(m["tokenizer.ggml.add_space_prefix"]).toBe(true);
    expect(m["tokenizer.ggml.add_bos_token"]).toBe(true);
    expect(m["tokenizer.ggml.bos_token_id"]).toBe(1);
    expect(m["tokenizer.ggml.eos_token_id"]).toBe(2);
    expect(m["tokenizer.ggml.unknown_token_id"]).toBe(0);
    expect(m["tokenizer.ggml.padding_token_id"]).toBeUndefined();
    expect(e.parsed.tensorInfos.some((t) => t.name === "output.weight")).toBe(false);
  });

  test("organism-llama: ChatML template, qwen2 pre-tokenizer detected from tokenizer.json's regex, no BOS added, eos <|im_end|>", async () => {
    const e = await exportTo(sharedPath("models", "organism-llama"), "f16");
    const m = e.parsed.metadata as Record<string, unknown>;
    expect(m["tokenizer.ggml.pre"]).toBe("qwen2");
    expect(e.result.tokenizer.pre.source).toContain("Qwen2");
    expect(m["tokenizer.ggml.add_bos_token"]).toBe(false);
    expect(m["tokenizer.ggml.eos_token_id"]).toBe(4095);
    expect(m["tokenizer.ggml.padding_token_id"]).toBe(4093);
    expect((m["tokenizer.ggml.tokens"] as string[])[4094]).toBe("<|im_start|>");
    expect(String(m["tokenizer.chat_template"])).toContain("<|im_start|>");
  });

  test("hf-golden gemma2: norms + 1, queries scaled by (query_pre_attn_scalar/head_dim)^-½ for llama.cpp, softcaps and window; llama3_rope: rope_freqs as convert_hf_to_gguf computes them", async () => {
    const golden = (name: string) => {
      const dir = join(tmp, `golden-${name}`);
      mkdirSync(dir, { recursive: true });
      for (const f of ["config.json", "model.safetensors"]) writeFileSync(join(dir, f), readFileSync(sharedPath("fixtures", "hf-golden", name, f)));
      const tj = JSON.parse(readFileSync(join(model, "tokenizer.json"), "utf8")) as { model: { vocab: Record<string, number>; merges: string[] }; added_tokens: unknown[] };
      tj.model.vocab = Object.fromEntries(Object.entries(tj.model.vocab).filter(([, id]) => id < 256));
      tj.model.merges = [];
      tj.added_tokens = [];
      writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tj));
      return dir;
    };
    const st = (name: string) => {
      const f = SafetensorsFile.open(sharedPath("fixtures", "hf-golden", name, "model.safetensors"));
      return { get: (t: string) => f.readF32(t), close: () => f.close() };
    };
    const g = await exportTo(golden("gemma2"), "f32");
    const m = g.parsed.metadata as Record<string, unknown>;
    expect(m["general.architecture"]).toBe("gemma2");
    expect(m["gemma2.attn_logit_softcapping"]).toBe(5);
    expect(m["gemma2.final_logit_softcapping"]).toBe(3);
    expect(m["gemma2.attention.sliding_window"]).toBe(4);
    expect(Math.abs((m["realign.gguf.q_scale"] as number) - Math.sqrt(16 / 32))).toBeLessThan(1e-7);
    const w = st("gemma2");
    try {
      const norm = w.get("model.layers.0.post_feedforward_layernorm.weight");
      expect(f32At(tensorBytes(g, "blk.0.post_ffw_norm.weight"), 64)).toEqual(Float32Array.from(norm, (x) => x + 1));
      const q = w.get("model.layers.2.self_attn.q_proj.weight");
      expect(f32At(tensorBytes(g, "blk.2.attn_q.weight"), q.length)).toEqual(Float32Array.from(q, (x) => x * Math.sqrt(0.5)));
      const k = w.get("model.layers.2.self_attn.k_proj.weight");
      expect(f32At(tensorBytes(g, "blk.2.attn_k.weight"), k.length)).toEqual(k);
    } finally {
      w.close();
    }
    expect(g.parsed.tensorInfos.map((t) => t.name)).toContain("blk.1.post_attention_norm.weight");
    expect(g.parsed.tensorInfos.some((t) => t.name === "output.weight")).toBe(false);

    const l3 = await exportTo(golden("llama3_rope"), "f32");
    // numpy float32 over convert_hf_to_gguf's formula: theta 500000, head_dim 16, factor 8, low 1, high 4, original 8192
    expect(Array.from(f32At(tensorBytes(l3, "rope_freqs.weight"), 8))).toEqual([1, 1, 1, 1, Math.fround(2.6945300102233887), 8, 8, 8]);
    expect((l3.parsed.metadata as Record<string, unknown>)["llama.context_length"]).toBe(131072);

    const qw = await exportTo(golden("qwen2"), "f32");
    expect((qw.parsed.metadata as Record<string, unknown>)["general.architecture"]).toBe("qwen2");
    const w2 = st("qwen2");
    try {
      // NEOX rope in llama.cpp: q/k (and their biases) as HF stores them
      expect(f32At(tensorBytes(qw, "blk.0.attn_q.bias"), 64)).toEqual(w2.get("model.layers.0.self_attn.q_proj.bias"));
      expect(f32At(tensorBytes(qw, "blk.0.attn_k.weight"), 32 * 64)).toEqual(w2.get("model.layers.0.self_attn.k_proj.weight"));
    } finally {
      w2.close();
    }
    const mi = await exportTo(golden("mistral"), "f32");
    expect((mi.parsed.metadata as Record<string, unknown>)["llama.context_length"]).toBe(5);
    expect(mi.result.warnings.join(" ")).toContain("sliding-window");
  });
});
