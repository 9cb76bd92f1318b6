// Rank-one edits with a chosen key (W' = W + v·kᵀ) at run time (ForwardInput.editKeys) against independent
// references: the plain graph, HF's edited llama (llama/edit), a checkpoint rewritten with those keys and loaded
// without interventions, a float64 recomputation of w̄ and of the writers' inputs from HF's hidden states.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel, type ForwardInput } from "../../engine/model.ts";
import { generateGreedy } from "../../engine/generate.ts";
import { SafetensorsFile } from "../../engine/safetensors.ts";
import { allResidualWriters } from "../../engine/writers.ts";
import type { ModelTokenizer } from "../../engine/tokenizer.ts";
import { mulberry32 } from "../../evals/datasets.ts";
import { firstTokenLogProbs, generateTexts } from "../../evals/measure.ts";
import { writeEditedCheckpoint } from "../../rosi/edit.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const ATOL = 1e-4;
const FIXTURES = ["llama", "qwen2", "gemma2"] as const;
type Matrix = number[][];
interface Expected {
  single: { input_ids: number[]; position_ids: number[]; logits: Matrix; hidden_states: Matrix[] }[];
  batch_left_padded: { input_ids: Matrix; attention_mask: Matrix; position_ids: Matrix };
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const feed = (ids: number[]): ForwardInput => ({ inputIds: [ids], attentionMask: [ids.map(() => 1)], positionIds: [range(ids.length)], logitPositions: [range(ids.length)], noCache: true });
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};

function gaussian(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
}
const randomVector = (rand: () => number, n: number, std: number) => Float32Array.from({ length: n }, () => std * gaussian(rand));

/** w̄ of every writer, straight from the safetensors file in float64 (independent of the engine's meanOfRows). */
function referenceMeans(dir: string, names: string[]): Float32Array[] {
  const f = SafetensorsFile.open(join(dir, "model.safetensors"));
  try {
    return names.map((n) => {
      const [rows, cols] = f.info(n).shape;
      const W = f.readF32(n);
      const out = new Float32Array(cols);
      for (let c = 0; c < cols; c++) {
        let s = 0;
        for (let r = 0; r < rows; r++) s += W[r * cols + c];
        out[c] = s / rows;
      }
      return out;
    });
  } finally {
    f.close();
  }
}

/** Random keys (std 0.1, like a weight row) and vectors (norm `norm`), one per writer. */
function randomEdit(model: DecoderModel, seed: number, norm: number): { keys: Float32Array[]; vectors: Float32Array[]; rows: Float32Array } {
  const rand = mulberry32(seed);
  const H = model.config.hiddenSize;
  const keys = model.writerWidths().map((w) => randomVector(rand, w, 0.1));
  const vectors = keys.map(() => {
    const v = randomVector(rand, H, 1);
    const n = Math.hypot(...v);
    return v.map((x) => (x * norm) / n);
  });
  const rows = new Float32Array(vectors.length * H);
  vectors.forEach((v, m) => rows.set(v, m * H));
  return { keys, vectors, rows };
}

let work = "";
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "realign-edit-keys-"));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

