import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Checkpoint, CheckpointError } from "../../engine/checkpoint.ts";
import { SafetensorsError, SafetensorsFile, writeSafetensors } from "../../engine/safetensors.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const MODELS = ["llama", "llama3_rope", "qwen2", "mistral", "gemma2"];
const golden = (...p: string[]): string => sharedPath("fixtures/hf-golden", ...p);

const root = mkdtempSync(join(tmpdir(), "realign-ckpt-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;
/** A fresh checkpoint dir; `config: null` leaves out config.json. */
function newDir(config: unknown = { model_type: "llama", eos_token_id: 2 }): string {
  const d = join(root, `c${counter++}`);
  mkdirSync(d);
  if (config !== null) writeFileSync(join(d, "config.json"), JSON.stringify(config));
  return d;
}
function tinyWeights(path: string, names: string[]): void {
  writeSafetensors(path, names.map((name, i) => ({ name, dtype: "F32" as const, shape: [1], data: new Uint8Array(new Float32Array([i]).buffer) })));
}
function openError(dir: string, opts?: { weights?: string }): Error {
  try {
    Checkpoint.open(dir, opts).close();
  } catch (e) {
    return e as Error;
  }
  throw new Error(`Checkpoint.open(${dir}) unexpectedly succeeded`);
}

/** Independent header parse of a fixture file: name -> absolute [begin, end). */
function fixtureOffsets(path: string): Map<string, [number, number]> {
  const raw = readFileSync(path);
  const n = Number(raw.readBigUInt64LE(0));
  const hdr = JSON.parse(raw.subarray(8, 8 + n).toString()) as Record<string, { data_offsets: [number, number] }>;
  const out = new Map<string, [number, number]>();
  for (const [k, v] of Object.entries(hdr)) if (k !== "__metadata__") out.set(k, [8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]]);
  return out;
}

interface Expected {
  single: Array<{ input_ids: number[]; hidden_states: number[][][] }>;
}

describe.skipIf(!hasShared())("hf-golden checkpoints", () => {
  for (const m of MODELS) {
    test(`${m}: single-file detection, tensor bytes, and embeddings vs HF hidden_states[0]`, () => {
      const dir = golden(m);
      const ck = Checkpoint.open(dir);
      try {
        // the dir also holds model-bf16.safetensors: auto-detection must pick model.safetensors only
        expect(ck.shards()).toEqual([join(dir, "model.safetensors")]);
        expect(ck.shardNames(join(dir, "model.safetensors"))).toEqual(ck.names());
        expect(ck.config.model_type).toBe(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")).model_type);
        expect(ck.generationConfig).toBeNull();
        // qwen2's config.json sets no eos_token_id (save_pretrained omits defaults)
        expect(ck.eosTokenIds()).toEqual(m === "gemma2" ? [1] : m === "qwen2" ? [] : [2]);
        expect(ck.has("lm_head.weight")).toBe(m !== "qwen2" && m !== "gemma2"); // tied models store no lm_head

        const raw = readFileSync(join(dir, "model.safetensors"));
        const offs = fixtureOffsets(join(dir, "model.safetensors"));
        expect(ck.names().sort()).toEqual([...offs.keys()].sort());
        for (const [name, [b, e]] of offs) {
          const info = ck.info(name);
          expect([info.byteOffset, info.byteOffset + info.byteLength, info.file]).toEqual([b, e, join(dir, "model.safetensors")]);
          expect(ck.readBytes(name)).toEqual(new Uint8Array(raw.subarray(b, e)));
        }

        // HF's hidden_states[0] is the embedding lookup (x sqrt(64) = 8 for Gemma2, exact in f32)
        const scale = m === "gemma2" ? 8 : 1;
        for (const [weights, file] of [["model.safetensors", "expected.json"], ["model-bf16.safetensors", "expected-bf16.json"]] as const) {
          const c = weights === "model.safetensors" ? ck : Checkpoint.open(dir, { weights });
          const exp = JSON.parse(readFileSync(join(dir, file), "utf8")) as Expected;
          const emb = c.readF32("model.embed_tokens.weight");
          expect(c.info("model.embed_tokens.weight").shape).toEqual([256, 64]);
          expect(c.info("model.embed_tokens.weight").dtype).toBe(weights === "model.safetensors" ? "F32" : "BF16");
          for (const s of exp.single) {
            s.input_ids.forEach((tok, t) => {
              const row = Array.from(emb.subarray(tok * 64, tok * 64 + 64), (x) => Math.fround(x * scale));
              // the JSON holds the shortest decimal that round-trips to float32
              expect(row).toEqual(s.hidden_states[0][t].map(Math.fround));
            });
          }
          if (c !== ck) c.close();
        }
      } finally {
        ck.close();
      }
    });
  }

  test("fingerprint: stable, sensitive to config and weights layout", () => {
    const a1 = Checkpoint.open(golden("llama"));
    const a2 = Checkpoint.open(golden("llama"));
    const mis = Checkpoint.open(golden("mistral")); // identical weights, different config
    const bf = Checkpoint.open(golden("llama"), { weights: "model-bf16.safetensors" });
    expect(a1.fingerprint()).toMatch(/^[0-9a-f]{64}$/);
    expect(a1.fingerprint()).toBe(a2.fingerprint());
    expect(mis.fingerprint()).not.toBe(a1.fingerprint());
    expect(bf.fingerprint()).not.toBe(a1.fingerprint());
    for (const c of [a1, a2, mis, bf]) c.close();
    // any change to config.json bytes changes it
    const d = newDir({ a: 1 });
    tinyWeights(join(d, "model.safetensors"), ["w"]);
    const before = Checkpoint.open(d);
    writeFileSync(join(d, "config.json"), JSON.stringify({ a: 1 }, null, 1));
    const after = Checkpoint.open(d);
    expect(after.fingerprint()).not.toBe(before.fingerprint());
    before.close();
    after.close();
  });

  test("sharded checkpoint (2 shards + index) reads the same tensors as the single file", () => {
    const src = SafetensorsFile.open(golden("llama", "model.safetensors"));
    const dir = newDir(JSON.parse(readFileSync(golden("llama", "config.json"), "utf8")));
    writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ eos_token_id: [7, 2, 7] }));
    const names = src.names();
    const half = Math.floor(names.length / 2);
    const parts = [names.slice(half), names.slice(0, half)]; // shard 1 gets the later tensors
    const weightMap: Record<string, string> = {};
    parts.forEach((part, i) => {
      const file = `model-0000${i + 1}-of-00002.safetensors`;
      writeSafetensors(join(dir, file), part.map((n) => ({ ...src.info(n), data: src.readBytes(n) })), { format: "pt" });
      for (const n of part) weightMap[n] = file;
    });
    const sorted: Record<string, string> = {};
    for (const n of Object.keys(weightMap).sort()) sorted[n] = weightMap[n];
    writeFileSync(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: 1 }, weight_map: sorted }));

    const ck = Checkpoint.open(dir);
    try {
      // first mention in the (sorted) weight_map: "lm_head.weight" lives in shard 2
      expect(ck.shards()).toEqual([join(dir, "model-00002-of-00002.safetensors"), join(dir, "model-00001-of-00002.safetensors")]);
      expect(ck.names()).toEqual(Object.keys(sorted));
      expect(ck.shardNames(join(dir, "model-00001-of-00002.safetensors")).sort()).toEqual(parts[0].slice().sort());
      expect(() => ck.shardNames(join(dir, "other.safetensors"))).toThrow(CheckpointError);
      for (const n of names) {
        expect(ck.readBytes(n)).toEqual(src.readBytes(n));
        expect(ck.readF32(n)).toEqual(src.readF32(n));
        expect(ck.info(n).file).toBe(join(dir, weightMap[n]));
      }
      expect(ck.eosTokenIds()).toEqual([7, 2]); // generation_config wins over config.json (2), deduplicated
      const single = Checkpoint.open(golden("llama"));
      expect(ck.fingerprint()).not.toBe(single.fingerprint());
      single.close();
      expect(() => ck.readBytes("missing.weight")).toThrow(/has no tensor named "missing.weight"/);
    } finally {
      ck.close();
      src.close();
    }
  });
});

