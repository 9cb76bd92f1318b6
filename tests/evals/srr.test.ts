// SRR (evals/srr.ts): the listwise loss's hand-written gradients against central finite differences,
// training on synthetic lists where "good" is a hidden direction (the scorer must find it; held-out
// lists ranked well above chance), the logistic probe on the same lists, the srr.safetensors round
// trip and its refusals, and on organism-llama: last-token states equal a single-sequence forward,
// and rankWithSrr reads the layer it was trained for.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Rng } from "../../engine/sampling.ts";
import { DecoderModel } from "../../engine/model.ts";
import { argmaxOf, informative, lastTokenStates, listLossAndGrad, loadSrr, probeScores, rankWithSrr, saveSrr, srrScores, targetOf, trainProbe, trainSrr, type SrrList } from "../../evals/srr.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-srr-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

function gauss(rng: Rng): number {
  return Math.sqrt(-2 * Math.log(Math.max(rng.nextFloat(), 1e-300))) * Math.cos(2 * Math.PI * rng.nextFloat());
}
const randVec = (n: number, rng: Rng, scale = 1) => Float64Array.from({ length: n }, () => gauss(rng) * scale);

/** Lists whose good candidates lie along a hidden direction u (plus noise), bad ones along −u; the instruction says nothing. */
function syntheticLists(n: number, hidden: number, seed: number, u: Float64Array): SrrList[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => {
    const base = randVec(hidden, rng);
    const good = Array.from({ length: 6 }, (_, i) => i % 3 === 0);
    const cands = good.map((g) => Float32Array.from(base, (b, h) => b * 0.5 + (g ? 1 : -1) * u[h]! * 1.5 + gauss(rng)));
    return { inst: Float32Array.from(base), cands, good };
  });
}

describe("SRR scorer", () => {
  test("gradients of KL(t ‖ softmax(cos/τ)) match central finite differences", () => {
    const rng = new Rng(3);
    const dim = 4;
    const hidden = 6;
    const P = { A: randVec(dim * hidden, rng, 0.5), B: randVec(dim * hidden, rng, 0.5), a: randVec(dim, rng, 0.5), b: randVec(dim, rng, 0.5) };
    const xq = randVec(hidden, rng);
    const xs = [randVec(hidden, rng), randVec(hidden, rng), randVec(hidden, rng)];
    const t = targetOf([true, false, true]);
    const G = { A: new Float64Array(P.A.length), B: new Float64Array(P.B.length), a: new Float64Array(dim), b: new Float64Array(dim) };
    listLossAndGrad(P, dim, hidden, 0.3, xq, xs, t, G);
    const h = 1e-6;
    for (const k of ["A", "B", "a", "b"] as const) {
      const W = P[k];
      for (let i = 0; i < W.length; i++) {
        const w0 = W[i]!;
        W[i] = w0 + h;
        const up = listLossAndGrad(P, dim, hidden, 0.3, xq, xs, t, null);
        W[i] = w0 - h;
        const down = listLossAndGrad(P, dim, hidden, 0.3, xq, xs, t, null);
        W[i] = w0;
        expect(Math.abs((up - down) / (2 * h) - G[k][i]!)).toBeLessThan(1e-6);
      }
    }
  });

  test("learns a hidden 'good' direction: held-out top-1 accuracy far above chance, like the probe; deterministic per seed", () => {
    const hidden = 16;
    const u = randVec(hidden, new Rng(9));
    const norm = Math.hypot(...u);
    u.forEach((x, i) => (u[i] = x / norm));
    const train = syntheticLists(120, hidden, 1, u);
    const test = syntheticLists(80, hidden, 2, u);
    expect(train.every(informative)).toBe(true);
    const s = trainSrr(train, { layer: 1, dim: 8, epochs: 150, lr: 0.02, seed: 4 });
    const acc = (score: (l: SrrList) => number[]) => test.filter((l) => l.good[argmaxOf(score(l))]).length / test.length;
    const srrAcc = acc((l) => srrScores(s, l.inst, l.cands));
    expect(srrAcc).toBeGreaterThan(0.85); // chance: 2/6
    const probe = trainProbe(train, { epochs: 200 });
    expect(acc((l) => probeScores(probe, l.inst, l.cands))).toBeGreaterThan(0.9);
    const again = trainSrr(train, { layer: 1, dim: 8, epochs: 150, lr: 0.02, seed: 4 });
    expect(again.A).toEqual(s.A);
  });

  test("srr.safetensors round trip; files that are not a scorer are refused by name", () => {
    const hidden = 8;
    const u = randVec(hidden, new Rng(5));
    const s = trainSrr(syntheticLists(10, hidden, 6, u), { layer: 2, dim: 4, epochs: 5, seed: 1 });
    const path = join(TMP, "srr.safetensors");
    saveSrr(path, { ...s, metadata: { ...s.metadata, model: "test" } });
    const back = loadSrr(path);
    expect(back.layer).toBe(2);
    expect(back.tau).toBe(s.tau);
    expect(back.A).toEqual(s.A);
    expect(back.std).toEqual(s.std);
    expect(back.metadata.model).toBe("test");
    const l = syntheticLists(1, hidden, 7, u)[0]!;
    expect(srrScores(back, l.inst, l.cands)).toEqual(srrScores(s, l.inst, l.cands));
    writeFileSync(join(TMP, "junk.safetensors"), "not safetensors");
    expect(() => loadSrr(join(TMP, "junk.safetensors"))).toThrow("cannot be read as an SRR scorer");
    expect(() => trainSrr([{ inst: new Float32Array(2), cands: [new Float32Array(2)], good: [true] }], { layer: 0 })).toThrow("at least one good and one bad");
  });
});