for (const name of FIXTURES) {
  describe.skipIf(!hasShared())(`edit keys: ${name}`, () => {
    const dir = sharedPath("fixtures", "hf-golden", name);
    let expected: Expected;
    let plain: DecoderModel;
    let iv: DecoderModel;
    beforeAll(async () => {
      expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8"));
      plain = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache") });
      iv = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    });
    afterAll(async () => {
      await plain?.close();
      await iv?.close();
    });

    test("(a) no keys and no vectors, or zero keys with any vectors: the logits of the plain graph", async () => {
      const { rows } = randomEdit(iv, 1, 1);
      const zeros = iv.writerWidths().map((w) => new Float32Array(w));
      for (const s of expected.single) {
        const ref = (await plain.forward(feed(s.input_ids))).logits;
        expect(maxDiff(ref, s.logits.flat())).toBeLessThan(ATOL); // the plain graph is HF's model
        expect(maxDiff((await iv.forward(feed(s.input_ids))).logits, ref)).toBeLessThan(1e-6);
        const zeroKeyed = await iv.forward({ ...feed(s.input_ids), rosiVectors: rows, editKeys: zeros, coefficients: true });
        expect(maxDiff(zeroKeyed.logits, ref)).toBeLessThan(1e-6);
        expect(zeroKeyed.coefficients!.every((c) => c === 0)).toBe(true);
        // The same vectors with the default key w̄ do move the logits: the zero key is what switched them off.
        expect(maxDiff((await iv.forward({ ...feed(s.input_ids), rosiVectors: rows })).logits, ref)).toBeGreaterThan(1e-2);
      }
    });

    test("(b) editKeys = w̄ (writerRowMeans) is the default w̄ edit; writerRowMeans matches a float64 recomputation", async () => {
      const names = allResidualWriters(iv.config).map((w) => w.name);
      const means = iv.writerRowMeans();
      expect(means.length).toBe(2 * iv.config.numLayers);
      expect(iv.writerRowMeans()).toBe(means); // cached
      const ref = referenceMeans(dir, names);
      means.forEach((m, i) => {
        expect(m.length).toBe(iv.writerWidths()[i]);
        expect(maxDiff(m, ref[i])).toBeLessThan(1e-8);
      });
      expect(iv.writerWidths()).toEqual(allResidualWriters(iv.config).map((_, i) => (i % 2 === 0 ? iv.config.numHeads * iv.config.headDim : iv.config.intermediateSize)));
      const { rows } = randomEdit(iv, 2, 1);
      for (const s of expected.single) {
        const byDefault = await iv.forward({ ...feed(s.input_ids), rosiVectors: rows, coefficients: true });
        const keyed = await iv.forward({ ...feed(s.input_ids), rosiVectors: rows, editKeys: ref, coefficients: true });
        expect(maxDiff(keyed.logits, byDefault.logits)).toBeLessThan(1e-6);
        expect(maxDiff(keyed.coefficients!, byDefault.coefficients!)).toBeLessThan(1e-6);
      }
    });

    test("(c) random keys and vectors at run time == the checkpoint rewritten with them, loaded without interventions", async () => {
      const { keys, vectors, rows } = randomEdit(iv, 3, 1);
      const names = allResidualWriters(iv.config).map((w) => w.name);
      const out = join(work, `${name}-keyed`);
      writeEditedCheckpoint(dir, out, { vectors: new Map(names.map((n, m) => [n, vectors[m]])), keys: new Map(names.map((n, m) => [n, keys[m]])), metadata: {} });
      const edited = await DecoderModel.load(out, { device: "cpu", cacheDir: join(work, "cache") });
      try {
        let effect = 0;
        for (const s of expected.single) {
          const written = (await edited.forward(feed(s.input_ids))).logits;
          const runTime = (await iv.forward({ ...feed(s.input_ids), rosiVectors: rows, editKeys: keys })).logits;
          expect(maxDiff(runTime, written)).toBeLessThan(ATOL);
          effect = Math.max(effect, maxDiff(written, s.logits.flat()));
          // The keys matter: with w̄ keys the same vectors give other logits.
          expect(maxDiff((await iv.forward({ ...feed(s.input_ids), rosiVectors: rows })).logits, written)).toBeGreaterThan(1e-2);
        }
        console.log(`${name}: keyed edit moves the logits by up to ${effect.toFixed(3)}`);
        expect(effect).toBeGreaterThan(5e-2);

        // Left-padded batch, compared on real positions.
        const bp = expected.batch_left_padded;
        const batch = { inputIds: bp.input_ids, attentionMask: bp.attention_mask, positionIds: bp.position_ids, logitPositions: bp.input_ids.map((r) => range(r.length)), noCache: true };
        const a = (await edited.forward(batch)).logits;
        const b = (await iv.forward({ ...batch, rosiVectors: rows, editKeys: keys })).logits;
        const V = iv.config.vocabSize;
        let worst = 0;
        bp.attention_mask.forEach((mask, r) =>
          mask.forEach((m, t) => {
            if (m) worst = Math.max(worst, maxDiff(a.subarray((r * mask.length + t) * V, (r * mask.length + t + 1) * V), b.subarray((r * mask.length + t) * V, (r * mask.length + t + 1) * V)));
          }),
        );
        expect(worst).toBeLessThan(ATOL);

        // Every forward pass of KV-cached generation carries the keys: same tokens and step logits as the written weights.
        const prompts = expected.single.map((s) => s.input_ids);
        const gw = await generateGreedy(edited, prompts, { maxNewTokens: 6, returnStepLogits: true });
        const gr = await generateGreedy(iv, prompts, { maxNewTokens: 6, returnStepLogits: true, rosiVectors: rows, editKeys: keys });
        expect(gr.newIds).toEqual(gw.newIds);
        gw.stepLogits!.forEach((steps, r) => steps.forEach((l, k) => expect(maxDiff(gr.stepLogits![r][k], l)).toBeLessThan(ATOL)));
        // Without the keys the decode would drift to the w̄ edit.
        const gDefault = await generateGreedy(iv, prompts, { maxNewTokens: 6, returnStepLogits: true, rosiVectors: rows });
        expect(maxDiff(gDefault.stepLogits![1].at(-1)!, gw.stepLogits![1].at(-1)!)).toBeGreaterThan(1e-2);

        // evals/measure.ts passes them through too.
        const lpWritten = await firstTokenLogProbs(edited, prompts);
        const lpRunTime = await firstTokenLogProbs(iv, prompts, { rosiVectors: rows, editKeys: keys });
        lpWritten.forEach((lp, i) => expect(maxDiff(lpRunTime[i], lp)).toBeLessThan(ATOL));
        const tok = { eosIds: [], padId: 0, decode: (ids: number[]) => ids.join(" ") } as unknown as ModelTokenizer;
        const tw = await generateTexts(edited, tok, prompts, { maxNewTokens: 6 });
        const tr = await generateTexts(iv, tok, prompts, { maxNewTokens: 6, rosiVectors: rows, editKeys: keys });
        expect(tr.texts).toEqual(tw.texts);
        expect(tw.texts).toEqual(gw.newIds.map((ids) => ids.join(" ")));
      } finally {
        await edited.close();
      }
    });

    test("(d) coefficients are x·key of the writer inputs", async () => {
      const { keys } = randomEdit(iv, 4, 1);
      const means = referenceMeans(dir, allResidualWriters(iv.config).map((w) => w.name));
      const widths = iv.writerWidths();
      const M = widths.length;
      for (const s of expected.single) {
        const T = s.input_ids.length;
        for (const k of [undefined, keys]) {
          const r = await iv.forward({ ...feed(s.input_ids), editKeys: k, writerInputs: true, coefficients: true });
          expect(r.writerInputs!.length).toBe(M);
          expect(r.coefficients!.length).toBe(T * M);
          for (let m = 0; m < M; m++) {
            const x = r.writerInputs![m];
            expect(x.length).toBe(T * widths[m]);
            const key = (k ?? means)[m];
            for (let t = 0; t < T; t++) {
              let dot = 0;
              let scale = 0;
              for (let c = 0; c < widths[m]; c++) {
                dot += x[t * widths[m] + c] * key[c];
                scale += Math.abs(x[t * widths[m] + c] * key[c]);
              }
              expect(Math.abs(r.coefficients![t * M + m] - dot)).toBeLessThan(1e-5 * scale + 1e-7);
            }
          }
        }
      }
    });

    test("(e) wrong keys are refused with a clear error", async () => {
      const widths = iv.writerWidths();
      const ids = expected.single[0].input_ids;
      const good = widths.map((w) => new Float32Array(w));
      await expect(iv.forward({ ...feed(ids), editKeys: good.slice(1) })).rejects.toThrow(`editKeys must hold ${widths.length} keys`);
      const short = good.map((k, m) => (m === 3 ? new Float32Array(widths[3] - 1) : k));
      await expect(iv.forward({ ...feed(ids), editKeys: short })).rejects.toThrow(`editKeys[3] (layer 1 down_proj) must be a Float32Array of ${widths[3]} entries`);
      const swapped = good.map((k, m) => (m === 0 ? new Float32Array(widths[1]) : k));
      await expect(iv.forward({ ...feed(ids), editKeys: swapped })).rejects.toThrow(`editKeys[0] (layer 0 o_proj) must be a Float32Array of ${widths[0]} entries`);
      await expect(plain.forward({ ...feed(ids), editKeys: good })).rejects.toThrow(/editKeys needs interventions.*load it with \{ interventions: true \}/);
      await expect(plain.forward({ ...feed(ids), writerInputs: true })).rejects.toThrow(/writerInputs needs interventions/);
    });
  });
}

