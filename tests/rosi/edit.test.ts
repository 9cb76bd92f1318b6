// The rank-one edit against the HF fixture (llama/edit): rewritten weights, their logits, and the
// same edit applied inside the graph at run time.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { generateGreedy } from "../../engine/generate.ts";
import { SafetensorsFile } from "../../engine/safetensors.ts";
import { readDecoderConfig } from "../../engine/architectures.ts";
import { editedMatrices, isCompleteEdit, writeEditedCheckpoint } from "../../rosi/edit.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

interface EditFixture {
  alpha: number;
  s: number[];
  edited_tensors: string[];
  single: { input_ids: number[]; logits: number[][]; greedy_new_tokens: number[] }[];
}

function maxDiff(a: Float32Array, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < b.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe.skipIf(!hasShared())("ROSI rank-one edit (hf-golden llama/edit)", () => {
  const src = sharedPath("fixtures", "hf-golden", "llama");
  let work = "";
  let fixture: EditFixture;
  let vectors: Map<string, Float32Array>;
  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), "realign-edit-"));
    fixture = JSON.parse(readFileSync(join(src, "edit", "expected-edit.json"), "utf8"));
    const v = new Float32Array(fixture.s.map((x) => x * fixture.alpha));
    vectors = new Map();
    const cfg = readDecoderConfig(JSON.parse(readFileSync(join(src, "config.json"), "utf8")));
    for (let l = 0; l < cfg.numLayers; l++) for (const n of editedMatrices(cfg, l)) vectors.set(n, v);
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  test("rewritten tensors match model-edited.safetensors; the rest are byte-identical", () => {
    const out = join(work, "edited");
    writeEditedCheckpoint(src, out, { vectors, metadata: { method: "rosi", alpha: String(fixture.alpha) } });
    expect(isCompleteEdit(out)).toBe(true);
    const mine = SafetensorsFile.open(join(out, "model.safetensors"));
    const ref = SafetensorsFile.open(join(src, "edit", "model-edited.safetensors"));
    const base = SafetensorsFile.open(join(src, "model.safetensors"));
    expect(mine.names().sort()).toEqual(ref.names().sort());
    expect([...vectors.keys()].sort()).toEqual([...fixture.edited_tensors].sort());
    for (const name of mine.names()) {
      if (vectors.has(name)) {
        expect(maxDiff(mine.readF32(name), ref.readF32(name))).toBeLessThan(1e-6);
        expect(maxDiff(mine.readF32(name), base.readF32(name))).toBeGreaterThan(1e-4);
      } else expect(Buffer.compare(Buffer.from(mine.readBytes(name)), Buffer.from(base.readBytes(name)))).toBe(0);
    }
    expect(mine.metadata.method).toBe("rosi");
    for (const f of [mine, ref, base]) f.close();
  });

  test("the edited checkpoint's logits and greedy tokens match the fixture", async () => {
    const out = join(work, "edited");
    const model = await DecoderModel.load(out, { device: "cpu", cacheDir: join(work, "cache") });
    for (const s of fixture.single) {
      const T = s.input_ids.length;
      const r = await model.forward({ inputIds: [s.input_ids], attentionMask: [s.input_ids.map(() => 1)], positionIds: [[...Array(T).keys()]], logitPositions: [[...Array(T).keys()]], noCache: true });
      expect(maxDiff(r.logits, s.logits.flat())).toBeLessThan(1e-4);
      const g = await generateGreedy(model, [s.input_ids], { maxNewTokens: s.greedy_new_tokens.length });
      expect(g.newIds[0]).toEqual(s.greedy_new_tokens);
    }
    await model.close();
  });

  test("in-graph injection (α·(w̄·x)·ŝ at run time) equals the rewritten weights", async () => {
    const model = await DecoderModel.load(src, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    const H = model.config.hiddenSize;
    const rows = new Float32Array(2 * model.config.numLayers * H);
    for (let r = 0; r < 2 * model.config.numLayers; r++) rows.set(vectors.get(editedMatrices(model.config, 0)[0])!, r * H);
    for (const s of fixture.single) {
      const T = s.input_ids.length;
      const feed = { inputIds: [s.input_ids], attentionMask: [s.input_ids.map(() => 1)], positionIds: [[...Array(T).keys()]], logitPositions: [[...Array(T).keys()]], noCache: true };
      const edited = await model.forward({ ...feed, rosiVectors: rows });
      expect(maxDiff(edited.logits, s.logits.flat())).toBeLessThan(1e-4);
      // Feeding nothing leaves the model unedited (the inputs default to zero).
      const plain = await model.forward(feed);
      expect(maxDiff(plain.logits, s.logits.flat())).toBeGreaterThan(1e-3);
    }
    await model.close();
  });

  test("a BF16 checkpoint stays BF16", () => {
    const bf = join(work, "bf16-src");
    mkdirSync(bf);
    copyFileSync(join(src, "config.json"), join(bf, "config.json"));
    copyFileSync(join(src, "model-bf16.safetensors"), join(bf, "model.safetensors"));
    const out = join(work, "bf16-edited");
    writeEditedCheckpoint(bf, out, { vectors, metadata: {} });
    const f = SafetensorsFile.open(join(out, "model.safetensors"));
    for (const n of f.names()) expect(f.info(n).dtype).toBe("BF16");
    f.close();
  });

  test("an edit interrupted mid-write leaves nothing that looks complete", () => {
    const out = join(work, "interrupted");
    expect(() =>
      writeEditedCheckpoint(src, out, {
        vectors,
        metadata: {},
        onTensor: (done) => {
          if (done === 5) throw new Error("simulated crash");
        },
      }),
    ).toThrow("simulated crash");
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(work).filter((f) => f.startsWith("interrupted"))).toEqual([]);
  });
});

