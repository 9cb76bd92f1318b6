// The engine against Hugging Face transformers' own outputs (../shared/fixtures/hf-golden):
// logits and every hidden state within 1e-4, greedy tokens exact, with and without the KV cache.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { generateGreedy } from "../../engine/generate.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";
import { maxDiff } from "../helpers/hf-golden.ts";

const ATOL = 1e-4;
const MODELS = ["llama", "llama3_rope", "qwen2", "mistral", "gemma2"] as const;

type Matrix = number[][];
interface Expected {
  single: { input_ids: number[]; position_ids: number[]; logits: Matrix; hidden_states: Matrix[]; generate: GenerateExpected }[];
  batch_left_padded: { input_ids: Matrix; attention_mask: Matrix; position_ids: Matrix; logits: Matrix[]; hidden_states: Matrix[][]; generate: GenerateExpected & { new_tokens: Matrix } };
  strided_positions: { input_ids: number[]; position_ids: number[]; logits?: Matrix; hidden_states?: Matrix[]; error?: string }[];
}
interface GenerateExpected {
  new_tokens: number[] | Matrix;
  step_logits: Matrix | Matrix[];
  new_tokens_use_cache_false: number[] | Matrix;
  step_logits_use_cache_false: Matrix | Matrix[];
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** HF's last hidden state is after the final norm; the engine exposes the pre-norm residual. */
function finalNorm(model: DecoderModel, residual: Float32Array): Float32Array {
  const { hiddenSize, rmsNormEps, normAddsOne } = model.config;
  const w = model.checkpoint.readF32("model.norm.weight");
  const out = new Float32Array(residual.length);
  for (let t = 0; t < residual.length / hiddenSize; t++) {
    let ss = 0;
    for (let h = 0; h < hiddenSize; h++) ss += residual[t * hiddenSize + h] ** 2;
    const inv = 1 / Math.sqrt(ss / hiddenSize + rmsNormEps);
    for (let h = 0; h < hiddenSize; h++) out[t * hiddenSize + h] = residual[t * hiddenSize + h] * inv * (normAddsOne ? 1 + w[h] : w[h]);
  }
  return out;
}

let cacheDir = "";
beforeAll(() => {
  cacheDir = mkdtempSync(join(tmpdir(), "realign-golden-"));
});
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

for (const name of MODELS) {
  describe.skipIf(!hasShared())(`hf-golden ${name}`, () => {
    const dir = sharedPath("fixtures", "hf-golden", name);
    let model: DecoderModel;
    let expected: Expected;
    beforeAll(async () => {
      expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8"));
      model = await DecoderModel.load(dir, { device: "cpu", cacheDir });
    });
    afterAll(() => model?.close());

    const checkForward = async (ids: number[], positions: number[], logits: Matrix, hidden: Matrix[]) => {
      const T = ids.length;
      const out = await model.forward({ inputIds: [ids], attentionMask: [ids.map(() => 1)], positionIds: [positions], logitPositions: [range(T)], residuals: true, noCache: true });
      expect(maxDiff(out.logits, logits)).toBeLessThan(ATOL);
      const L = model.config.numLayers;
      expect(hidden.length).toBe(L + 1);
      for (let l = 0; l < L; l++) expect(maxDiff(out.residuals![l], hidden[l])).toBeLessThan(ATOL);
      expect(maxDiff(finalNorm(model, out.residuals![L]), hidden[L])).toBeLessThan(ATOL);
    };

    test("each sequence alone: logits and every hidden state", async () => {
      for (const s of expected.single) await checkForward(s.input_ids, s.position_ids, s.logits, s.hidden_states);
    });

    test("strided position ids (large RoPE angles)", async () => {
      for (const s of expected.strided_positions) {
        if (s.error) continue; // Qwen2 in transformers 4.44.2 cannot run this case (see fixture README).
        await checkForward(s.input_ids, s.position_ids, s.logits!, s.hidden_states!);
      }
    });

    test("left-padded batch: real positions match", async () => {
      const b = expected.batch_left_padded;
      const T = b.input_ids[0].length;
      const out = await model.forward({ inputIds: b.input_ids, attentionMask: b.attention_mask, positionIds: b.position_ids, logitPositions: b.input_ids.map(() => range(T)), residuals: true, noCache: true });
      const V = model.config.vocabSize;
      const H = model.config.hiddenSize;
      for (let row = 0; row < 2; row++) {
        const real = (t: number) => b.attention_mask[row][t] === 1;
        expect(maxDiff(out.logits.subarray(row * T * V, (row + 1) * T * V), b.logits[row], real)).toBeLessThan(ATOL);
        for (let l = 0; l < model.config.numLayers; l++) {
          expect(maxDiff(out.residuals![l].subarray(row * T * H, (row + 1) * T * H), b.hidden_states[l][row], real)).toBeLessThan(ATOL);
        }
      }
    });

    test("greedy tokens exact, with and without the KV cache; step logits within 1e-4", async () => {
      for (const s of expected.single) {
        const g = s.generate;
        for (const useCache of [true, false]) {
          const r = await generateGreedy(model, [s.input_ids], { maxNewTokens: 8, useCache, returnStepLogits: true });
          expect(r.newIds[0]).toEqual((useCache ? g.new_tokens : g.new_tokens_use_cache_false) as number[]);
          const ref = (useCache ? g.step_logits : g.step_logits_use_cache_false) as Matrix;
          ref.forEach((row, step) => expect(maxDiff(r.stepLogits![0][step], [row])).toBeLessThan(ATOL));
        }
      }
    });

    test("batched greedy with left padding", async () => {
      const g = expected.batch_left_padded.generate;
      const prompts = expected.single.map((s) => s.input_ids);
      for (const useCache of [true, false]) {
        const r = await generateGreedy(model, prompts, { maxNewTokens: 8, useCache, padId: 0, returnStepLogits: true });
        expect(r.newIds).toEqual(g.new_tokens_use_cache_false as Matrix);
        // HF 4.44.2's own cached batched Gemma2 is off (fixture README); its uncached logits are the reference.
        const ref = g.step_logits_use_cache_false as Matrix[];
        for (let row = 0; row < 2; row++) ref[row].forEach((logits, step) => expect(maxDiff(r.stepLogits![row][step], [logits])).toBeLessThan(ATOL));
      }
    });

    test("bf16 weights (upcast on load) match expected-bf16.json", async () => {
      const bf16 = JSON.parse(readFileSync(join(dir, "expected-bf16.json"), "utf8")) as Expected;
      const m16 = await DecoderModel.load(dir, { device: "cpu", cacheDir, weights: "model-bf16.safetensors" });
      try {
        for (const s of bf16.single) {
          const T = s.input_ids.length;
          const out = await m16.forward({ inputIds: [s.input_ids], attentionMask: [s.input_ids.map(() => 1)], positionIds: [s.position_ids], logitPositions: [range(T)], noCache: true });
          expect(maxDiff(out.logits, s.logits)).toBeLessThan(ATOL);
          const r = await generateGreedy(m16, [s.input_ids], { maxNewTokens: 8 });
          expect(r.newIds[0]).toEqual(s.generate.new_tokens as number[]);
        }
      } finally {
        await m16.close();
      }
    });
  });
}