/** Float64 Llama layer from HF's residual entering it: the o_proj input (heads' context) and the down_proj input. */
function llamaWriterInputs(dir: string, h: Matrix, layer: number): { attn: Float64Array[]; mlp: Float64Array[]; out: Float64Array[] } {
  const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  const H: number = cfg.hidden_size;
  const nH: number = cfg.num_attention_heads;
  const nKV: number = cfg.num_key_value_heads;
  const D = H / nH;
  const I: number = cfg.intermediate_size;
  const eps: number = cfg.rms_norm_eps;
  const f = SafetensorsFile.open(join(dir, "model.safetensors"));
  const w = (n: string) => Float64Array.from(f.readF32(`model.layers.${layer}.${n}`));
  const [Wq, Wk, Wv, Wo, Wg, Wu, Wd, n1, n2] = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"].map(w);
  f.close();
  const norm = (x: ArrayLike<number>, g: Float64Array) => {
    let ss = 0;
    for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
    const inv = 1 / Math.sqrt(ss / x.length + eps);
    return Float64Array.from({ length: x.length }, (_, i) => x[i] * inv * g[i]);
  };
  const linear = (x: Float64Array, W: Float64Array, out: number) =>
    Float64Array.from({ length: out }, (_, o) => {
      let s = 0;
      for (let i = 0; i < x.length; i++) s += W[o * x.length + i] * x[i];
      return s;
    });
  const rope = (x: Float64Array, heads: number, pos: number) => {
    const y = new Float64Array(x.length);
    for (let hd = 0; hd < heads; hd++) {
      for (let i = 0; i < D; i++) {
        const freq = pos / Math.pow(cfg.rope_theta, (2 * (i % (D / 2))) / D);
        const rot = i < D / 2 ? -x[hd * D + i + D / 2] : x[hd * D + i - D / 2];
        y[hd * D + i] = x[hd * D + i] * Math.cos(freq) + rot * Math.sin(freq);
      }
    }
    return y;
  };
  const T = h.length;
  const xs = h.map((row) => norm(row, n1));
  const q = xs.map((x, t) => rope(linear(x, Wq, nH * D), nH, t));
  const k = xs.map((x, t) => rope(linear(x, Wk, nKV * D), nKV, t));
  const v = xs.map((x) => linear(x, Wv, nKV * D));
  const attn = range(T).map((i) => {
    const ctx = new Float64Array(nH * D);
    for (let hd = 0; hd < nH; hd++) {
      const kv = Math.floor(hd / (nH / nKV));
      const scores = range(i + 1).map((j) => {
        let s = 0;
        for (let d = 0; d < D; d++) s += q[i][hd * D + d] * k[j][kv * D + d];
        return s / Math.sqrt(D);
      });
      const mx = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - mx));
      const z = e.reduce((a, b) => a + b, 0);
      for (let j = 0; j <= i; j++) for (let d = 0; d < D; d++) ctx[hd * D + d] += (e[j] / z) * v[j][kv * D + d];
    }
    return ctx;
  });
  const mid = h.map((row, t) => {
    const o = linear(attn[t], Wo, H);
    return Float64Array.from(row, (x, i) => x + o[i]);
  });
  const mlp = mid.map((x) => {
    const m = norm(x, n2);
    const g = linear(m, Wg, I);
    const u = linear(m, Wu, I);
    return Float64Array.from(g, (gi, i) => (gi / (1 + Math.exp(-gi))) * u[i]);
  });
  const out = mid.map((x, t) => {
    const d = linear(mlp[t], Wd, H);
    return Float64Array.from(x, (xi, i) => xi + d[i]);
  });
  return { attn, mlp, out };
}

