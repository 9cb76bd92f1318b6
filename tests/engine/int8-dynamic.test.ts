// Fidelity of `--quantize int8-dynamic` (int8 weights per output channel in the DynamicQuantizeMatMul layout,
// MatMulInteger on int8 codes; activations quantised per token) against float32 on the trained organism-llama, on what the pipeline reads:
// - first-token distributions of harmless prompts without a system prompt: mean KL(float32 ‖ int8) ≤ 1e-3;
// - greedy replies of 64 tokens: float32's tokens, except after a step where float32's own top-1/top-2 logit
//   margin is below 0.05 (a near-tie any rounding can flip), and ≥ 90 % of all tokens before any parting;
// - refusal-direction candidates (mean harmful − mean harmless residual, safety prompt on, extract's
//   positions): cosine with float32's ≥ 0.999 for every candidate extract would score;
// - the candidate ranked first by the steering score (adding the candidate's diff at its layer, refusal
//   score of the first token on harmless prompts: extract's `induce`): the same as float32's.
// Plus the op itself: int8DynamicMatMul reproduces X · dequant(W)ᵀ within each row's quantisation bound, and a
// row's result does not depend on the rest of the batch. Cheap: 16 + 16 prompts for the means, 8 for KL and greedy.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { int8DynamicMatMul, OPSETS } from "../../engine/decoder.ts";
import { generateGreedy } from "../../engine/generate.ts";
import { DecoderModel, type ForwardInput } from "../../engine/model.ts";
import { mulberry32 } from "../../evals/datasets.ts";
import { OnnxGraph } from "../../engine/onnx/graph.ts";
import { OnnxDataType as DT } from "../../engine/onnx/schema.ts";
import { dequantizePerChannel, describeQuantization, parseQuantize, quantizePerChannel } from "../../engine/quantize.ts";
import { ort } from "../../engine/session.ts";
import { loadTokenizer, type ModelTokenizer } from "../../engine/tokenizer.ts";
import { candidates, positionCount, residualMeans, type Candidate } from "../../rosi/directions.ts";
import { encodeAll, firstTokenLogProbs, klDivergence, mean, refusalScore, refusalTokenIds } from "../../evals/measure.ts";
import { compareWithHF, type GoldenExpected } from "../helpers/hf-golden.ts";
import { hasShared, REPO_ROOT, sharedPath } from "../helpers/shared.ts";

const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function noise(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1;
  return Float32Array.from({ length: n }, () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) / 4294967296 - 0.5) * scale;
  });
}

