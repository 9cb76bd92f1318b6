// Qwen3 and Gemma 3 (text) against a PyTorch float64 reference of transformers' modeling code
// (tests/fixtures/<arch>-tiny, written by scripts/fixtures/decoder_reference.py; no Hub or transformers
// install here, so not HF's own outputs): logits and every residual within 1e-4, a left-padded batch, greedy
// tokens exact with and without the KV cache. Qwen3: an RMSNorm over every query and key head before the
// rotary; Gemma 3: the same norms (1 + w) with Gemma 2's sandwich norms, sliding-window layers with their own
// rotary and global layers with linearly scaled rope. Also: the checkpoint check asks for the head norms, and
// the same weights read as the architecture without them (llama, gemma2) miss the reference by far.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { generateGreedy } from "../../engine/generate.ts";
import { writeSafetensors, SafetensorsFile } from "../../engine/safetensors.ts";
import type { DecoderConfig } from "../../engine/config.ts";
import { maxDiff, maxLogitDiff } from "../helpers/hf-golden.ts";

const ATOL = 1e-4;

type Matrix = number[][];
interface Expected {
  single: { input_ids: number[]; position_ids: number[]; logits: Matrix; residuals: Matrix[]; greedy: { new_tokens: number[]; step_logits: Matrix } }[];
  batch_left_padded: { input_ids: Matrix; attention_mask: Matrix; position_ids: Matrix; logits: Matrix[] };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

const work = mkdtempSync(join(tmpdir(), "realign-reference-architectures-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const CASES = [
  {
    name: "qwen3",
    config: (c: DecoderConfig) => {
      expect(c.headDim).toBe(32);
      expect(c.hiddenSize / c.numHeads).toBe(16);
      expect([c.qkNorm, c.localRope, c.slidingWindow]).toEqual([true, null, [null, null, null]]);
    },
    /** The same weights as the architecture without head norms. */
    without: "llama",
  },
  {
    name: "gemma3",
    config: (c: DecoderConfig) => {
      expect(c.qkNorm).toBe(true);
      expect(c.sandwichNorms).toBe(true);
      expect(c.slidingWindow).toEqual([4, null, 4, null]);
      expect([c.ropeTheta, c.ropeScaling]).toEqual([1e6, { type: "linear", factor: 4 }]);
      expect(c.localRope).toEqual({ theta: 10000, scaling: { type: "none" } });
      expect(c.attentionScale).toBeCloseTo(24 ** -0.5, 12);
    },
    without: "gemma2",
  },
] as const;

for (const arch of CASES) {
  const DIR = resolve(import.meta.dir, "..", "fixtures", `${arch.name}-tiny`);
  const expected = JSON.parse(readFileSync(join(DIR, "expected.json"), "utf8")) as Expected;

  describe(`${arch.name} against the PyTorch reference`, () => {
    let model: DecoderModel;
    beforeAll(async () => {
      model = await DecoderModel.load(DIR, { device: "cpu", cacheDir: join(work, "cache") });
    });
    afterAll(() => model?.close());

    test("the config as read", () => arch.config(model.config));

    test("each sequence alone: logits and the residual entering every layer and after the last", async () => {
      for (const s of expected.single) {
        const T = s.input_ids.length;
        const out = await model.forward({ inputIds: [s.input_ids], attentionMask: [s.input_ids.map(() => 1)], positionIds: [s.position_ids], logitPositions: [range(T)], residuals: true, noCache: true });
        expect(maxDiff(out.logits, s.logits)).toBeLessThan(ATOL);
        expect(s.residuals.length).toBe(model.config.numLayers + 1);
        s.residuals.forEach((r, l) => expect(maxDiff(out.residuals![l], r)).toBeLessThan(ATOL));
      }
    });

    test("left-padded batch: real positions match", async () => {
      const b = expected.batch_left_padded;
      const T = b.input_ids[0].length;
      const V = model.config.vocabSize;
      const out = await model.forward({ inputIds: b.input_ids, attentionMask: b.attention_mask, positionIds: b.position_ids, logitPositions: b.input_ids.map(() => range(T)), noCache: true });
      for (let row = 0; row < 2; row++) {
        expect(maxDiff(out.logits.subarray(row * T * V, (row + 1) * T * V), b.logits[row], (t) => b.attention_mask[row][t] === 1)).toBeLessThan(ATOL);
      }
    });

    test("greedy tokens exact, with and without the KV cache; step logits within 1e-4", async () => {
      for (const s of expected.single) {
        for (const useCache of [true, false]) {
          const r = await generateGreedy(model, [s.input_ids], { maxNewTokens: s.greedy.new_tokens.length, useCache, returnStepLogits: true });
          expect(r.newIds[0]).toEqual(s.greedy.new_tokens);
          s.greedy.step_logits.forEach((row, step) => expect(maxDiff(r.stepLogits![0][step], [row])).toBeLessThan(ATOL));
        }
      }
    });
  });

  describe(`${arch.name} checkpoints the engine must refuse or would get wrong`, () => {
    test("a missing k_norm is named before anything is built", async () => {
      const dir = join(work, `${arch.name}-no-k-norm`);
      mkdirSync(dir);
      copyFileSync(join(DIR, "config.json"), join(dir, "config.json"));
      const f = SafetensorsFile.open(join(DIR, "model.safetensors"));
      const drop = "model.layers.1.self_attn.k_norm.weight";
      writeSafetensors(join(dir, "model.safetensors"), f.names().filter((n) => n !== drop).map((n) => ({ ...f.info(n), data: f.readBytes(n) })));
      f.close();
      await expect(DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache") })).rejects.toThrow(/missing tensor "model.layers.1.self_attn.k_norm.weight"/);
    });

    test(`the same weights read as ${arch.without} are far from the reference: what differs matters here`, async () => {
      const dir = join(work, `${arch.name}-as-${arch.without}`);
      mkdirSync(dir);
      const cfg = JSON.parse(readFileSync(join(DIR, "config.json"), "utf8"));
      writeFileSync(join(dir, "config.json"), JSON.stringify({ ...cfg, model_type: arch.without }));
      copyFileSync(join(DIR, "model.safetensors"), join(dir, "model.safetensors"));
      const plain = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache") });
      try {
        expect(await maxLogitDiff(plain, expected.single)).toBeGreaterThan(100 * ATOL);
      } finally {
        await plain.close();
      }
    });
  });
}