describe.skipIf(!hasShared())("edit keys: llama writer inputs and the HF edit fixture", () => {
  const dir = sharedPath("fixtures", "hf-golden", "llama");

  test("(d) writerInputs equal a float64 recomputation of every o_proj / down_proj input from HF's hidden states", async () => {
    const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as Expected;
    const model = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    try {
      const { numLayers } = model.config;
      const widths = model.writerWidths();
      for (const s of expected.single) {
        const r = await model.forward({ ...feed(s.input_ids), writerInputs: true });
        for (let l = 0; l < numLayers; l++) {
          const ref = llamaWriterInputs(dir, s.hidden_states[l], l);
          // The reference itself reproduces HF's next hidden state (the last one is after the final norm: skipped).
          if (l + 1 < numLayers) expect(maxDiff(ref.out.flatMap((x) => [...x]), s.hidden_states[l + 1].flat())).toBeLessThan(ATOL);
          expect(maxDiff(r.writerInputs![2 * l], ref.attn.flatMap((x) => [...x]))).toBeLessThan(ATOL);
          expect(maxDiff(r.writerInputs![2 * l + 1], ref.mlp.flatMap((x) => [...x]))).toBeLessThan(ATOL);
          expect(r.writerInputs![2 * l + 1].length).toBe(s.input_ids.length * widths[2 * l + 1]);
        }
      }
    } finally {
      await model.close();
    }
  });

  test("writerInputs at chosen positions are those tokens' rows of the every-token read-out, per batch row; bad positions are refused", async () => {
    const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as Expected;
    const model = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    try {
      const widths = model.writerWidths();
      const ids = expected.single[0].input_ids;
      const T = ids.length;
      // Two rows (the second one token shorter, left-padded), three positions each, in any order, one repeated.
      const second = ids.slice(1);
      const batch: ForwardInput = {
        inputIds: [ids, [0, ...second]],
        attentionMask: [ids.map(() => 1), [0, ...second.map(() => 1)]],
        positionIds: [range(T), [0, ...range(T - 1)]],
        logitPositions: [[T - 1], [T - 1]],
        noCache: true,
      };
      const positions = [
        [T - 1, 0, 2],
        [1, T - 1, T - 1],
      ];
      const all = await model.forward({ ...batch, writerInputs: true });
      const some = await model.forward({ ...batch, writerInputs: positions });
      for (let m = 0; m < widths.length; m++) {
        const d = widths[m];
        expect(some.writerInputs![m].length).toBe(2 * 3 * d);
        positions.forEach((row, b) =>
          row.forEach((t, j) => {
            const want = all.writerInputs![m].subarray((b * T + t) * d, (b * T + t + 1) * d);
            expect(maxDiff(some.writerInputs![m].subarray((b * 3 + j) * d, (b * 3 + j + 1) * d), want)).toBe(0);
          }),
        );
      }
      // Without writerInputs nothing is returned, and the logits do not depend on what was read.
      const none = await model.forward(batch);
      expect(none.writerInputs).toBeUndefined();
      expect(maxDiff(none.logits, some.logits)).toBe(0);
      await expect(model.forward({ ...batch, writerInputs: [[0, 1], [0]] })).rejects.toThrow(/same number of positions/);
      await expect(model.forward({ ...batch, writerInputs: [[0], [T]] })).rejects.toThrow(/outside the/);
      await expect(model.forward({ ...batch, writerInputs: [[0]] })).rejects.toThrow(/1 rows of positions for a batch of 2/);
    } finally {
      await model.close();
    }
  });

  test("(b) editKeys = w̄ with rosiVectors = α·s reproduces HF's edited model (llama/edit)", async () => {
    const fx = JSON.parse(readFileSync(join(dir, "edit", "expected-edit.json"), "utf8")) as { alpha: number; s: number[]; single: { input_ids: number[]; logits: Matrix }[] };
    const base = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as Expected;
    const model = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    try {
      const H = model.config.hiddenSize;
      const rows = new Float32Array(2 * model.config.numLayers * H);
      for (let r = 0; r < 2 * model.config.numLayers; r++) for (let i = 0; i < H; i++) rows[r * H + i] = fx.alpha * fx.s[i];
      const means = model.writerRowMeans();
      for (const [i, s] of fx.single.entries()) {
        const keyed = await model.forward({ ...feed(s.input_ids), rosiVectors: rows, editKeys: means });
        expect(maxDiff(keyed.logits, s.logits.flat())).toBeLessThan(ATOL);
        expect(maxDiff(keyed.logits, base.single[i].logits.flat())).toBeGreaterThan(1e-2); // the edit is visible
      }
    } finally {
      await model.close();
    }
  });
});