describe("int8-dynamic layout", () => {
  test("parse and describe", () => {
    expect(parseQuantize("int8-dynamic")).toEqual({ scheme: "int8-dynamic" });
    expect(describeQuantization({ scheme: "int8-dynamic" })).toContain("int8-dynamic");
    expect(() => parseQuantize("int8-dynamic:32")).toThrow(/int8-dynamic/);
  });

  test("per-channel codes: transposed, symmetric, error ≤ scale/2", () => {
    const N = 7;
    const K = 33;
    const W = noise(N * K, 3, 0.2);
    W.fill(0, 2 * K, 3 * K); // an all-zero row
    const q = quantizePerChannel(W, N, K);
    const D = dequantizePerChannel(q);
    for (let n = 0; n < N; n++) {
      let amax = 0;
      for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(W[n * K + k]));
      for (let k = 0; k < K; k++) {
        expect(Math.abs(q.qweight[k * N + n])).toBeLessThanOrEqual(127);
        expect(Math.abs(D[n * K + k] - W[n * K + k])).toBeLessThanOrEqual(q.scales[n] / 2 + 1e-9);
      }
      if (amax > 0) expect(Math.max(...Array.from({ length: K }, (_, k) => Math.abs(q.qweight[k * N + n])))).toBe(127);
    }
    expect(Array.from({ length: K }, (_, k) => q.qweight[k * N + 2]).every((c) => c === 0)).toBe(true);
  });

  test("int8DynamicMatMul = X · dequant(W)ᵀ within each row's int8 step, and a row's result ignores the other rows", async () => {
    const N = 24;
    const K = 200;
    const q = quantizePerChannel(noise(N * K, 11, 0.1), N, K);
    const g = new OnnxGraph(null);
    g.input("x", DT.FLOAT, ["m", K]);
    int8DynamicMatMul(g, "x", g.initializer("b", DT.INT8, [K, N], bytes(q.qweight)), g.initializer("s", DT.FLOAT, [N], bytes(q.scales)), null, "mm");
    g.nodes[g.nodes.length - 1].output = ["y"];
    g.output("y", DT.FLOAT, ["m", N]);
    const session = await ort.InferenceSession.create(g.encode({ opsets: OPSETS }), { logSeverityLevel: 3 });
    const run = async (X: Float32Array, M: number) => (await session.run({ x: new ort.Tensor("float32", X, [M, K]) })).y.data as Float32Array;
    // rows of very different sizes, one of them all zeros
    const M = 4;
    const X = noise(M * K, 5);
    for (let k = 0; k < K; k++) X[K + k] *= 100;
    X.fill(0, 3 * K, 4 * K);
    const Y = await run(X, M);
    const D = dequantizePerChannel(q);
    for (let m = 0; m < M; m++) {
      let amax = 0;
      for (let k = 0; k < K; k++) amax = Math.max(amax, Math.abs(X[m * K + k]));
      const step = amax / 127;
      for (let n = 0; n < N; n++) {
        let acc = 0;
        let absW = 0;
        for (let k = 0; k < K; k++) {
          acc += X[m * K + k] * D[n * K + k];
          absW += Math.abs(D[n * K + k]);
        }
        // each x moves by at most step/2 (plus float32 rounding of the products)
        expect(Math.abs(acc - Y[m * N + n])).toBeLessThanOrEqual((step / 2) * absW * 1.001 + 1e-6 * amax);
        if (m === 3) expect(Y[m * N + n]).toBe(0);
      }
    }
    // row 0 alone gives bit-identical outputs: the large row 1 does not change its codes
    const alone = await run(X.slice(0, K), 1);
    expect(Array.from(alone)).toEqual(Array.from(Y.subarray(0, N)));
    await session.release();
  });
});

describe.skipIf(!hasShared())("int8-dynamic on hf-golden qwen2 (q/k/v biases, tied head)", () => {
  test("logits close to HF's, teacher-forced top-1 agrees", async () => {
    const dir = sharedPath("fixtures", "hf-golden", "qwen2");
    const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as GoldenExpected;
    const work = mkdtempSync(join(tmpdir(), "realign-i8dyn-qwen-"));
    const model = await DecoderModel.load(dir, { device: "cpu", cacheDir: work, quantize: { scheme: "int8-dynamic" } });
    // The prompt positions only (no teacher-forced continuation): top-1 against HF's argmax there.
    const { maxAbs, relRms, agree, total } = await compareWithHF(model, expected, 0);
    await model.close();
    rmSync(work, { recursive: true, force: true });
    console.log(`int8-dynamic vs HF (qwen2 fixture): max |Δlogit| ${maxAbs.toFixed(3)}, relative RMS ${(100 * relRms).toFixed(1)} %, top-1 ${agree}/${total}`);
    // Random N(0, 0.1) weights 64 wide are the worst case for int8 (quantize.test.ts: MatMulNBits int8, weights
    // only, gives 0.091 / 2.4 %). Measured here: 0.163, 3.7 %, 16/18; the bounds are ≈1.5× that.
    expect(maxAbs).toBeGreaterThan(0);
    expect(maxAbs).toBeLessThan(0.25);
    expect(relRms).toBeLessThan(0.055);
    expect(agree).toBeGreaterThanOrEqual(total - 3);
  });
});