describe.skipIf(!hasShared())("--include-embeddings (hf-golden llama, untied)", () => {
  const src = sharedPath("fixtures", "hf-golden", "llama");
  let work = "";
  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), "realign-embed-edit-"));
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  test("the rewritten embedding table equals the in-graph embedding edit; other tensors untouched", async () => {
    const fixture = JSON.parse(readFileSync(join(src, "edit", "expected-edit.json"), "utf8")) as EditFixture;
    const v = new Float32Array(fixture.s.map((x) => x * 2));
    const out = join(work, "edited");
    writeEditedCheckpoint(src, out, { vectors: new Map(), embedding: v, metadata: {} });
    // Independent check of E' = E + rowmean(E)·vᵀ in float64.
    const base = SafetensorsFile.open(join(src, "model.safetensors"));
    const mine = SafetensorsFile.open(join(out, "model.safetensors"));
    const E = base.readF32("model.embed_tokens.weight");
    const E2 = mine.readF32("model.embed_tokens.weight");
    let worst = 0;
    for (let t = 0; t < 256; t++) {
      let mean = 0;
      for (let h = 0; h < 64; h++) mean += E[t * 64 + h] / 64;
      for (let h = 0; h < 64; h++) worst = Math.max(worst, Math.abs(E2[t * 64 + h] - (E[t * 64 + h] + mean * v[h])));
    }
    expect(worst).toBeLessThan(1e-6);
    for (const n of base.names()) if (n !== "model.embed_tokens.weight") expect(Buffer.compare(Buffer.from(mine.readBytes(n)), Buffer.from(base.readBytes(n)))).toBe(0);
    base.close();
    mine.close();

    const edited = await DecoderModel.load(out, { device: "cpu", cacheDir: join(work, "cache") });
    const inGraph = await DecoderModel.load(src, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    const s = fixture.single[1];
    const T = s.input_ids.length;
    const feed = { inputIds: [s.input_ids], attentionMask: [s.input_ids.map(() => 1)], positionIds: [[...Array(T).keys()]], logitPositions: [[...Array(T).keys()]], noCache: true };
    const a = await edited.forward(feed);
    const b = await inGraph.forward({ ...feed, rosiEmbed: v });
    const plain = await inGraph.forward(feed);
    expect(maxDiff(a.logits, b.logits)).toBeLessThan(1e-4);
    expect(maxDiff(a.logits, plain.logits)).toBeGreaterThan(1e-3);
    await edited.close();
    await inGraph.close();
  });

  test("a tied checkpoint is refused with a clear error", () => {
    expect(() => writeEditedCheckpoint(sharedPath("fixtures", "hf-golden", "qwen2"), join(work, "tied"), { vectors: new Map(), embedding: new Float32Array(64), metadata: {} })).toThrow(/untied lm_head/);
    expect(existsSync(join(work, "tied"))).toBe(false);
  });
});