describe.skipIf(!hasShared())("SRR features on organism-llama", () => {
  let model: DecoderModel;
  let cacheDir = "";
  beforeAll(async () => {
    cacheDir = mkdtempSync(join(tmpdir(), "realign-srr-cache-"));
    model = await DecoderModel.load(sharedPath("models", "organism-llama"), { device: "cpu", cacheDir });
  });
  afterAll(async () => {
    await model?.close();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  test("last-token states of a padded batch equal each sequence's own forward pass", async () => {
    const seqs = [[4094, 292, 198, 947, 654, 332], [4094, 292, 198, 947], [4094, 292, 198, 947, 654, 332, 294, 653, 294, 925]];
    const states = await lastTokenStates(model, seqs, 2);
    const H = model.config.hiddenSize;
    for (let s = 0; s < seqs.length; s++) {
      const T = seqs[s]!.length;
      const r = await model.forward({ inputIds: [seqs[s]!], attentionMask: [seqs[s]!.map(() => 1)], positionIds: [seqs[s]!.map((_, i) => i)], logitPositions: [[T - 1]], residuals: true, noCache: true });
      for (let l = 0; l <= model.config.numLayers; l++) {
        const own = r.residuals![l]!.subarray((T - 1) * H, T * H);
        let worst = 0;
        for (let h = 0; h < H; h++) worst = Math.max(worst, Math.abs(own[h]! - states[l]![s]![h]!));
        expect(worst).toBeLessThan(1e-4);
      }
    }
  });

  test("rankWithSrr scores candidates at the scorer's layer and refuses a scorer of another width", async () => {
    const H = model.config.hiddenSize;
    const rng = new Rng(1);
    const lists: SrrList[] = [{ inst: Float32Array.from(randVec(H, rng)), cands: [Float32Array.from(randVec(H, rng)), Float32Array.from(randVec(H, rng))], good: [true, false] }];
    const s = trainSrr(lists, { layer: 2, dim: 4, epochs: 2 });
    const prompt = [4094, 292, 198, 947, 654, 4095, 198, 4094, 298, 198];
    const cands = [[345, 0, 362, 4095], [40, 716, 4095]];
    const scores = await rankWithSrr(model, s, prompt, cands);
    const states = await lastTokenStates(model, [prompt, ...cands.map((c) => [...prompt, ...c])]);
    expect(scores).toEqual(srrScores(s, states[2]![0]!, states[2]!.slice(1)));
    await expect(rankWithSrr(model, { ...s, hidden: 7 }, prompt, cands)).rejects.toThrow("hidden states of width 7");
  });
});