describe("checkpoint detection and errors", () => {
  test("loose *.safetensors files are used when there is no model.safetensors or index", () => {
    const d = newDir();
    tinyWeights(join(d, "b.safetensors"), ["y"]);
    tinyWeights(join(d, "a.safetensors"), ["x", "w"]);
    const ck = Checkpoint.open(d);
    expect(ck.shards()).toEqual([join(d, "a.safetensors"), join(d, "b.safetensors")]);
    expect(ck.names()).toEqual(["w", "x", "y"]);
    expect([...ck.readF32("y")]).toEqual([0]);
    expect([...ck.readF32("x")]).toEqual([0]);
    expect([...ck.readF32("w")]).toEqual([1]);
    ck.close();
    tinyWeights(join(d, "c.safetensors"), ["x"]);
    expect(openError(d).message).toMatch(/tensor "x" appears in both .*a\.safetensors and .*c\.safetensors/);
  });

  test("eos_token_id falls back to config.json; absent gives []", () => {
    const d = newDir({ eos_token_id: [5, 6] });
    tinyWeights(join(d, "model.safetensors"), ["w"]);
    const ck = Checkpoint.open(d);
    expect(ck.eosTokenIds()).toEqual([5, 6]);
    ck.close();
    const d2 = newDir({});
    tinyWeights(join(d2, "model.safetensors"), ["w"]);
    writeFileSync(join(d2, "generation_config.json"), JSON.stringify({ do_sample: false }));
    const ck2 = Checkpoint.open(d2);
    expect(ck2.eosTokenIds()).toEqual([]);
    expect(ck2.generationConfig).toEqual({ do_sample: false });
    ck2.close();
    const d3 = newDir({ eos_token_id: "2" });
    tinyWeights(join(d3, "model.safetensors"), ["w"]);
    const ck3 = Checkpoint.open(d3);
    expect(() => ck3.eosTokenIds()).toThrow(/config\.json: eos_token_id "2" must be a non-negative integer/);
    ck3.close();
  });

  test.skipIf(!hasShared())("real model dirs with generation_config.json", () => {
    for (const m of ["stories260K", "organism-llama"]) {
      const dir = sharedPath("models", m);
      const ck = Checkpoint.open(dir);
      const gen = JSON.parse(readFileSync(join(dir, "generation_config.json"), "utf8")) as { eos_token_id: number };
      expect(ck.eosTokenIds()).toEqual([gen.eos_token_id]);
      expect(ck.shards()).toEqual([join(dir, "model.safetensors")]);
      expect(ck.names().length).toBeGreaterThan(0);
      ck.close();
    }
  });

  test("missing or invalid config.json", () => {
    const d = newDir(null);
    tinyWeights(join(d, "model.safetensors"), ["w"]);
    const e = openError(d);
    expect(e).toBeInstanceOf(CheckpointError);
    expect(e.message).toBe(`missing ${join(d, "config.json")}`);
    writeFileSync(join(d, "config.json"), "{ nope");
    expect(openError(d).message).toMatch(new RegExp(`${join(d, "config.json")} is not valid JSON`));
    writeFileSync(join(d, "config.json"), "[1]");
    expect(openError(d).message).toMatch(/config\.json must contain a JSON object/);
    writeFileSync(join(d, "config.json"), "{}");
    writeFileSync(join(d, "generation_config.json"), "{");
    expect(openError(d).message).toMatch(/generation_config\.json is not valid JSON/);
    expect(openError(join(d, "nope")).message).toMatch(/does not exist/);
  });

  test("pickle-only dir is refused; empty dir has no weights", () => {
    const d = newDir();
    writeFileSync(join(d, "pytorch_model.bin"), "not really a pickle");
    const e = openError(d);
    expect(e).toBeInstanceOf(CheckpointError);
    expect(e.message).toMatch(/only pickle-format weights \(pytorch_model\.bin\)/);
    expect(e.message).toMatch(/never unpickles/);
    expect(e.message).toMatch(/safetensors/);
    expect(openError(newDir()).message).toMatch(/^no safetensors weights in /);
  });

  test("index errors: missing shard, tensor not in its shard, path traversal", () => {
    const d = newDir();
    tinyWeights(join(d, "s1.safetensors"), ["a", "b"]);
    const index = (weight_map: Record<string, unknown>): void => writeFileSync(join(d, "model.safetensors.index.json"), JSON.stringify({ weight_map }));

    index({ a: "s1.safetensors", c: "s2.safetensors" });
    expect(openError(d).message).toMatch(/shard s2\.safetensors \(for tensor "c"\) is missing/);

    index({ a: "s1.safetensors", zz: "s1.safetensors" });
    expect(openError(d).message).toMatch(/tensor "zz" is mapped to s1\.safetensors, but that shard's header does not contain it/);

    mkdirSync(join(d, "sub"));
    tinyWeights(join(d, "sub", "x.safetensors"), ["a"]);
    tinyWeights(join(root, "outside.safetensors"), ["a"]);
    for (const bad of ["../outside.safetensors", "sub/x.safetensors", join(root, "outside.safetensors"), "..", "sub\\x.safetensors"]) {
      index({ a: bad });
      const e = openError(d);
      expect(e).toBeInstanceOf(CheckpointError);
      expect(e.message).toContain(`weight file name ${JSON.stringify(bad)} must be a plain file name inside the checkpoint directory`);
    }
    index({ a: 3 });
    expect(openError(d).message).toMatch(/shard for tensor "a" must be a file name string/);
    writeFileSync(join(d, "model.safetensors.index.json"), JSON.stringify({ weight_map: [] }));
    expect(openError(d).message).toMatch(/"weight_map" must be an object/);

    index({ a: "s1.safetensors" });
    const ck = Checkpoint.open(d);
    expect(ck.names()).toEqual(["a"]); // only what the index lists
    expect(ck.shardNames(join(d, "s1.safetensors"))).toEqual(["a"]);
    ck.close();
  });

  test("weights option", () => {
    const d = newDir();
    tinyWeights(join(d, "model.safetensors"), ["w"]);
    tinyWeights(join(d, "other.safetensors"), ["v"]);
    const ck = Checkpoint.open(d, { weights: "other.safetensors" });
    expect(ck.names()).toEqual(["v"]);
    ck.close();
    expect(openError(d, { weights: "../x.safetensors" }).message).toMatch(/must be a plain file name/);
    expect(openError(d, { weights: "nope.safetensors" }).message).toMatch(/nope\.safetensors does not exist/);
  });

  test("a corrupt weight file surfaces the safetensors error", () => {
    const d = newDir();
    writeFileSync(join(d, "model.safetensors"), "short");
    const e = openError(d);
    expect(e).toBeInstanceOf(SafetensorsError);
    expect(e.message).toContain(join(d, "model.safetensors"));
  });
});