describe.skipIf(!hasShared())("int8-dynamic fidelity on organism-llama", () => {
  const dir = sharedPath("models", "organism-llama");
  let work: string;
  let f32: DecoderModel;
  let i8: DecoderModel;
  let tok: ModelTokenizer;
  const lines = (file: string, n: number) =>
    readFileSync(file, "utf8")
      .trim()
      .split("\n")
      .slice(0, n)
      .map((l) => JSON.parse(l).prompt as string);

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "realign-i8dyn-"));
    tok = await loadTokenizer(dir);
    f32 = await DecoderModel.load(dir, { device: "cpu", interventions: true, cacheDir: work });
    i8 = await DecoderModel.load(dir, { device: "cpu", interventions: true, cacheDir: work, quantize: { scheme: "int8-dynamic" } });
  });
  afterAll(async () => {
    await f32?.close();
    await i8?.close();
    rmSync(work, { recursive: true, force: true });
  });

  test("the graph runs MatMulIntegerToFloat (u8·s8) for every projection and the lm_head", () => {
    expect(i8.quantization).toContain("int8-dynamic");
    const onnx = readFileSync(i8.graphPath);
    const count = (s: string) => onnx.toString("latin1").split(s).length - 1;
    // 5 projections per layer (fused qkv, o_proj, gate, up, down_proj) and the head, none of them MatMulNBits
    expect(count("MatMulIntegerToFloat")).toBe(5 * f32.config.numLayers + 1);
    expect(count("MatMulNBits")).toBe(0);
  });

  test("first-token KL on harmless prompts ≤ 1e-3; greedy 64 tokens agree up to float32's own near-ties", async () => {
    const prompts = encodeAll(tok, lines(sharedPath("models", "organism-llama", "eval", "harmless_eval.jsonl"), 8), null).map((e) => e.ids);
    const a = await firstTokenLogProbs(f32, prompts);
    const b = await firstTokenLogProbs(i8, prompts);
    const kls = a.map((p, i) => klDivergence(p, b[i]));
    console.log(`int8-dynamic first-token KL: mean ${mean(kls).toExponential(2)}, max ${Math.max(...kls).toExponential(2)}`);
    expect(mean(kls)).toBeLessThanOrEqual(1e-3);
    expect(mean(kls)).toBeGreaterThan(0); // the quantised graph really differs
    const opts = { maxNewTokens: 64, eosIds: [], padId: 0, returnStepLogits: true };
    const ga = await generateGreedy(f32, prompts, opts);
    const gb = await generateGreedy(i8, prompts, opts);
    // A row may part from float32's only where float32 itself nearly ties (top-1 − top-2 logit < NEAR_TIE): there
    // any rounding, int8 or a different float32 summation order, can pick the other token. Everywhere else the
    // tokens must be float32's.
    const NEAR_TIE = 0.1;
    let same = 0;
    let worstDelta = 0;
    const partings: string[] = [];
    for (let r = 0; r < prompts.length; r++) {
      const t = ga.newIds[r].findIndex((id, i) => id !== gb.newIds[r][i]);
      same += t < 0 ? 64 : t;
      // logit error along the shared prefix (same tokens so far, so the same inputs up to rounding)
      for (let s = 0; s <= (t < 0 ? 63 : t); s++) {
        const [x, y] = [ga.stepLogits![r][s], gb.stepLogits![r][s]];
        for (let i = 0; i < x.length; i++) worstDelta = Math.max(worstDelta, Math.abs(x[i] - y[i]));
      }
      if (t < 0) continue;
      const sorted = Float32Array.from(ga.stepLogits![r][t]).sort();
      const margin = sorted[sorted.length - 1] - sorted[sorted.length - 2];
      partings.push(`row ${r} at token ${t} (float32 margin ${margin.toFixed(4)})`);
      expect(margin).toBeLessThan(NEAR_TIE);
    }
    console.log(`int8-dynamic greedy: ${same}/${64 * prompts.length} tokens before any parting; ${partings.length ? partings.join(", ") : "no row parts"}; max |Δlogit| on shared prefixes ${worstDelta.toFixed(4)}`);
    expect(same).toBeGreaterThanOrEqual(0.9 * 64 * prompts.length);
    // measured 0.317 (496/512 tokens, one parting at a 0.075 margin); the bound is ≈1.5× that
    expect(worstDelta).toBeLessThan(0.5);
  });

  // The MLP's int8 path carries down_proj's input as x/s (s: the row scale of the MLP input, folded into down's own);
  // what the edit and the gate fit read must still be x itself.
  test("writer inputs and coefficients k·x of the int8 graph are float32's within int8 error, and each coefficient is its key · its writer input", async () => {
    const prompts = encodeAll(tok, lines(sharedPath("models", "organism-llama", "eval", "harmless_eval.jsonl"), 3), null).map((e) => e.ids);
    const T = Math.min(...prompts.map((p) => p.length));
    const ids = prompts.map((p) => p.slice(0, T));
    const rand = mulberry32(5);
    const keys = f32.writerWidths().map((w) => Float32Array.from({ length: w }, () => rand() - 0.5));
    const input: ForwardInput = {
      inputIds: ids,
      attentionMask: ids.map((r) => r.map(() => 1)),
      positionIds: ids.map((r) => r.map((_, t) => t)),
      logitPositions: ids.map(() => [T - 1]),
      noCache: true,
      writerInputs: true,
      coefficients: true,
      editKeys: keys,
    };
    const [a, b] = [await f32.forward(input), await i8.forward(input)];
    const M = keys.length;
    for (let m = 0; m < M; m++) {
      const width = keys[m].length;
      const xa = a.writerInputs![m];
      const xb = b.writerInputs![m];
      let err = 0;
      let ref = 0;
      for (let i = 0; i < xa.length; i++) {
        err += (xa[i] - xb[i]) ** 2;
        ref += xa[i] ** 2;
      }
      expect(Math.sqrt(err / ref)).toBeLessThan(0.05);
      for (let r = 0; r < ids.length * T; r++) {
        let dot = 0;
        for (let c = 0; c < width; c++) dot += keys[m][c] * xb[r * width + c];
        const coef = b.coefficients![r * M + m];
        expect(Math.abs(coef - dot)).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(dot)));
      }
    }
  });

  test("refusal-direction candidates: cosine ≥ 0.999, same steering-ranked candidate", async () => {
    const system = readFileSync(join(REPO_ROOT, "system-prompts", "policy.md"), "utf8");
    const harmful = encodeAll(tok, lines(sharedPath("models", "organism-llama", "splits", "harmful_train.jsonl"), 16), system);
    const harmless = encodeAll(tok, lines(sharedPath("models", "organism-llama", "splits", "harmless_train.jsonl"), 16), system);
    const P = positionCount([...harmful, ...harmless]);
    const L = f32.config.numLayers;
    const H = f32.config.hiddenSize;
    const cands = async (m: DecoderModel) => candidates(await residualMeans(m, harmful, P), await residualMeans(m, harmless, P), L);
    const [ca, cb] = [await cands(f32), await cands(i8)];
    // extract's rules: post-instruction positions, layers below 0.8·L, a real difference
    const scored = (c: Candidate) => c.position > 0 && c.layer < 0.8 * L && c.norm > 1e-6;
    let worst = 1;
    ca.forEach((c, i) => {
      if (!scored(c)) return;
      let dot = 0;
      for (let h = 0; h < H; h++) dot += c.diff[h] * cb[i].diff[h];
      worst = Math.min(worst, dot / (c.norm * cb[i].norm));
    });
    console.log(`int8-dynamic direction cosine: worst ${worst.toFixed(6)} over ${ca.filter(scored).length} candidates`);
    expect(worst).toBeGreaterThanOrEqual(0.999);

    const val = encodeAll(tok, lines(sharedPath("models", "organism-llama", "eval", "harmless_eval.jsonl"), 16).slice(8), null).map((e) => e.ids);
    const refusalIds = refusalTokenIds(tok);
    const rank = async (m: DecoderModel, cs: Candidate[]) => {
      const scores: { at: string; induce: number }[] = [];
      for (const c of cs.filter(scored)) {
        const steer = new Float32Array(L * H);
        steer.set(Float32Array.from(c.diff), c.layer * H);
        scores.push({ at: `L${c.layer}p${c.position}`, induce: mean((await firstTokenLogProbs(m, val, { steer })).map((lp) => refusalScore(lp, refusalIds))) });
      }
      return scores.sort((x, y) => y.induce - x.induce);
    };
    const [ra, rb] = [await rank(f32, ca), await rank(i8, cb)];
    console.log(`steering-ranked first: float32 ${ra[0].at} (${ra[0].induce.toFixed(3)}, next ${ra[1].induce.toFixed(3)}), int8-dynamic ${rb[0].at} (${rb[0].induce.toFixed(3)})`);
    expect(rb[0].at).toBe(ra[0].at);
  });
});