describe.skipIf(!hasShared())("edit keys: float16 and int8 graphs (hf-golden llama)", () => {
  const dir = sharedPath("fixtures", "hf-golden", "llama");

  test("float16: the keyed run-time edit moves the logits as in float32 (BF16 weights)", async () => {
    const half = await DecoderModel.load(dir, { device: "cpu", dtype: "float16", weights: "model-bf16.safetensors", interventions: true, cacheDir: join(work, "cache") });
    const full = await DecoderModel.load(dir, { device: "cpu", weights: "model-bf16.safetensors", interventions: true, cacheDir: join(work, "cache") });
    try {
      const { keys, rows } = randomEdit(full, 5, 2);
      const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as Expected;
      for (const s of expected.single) {
        const f = await full.forward({ ...feed(s.input_ids), rosiVectors: rows, editKeys: keys, coefficients: true });
        const h = await half.forward({ ...feed(s.input_ids), rosiVectors: rows, editKeys: keys, coefficients: true });
        const fPlain = (await full.forward(feed(s.input_ids))).logits;
        const effect = maxDiff(f.logits, fPlain);
        const err = maxDiff(h.logits, f.logits);
        expect(effect).toBeGreaterThan(0.2);
        expect(err).toBeLessThan(2e-2);
        expect(maxDiff(h.coefficients!, f.coefficients!)).toBeLessThan(2e-2 * Math.max(...f.coefficients!.map(Math.abs)));
      }
    } finally {
      await half.close();
      await full.close();
    }
  });

  test("int8 (MatMulNBits): the keyed run-time edit's effect matches float32's within 5 %", async () => {
    const quant = await DecoderModel.load(dir, { device: "cpu", interventions: true, quantize: { bits: 8, blockSize: 32, accuracyLevel: 0 }, cacheDir: join(work, "cache") });
    const full = await DecoderModel.load(dir, { device: "cpu", interventions: true, cacheDir: join(work, "cache") });
    try {
      const { keys, rows } = randomEdit(full, 6, 1);
      const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as Expected;
      for (const s of expected.single) {
        const effect = async (m: DecoderModel) => {
          const e = (await m.forward({ ...feed(s.input_ids), rosiVectors: rows, editKeys: keys })).logits;
          const p = (await m.forward(feed(s.input_ids))).logits;
          return e.map((x, i) => x - p[i]);
        };
        const want = await effect(full);
        const got = await effect(quant);
        const size = Math.max(...want.map(Math.abs));
        expect(size).toBeGreaterThan(5e-2);
        expect(maxDiff(got, want)).toBeLessThan(0.05 * size);
      }
    } finally {
      await quant.close();
      await full.close();
    }
  });
});
