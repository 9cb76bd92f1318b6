// The gated edit's key fit against an independent reference: the primal weighted ridge normal
// equations (XᵀDX + λI)·k = XᵀD·y solved by plain Gaussian elimination in float64.
import { describe, expect, test } from "bun:test";
import { mulberry32 } from "../../evals/datasets.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";
import { chooseGateFit, collectWriterSamples, GateFitCache, gram, pairwiseDots, REPLY, REPLY_POSITIONS, concatSamples, EARLIER, GATE_POSITION_CHOICES, rowsFor, selectRows, GATE_RIDGES, choleskySolve, fitGatedKeys, fitGatedKeysCached, gatedInterventions, gatedLayers, gateValues, GatedFitError, ridgeKeyDual, primalKey as primalKeyFromMoments, weightedMoments, type WriterSamples } from "../../rosi/gated.ts";

/** Seeded uniform(−1, 1) numbers. */
function rng(seed: number): () => number {
  const next = mulberry32(seed);
  return () => next() * 2 - 1;
}

function gauss(A: number[][], b: number[]): number[] {
  const n = b.length;
  const a = A.map((r, i) => [...r, b[i]]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    [a[c], a[p]] = [a[p], a[c]];
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = a[r][c] / a[c][c];
      for (let k = c; k <= n; k++) a[r][k] -= f * a[c][k];
    }
  }
  return a.map((r, i) => r[n] / r[i]);
}

/** Primal reference: argmin Σ wᵢ(k·xᵢ − yᵢ)² + λ‖k‖² with λ = ρ·Σ wᵢ‖xᵢ‖²/d. */
function primalKey(X: number[][], y: number[], w: number[], ridge: number): number[] {
  const d = X[0].length;
  const lambda = (ridge * X.reduce((s, x, i) => s + w[i] * x.reduce((t, v) => t + v * v, 0), 0)) / d;
  const A = Array.from({ length: d }, (_, r) => Array.from({ length: d }, (_, c) => X.reduce((s, x, i) => s + w[i] * x[r] * x[c], 0) + (r === c ? lambda : 0)));
  const b = Array.from({ length: d }, (_, r) => X.reduce((s, x, i) => s + w[i] * x[r] * y[i], 0));
  return gauss(A, b);
}

describe("gated edit: key fit", () => {
  for (const [n, d] of [[12, 7], [5, 9], [30, 30]] as const) {
    test(`dual ridge solution equals the primal normal equations (n ${n}, d ${d})`, () => {
      const r = rng(n * 100 + d);
      const X = Array.from({ length: n }, () => Array.from({ length: d }, r));
      const y = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 1 : 0));
      const w = Array.from({ length: n }, (_, i) => (y[i] ? 1 : 2.5 + (i % 2)));
      const sqrtW = Float64Array.from(w, Math.sqrt);
      const rhs = Float64Array.from(y, (v, i) => sqrtW[i] * v);
      for (const ridge of [0.01, 1, 10]) {
        const dual = ridgeKeyDual(Float32Array.from(X.flat()), n, d, sqrtW, rhs, ridge);
        const primal = primalKey(X.map((row) => row.map((v) => Math.fround(v))), y, w, ridge);
        for (let c = 0; c < d; c++) expect(dual[c]).toBeCloseTo(primal[c], 5);
      }
    });
  }

  test("choleskySolve solves a symmetric positive-definite system and refuses one that is not", () => {
    const r = rng(7);
    const n = 6;
    const B = Array.from({ length: n * n }, r);
    const A = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let k = 0; k < n; k++) A[i * n + j] += B[i * n + k] * B[j * n + k];
    for (let i = 0; i < n; i++) A[i * n + i] += 0.1;
    const b = Float64Array.from({ length: n }, r);
    const x = choleskySolve(A, n, b);
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let j = 0; j < n; j++) s += A[i * n + j] * x[j];
      expect(s).toBeCloseTo(b[i], 10);
    }
    expect(() => choleskySolve(Float64Array.from([1, 2, 2, 1]), 2, Float64Array.from([1, 1]))).toThrow(GatedFitError);
  });

  test("on inputs where harmful rows differ along a hidden axis, the gate is 1 on harmful and near 0 on harmless rows", () => {
    const r = rng(11);
    const layers = 3;
    const widths = [8, 12, 8, 12, 8, 12];
    const n = 200;
    const labels = Uint8Array.from({ length: n }, (_, i) => (i < 60 ? 1 : 0));
    // Each matrix's input: noise, plus a shift along its own fixed axis on harmful rows.
    const data = widths.map((d) => {
      const axis = Array.from({ length: d }, r);
      const X = new Float32Array(n * d);
      for (let i = 0; i < n; i++) for (let c = 0; c < d; c++) X[i * d + c] = 0.3 * r() + (labels[i] ? 2 * axis[c] : 0);
      return X;
    });
    const samples: WriterSamples = { labels, fromEnd: new Uint8Array(n), data, widths };
    const fit = fitGatedKeys(samples, { layers: [1, 2] });
    expect(fit.rows).toEqual([2, 3, 4, 5]);
    expect(fit.keys.map((k) => k.length)).toEqual([8, 12, 8, 12]);
    expect(fit.train.harmful.mean).toBeCloseTo(1, 10);
    expect(fit.train.harmful.n).toBe(60);
    expect(Math.abs(fit.train.harmless.mean)).toBeLessThan(0.1);
    // The stats are those of the keys themselves.
    const g = gateValues(samples, fit.rows, fit.keys);
    const harmlessMean = g.filter((_, i) => !labels[i]).reduce((a, b) => a + b, 0) / (n - 60);
    expect(harmlessMean).toBeCloseTo(fit.train.harmless.mean, 6);
    expect(fit.normalisation).toBeGreaterThan(0);
    expect(() => fitGatedKeys({ labels: new Uint8Array(n), fromEnd: new Uint8Array(n), data, widths }, { layers: [1] })).toThrow(GatedFitError);
    expect(() => fitGatedKeys(samples, { layers: [layers] })).toThrow(GatedFitError);
  });

  test("edited layers: from the direction's layer on, never layer 0 (unless the model has one layer)", () => {
    expect(gatedLayers(4, 1)).toEqual([1, 2, 3]);
    expect(gatedLayers(4, 0)).toEqual([1, 2, 3]);
    expect(gatedLayers(4, 3)).toEqual([3]);
    expect(gatedLayers(1, 0)).toEqual([0]);
  });

  test("run-time form: t·ŝ on the edited rows only, fitted keys there and the row means elsewhere", () => {
    const hidden = 3;
    const rowMeans = [0, 1, 2, 3].map((m) => Float32Array.from([m, m, m]));
    const fit = { rows: [2, 3], keys: [Float32Array.from([9, 9, 9]), Float32Array.from([8, 8, 8])] } as Parameters<typeof gatedInterventions>[0];
    const iv = gatedInterventions(fit, Float32Array.from([1, 0, -1]), 2, rowMeans);
    expect(Array.from(iv.rosiVectors)).toEqual([0, 0, 0, 0, 0, 0, 2, 0, -2, 2, 0, -2]);
    expect(iv.editKeys.map((k) => k[0])).toEqual([0, 1, 9, 8]);
    expect(iv.rosiVectors.length).toBe(4 * hidden);
  });

  test("held-out choice: every ridge × positions × harmless-row setting scored on prompts the fit never saw, best first; rows select and concatenate", () => {
    const r = rng(5);
    const widths = [6, 10, 6, 10];
    const axes = widths.map((d) => Array.from({ length: d }, r));
    // Harmful prompts: rows at fromEnd 1, 0; harmless prompts: (earlier, earlier, 1, 0).
    const make = (nh: number, nn: number) => {
      const labels = Uint8Array.from({ length: nh * 2 + nn * 4 }, (_, i) => (i < nh * 2 ? 1 : 0));
      const fromEnd = Uint8Array.from(labels, (y, i) => (y ? 1 - (i % 2) : [EARLIER, EARLIER, 1, 0][(i - nh * 2) % 4]));
      const data = widths.map((d, m) => Float32Array.from({ length: labels.length * d }, (_, k) => 0.5 * r() + (labels[Math.floor(k / d)] ? axes[m][k % d] : 0)));
      return { labels, fromEnd, data, widths } satisfies WriterSamples;
    };
    const fit = make(40, 40);
    const held = make(12, 12);
    const choices = chooseGateFit(fit, held, [1]);
    expect(choices.length).toBe(GATE_RIDGES.length * GATE_POSITION_CHOICES.length * 2);
    for (let i = 1; i < choices.length; i++) expect(choices[i - 1].score).toBeGreaterThanOrEqual(choices[i].score);
    // The score is what it says, recomputed from a refit of the winner without the shared Gram matrix.
    const best = choices[0];
    const f = fitGatedKeys(selectRows(fit, rowsFor(fit, best.positions, best.harmless_rows)), { layers: [1], ridge: best.ridge });
    const g = gateValues(held, f.rows, f.keys);
    const hm = g.filter((_, i) => held.labels[i] === 1 && held.fromEnd[i] === 0).reduce((a, b) => a + b, 0) / 12;
    const nms = g.filter((_, i) => held.labels[i] === 0).reduce((a, b) => a + b * b, 0) / 48;
    // Within float32 rounding of the keys (the choice sums float64 read-outs of each matrix's unit key).
    expect(Math.abs(best.score - (hm * hm) / nms)).toBeLessThan(1e-6 * best.score);
    expect(best.score).toBeGreaterThan(1);
    // Row sets: last token only; last two; last two plus the earlier harmless tokens.
    expect(selectRows(fit, rowsFor(fit, 1, "last")).labels.length).toBe(40 + 40);
    expect(selectRows(fit, rowsFor(fit, 2, "last")).labels.length).toBe(80 + 80);
    expect(selectRows(fit, rowsFor(fit, 2, "spread")).labels.length).toBe(80 + 160);
    const both = concatSamples(fit, held);
    expect(both.labels.length).toBe(fit.labels.length + held.labels.length);
    expect(Array.from(both.fromEnd.subarray(fit.labels.length))).toEqual(Array.from(held.fromEnd));
    expect(Array.from(both.data[1].subarray(fit.data[1].length, fit.data[1].length + 10))).toEqual(Array.from(held.data[1].subarray(0, 10)));
  });
});

test("pairwiseDots and gram equal plain dot products, for odd and even sizes (the 2 × 2 blocks and their edges)", () => {
  const rand = mulberry32(3);
  for (const [count, len] of [[1, 3], [2, 5], [5, 4], [6, 7], [9, 1]] as const) {
    const U = Float64Array.from({ length: count * len }, () => rand() * 2 - 1);
    const T = Float64Array.from({ length: count * len }, () => rand() * 2 - 1);
    const out = pairwiseDots(U, T, count, len);
    for (let a = 0; a < count; a++) {
      for (let c = 0; c < count; c++) {
        const [i, j] = a <= c ? [a, c] : [c, a];
        let s = 0;
        for (let k = 0; k < len; k++) s += U[i * len + k] * T[j * len + k];
        expect(out[a * count + c]).toBe(s);
      }
    }
    const X = Float32Array.from(T);
    const G = gram(X, count, len);
    for (let a = 0; a < count; a++) for (let c = 0; c < count; c++) {
      let s = 0;
      for (let k = 0; k < len; k++) s += X[a * len + k] * X[c * len + k];
      expect(G[a * count + c]).toBeCloseTo(s, 12);
    }
  }
});

test("chooseGateFit with one cache for several layer sets scores every setting as a fresh call does (a matrix's key does not depend on the others)", () => {
  const r = rng(9);
  // 120 columns: wider than some settings' rows (the dual path) and narrower than others (the primal one).
  const widths = [5, 120, 5, 120, 5, 120];
  const axes = widths.map((d) => Array.from({ length: d }, r));
  const make = (nh: number, nn: number): WriterSamples => {
    const labels = Uint8Array.from({ length: nh * 2 + nn * 4 }, (_, i) => (i < nh * 2 ? 1 : 0));
    const fromEnd = Uint8Array.from(labels, (y, i) => (y ? 1 - (i % 2) : [EARLIER, REPLY, 1, 0][(i - nh * 2) % 4]));
    const data = widths.map((d, m) => Float32Array.from({ length: labels.length * d }, (_, k) => 0.5 * r() + (labels[Math.floor(k / d)] ? axes[m][k % d] : 0)));
    return { labels, fromEnd, data, widths };
  };
  const fit = make(30, 30);
  const held = make(10, 10);
  const cache = new GateFitCache(fit);
  for (const layers of [[1, 2], [0, 1, 2], [2]]) {
    const shared = chooseGateFit(fit, held, layers, cache);
    const fresh = chooseGateFit(fit, held, layers);
    expect(shared.length).toBe(fresh.length);
    shared.forEach((c, i) => {
      expect([c.positions, c.harmless_rows, c.ridge]).toEqual([fresh[i].positions, fresh[i].harmless_rows, fresh[i].ridge]);
      expect(Math.abs(c.score - fresh[i].score)).toBeLessThan(1e-6 * fresh[i].score);
    });
  }
  expect(() => chooseGateFit(held, held, [1], cache)).toThrow(GatedFitError);
});

test("fitGatedKeysCached: nested layer sets sharing one cache get fitGatedKeys' keys on the selected rows, each matrix solved once per setting", () => {
  const r = rng(11);
  // 120 columns: the dual path for the narrow settings' rows, the primal one where the rows outnumber them.
  const widths = [5, 120, 5, 120, 5, 120, 5, 120];
  const axes = widths.map((d) => Array.from({ length: d }, r));
  const labels = Uint8Array.from({ length: 30 * 2 + 30 * 4 }, (_, i) => (i < 60 ? 1 : 0));
  const fromEnd = Uint8Array.from(labels, (y, i) => (y ? 1 - (i % 2) : [EARLIER, REPLY, 1, 0][(i - 60) % 4]));
  const data = widths.map((d, m) => Float32Array.from({ length: labels.length * d }, (_, k) => 0.5 * r() + (labels[Math.floor(k / d)] ? axes[m][k % d] : 0)));
  const rows: WriterSamples = { labels, fromEnd, data, widths };
  const cache = new GateFitCache(rows, false);
  // Count the requests and the solves: the cache calls `solve` only for a (matrix, setting, ridge) it has not seen.
  const solved = new Set<string>();
  let calls = 0;
  const solution = cache.solution.bind(cache);
  cache.solution = (m, setting, ridge, solve) => (calls++, solution(m, setting, ridge, () => (solved.add(`${m}|${setting}|${ridge}`), solve())));
  for (const [layers, positions, harmlessRows] of [[[1, 2, 3], 2, "spread"], [[2, 3], 2, "spread"], [[3], 1, "last"], [[2, 3], 1, "last"]] as const) {
    const cached = fitGatedKeysCached(cache, { layers: [...layers], positions, harmlessRows, ridge: 0.3 });
    const direct = fitGatedKeys(selectRows(rows, rowsFor(rows, positions, harmlessRows)), { layers: [...layers], positions, ridge: 0.3 });
    expect(cached.rows).toEqual(direct.rows);
    expect(cached.normalisation).toBeCloseTo(direct.normalisation, 4);
    cached.keys.forEach((k, j) => {
      let worst = 0;
      let scale = 0;
      for (let c = 0; c < k.length; c++) (worst = Math.max(worst, Math.abs(k[c] - direct.keys[j][c]))), (scale = Math.max(scale, Math.abs(direct.keys[j][c])));
      expect(worst).toBeLessThan(1e-5 * scale);
    });
  }
  // Setting 2|spread: matrices 2–7 solved, then 4–7 served from the cache; 1|last: 6–7 solved, then 4–5.
  expect(calls).toBe(6 + 4 + 2 + 4);
  expect(solved.size).toBe(6 + 4);
  expect(() => fitGatedKeysCached(new GateFitCache({ ...rows, labels: new Uint8Array(labels.length) }), { layers: [1], positions: 1, harmlessRows: "last", ridge: 1 })).toThrow(GatedFitError);
});

test("the primal ridge system (d × d) gives the dual's key (n × n), with weights, for rows fewer and more than the width", () => {
  const rand = mulberry32(7);
  for (const [n, d] of [[40, 8], [6, 10]] as const) {
    const X = Float32Array.from({ length: n * d }, () => rand() * 2 - 1);
    const weight = Float64Array.from({ length: n }, () => 0.5 + rand() * 4);
    const target = Float64Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 0.25 : 0));
    const sqrtW = weight.map(Math.sqrt);
    const rhs = Float64Array.from(target, (y, i) => sqrtW[i] * y);
    const { C, b, trace } = weightedMoments(X, n, d, weight, target);
    let expectTrace = 0;
    for (let i = 0; i < n; i++) for (let c = 0; c < d; c++) expectTrace += weight[i] * X[i * d + c] ** 2;
    expect(Math.abs(trace - expectTrace)).toBeLessThan(1e-9 * expectTrace);
    for (const ridge of [0.03, 1, 10]) {
      const dual = ridgeKeyDual(X, n, d, sqrtW, rhs, ridge);
      const primal = primalKeyFromMoments(C, b, trace, d, ridge);
      const scale = Math.max(...dual.map(Math.abs));
      for (let c = 0; c < d; c++) expect(Math.abs(primal[c] - dual[c])).toBeLessThan(1e-5 * scale);
    }
  }
});

describe.skipIf(!hasShared())("gated edit: writer samples of a real model (llama fixture)", () => {
  test("reply rows: teacher-forced reply tokens at REPLY_POSITIONS, label 0, equal to an unpadded forward's writer inputs; prompt rows unchanged by the reply after them", async () => {
    const dir = sharedPath("fixtures", "hf-golden", "llama");
    const work = mkdtempSync(join(tmpdir(), "realign-gated-rows-"));
    const model = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    try {
      const rand = mulberry32(11);
      const ids = (n: number) => Array.from({ length: n }, () => 1 + Math.floor(rand() * 250));
      // Different prompt and reply lengths, so that left padding moves every row; one reply shorter than the positions.
      const harmful = [{ ids: ids(9), reply: ids(23) }, { ids: ids(5) }];
      const harmless = [{ ids: ids(12), reply: ids(7) }, { ids: ids(6) }];
      const s = await collectWriterSamples(model, { harmful, harmless }, { positions: 2, earlier: 2, batchSize: 4 });
      const widths = model.writerWidths();
      // Expected rows, in order: per prompt its earlier harmless tokens, its last 2 tokens, then its reply rows.
      const expected: { seq: number[]; t: number; label: number; fromEnd: number }[] = [];
      for (const [label, set] of [[1, harmful], [0, harmless]] as const) {
        for (const p of set) {
          const seq = [...p.ids, ...(p.reply ?? [])];
          const len = p.ids.length;
          if (label === 0) for (const o of [...new Set([Math.floor(0.5 * (len - 2) / 2), Math.floor(1.5 * (len - 2) / 2)])]) expected.push({ seq, t: o, label, fromEnd: EARLIER });
          for (const t of [len - 2, len - 1]) expected.push({ seq, t, label, fromEnd: len - 1 - t });
          for (const r of REPLY_POSITIONS) if (r < (p.reply?.length ?? 0)) expected.push({ seq, t: len + r, label: 0, fromEnd: REPLY });
        }
      }
      expect(s.labels.length).toBe(expected.length);
      expect(expected.filter((e) => e.fromEnd === REPLY).length).toBe(REPLY_POSITIONS.length + REPLY_POSITIONS.filter((r) => r < 7).length);
      for (const [i, e] of expected.entries()) {
        expect(s.labels[i]).toBe(e.label);
        expect(s.fromEnd[i]).toBe(e.fromEnd);
        const one = await model.forward({ ...feedOne(e.seq), writerInputs: true });
        for (let m = 0; m < widths.length; m++) {
          const d = widths[m];
          const got = s.data[m].subarray(i * d, (i + 1) * d);
          const want = one.writerInputs![m].subarray(e.t * d, (e.t + 1) * d);
          let diff = 0;
          for (let c = 0; c < d; c++) diff = Math.max(diff, Math.abs(got[c] - want[c]));
          expect(diff).toBeLessThan(1e-4);
        }
      }
      // Without the replies, the prompt rows are the same (causal attention) and there are no reply rows.
      const bare = await collectWriterSamples(model, { harmful: harmful.map((p) => p.ids), harmless: harmless.map((p) => p.ids) }, { positions: 2, earlier: 2, batchSize: 4 });
      const promptRows = expected.map((e, i) => ({ e, i })).filter(({ e }) => e.fromEnd !== REPLY);
      expect(bare.labels.length).toBe(promptRows.length);
      promptRows.forEach(({ i }, j) => {
        const d = widths[1];
        const a = s.data[1].subarray(i * d, (i + 1) * d);
        const b = bare.data[1].subarray(j * d, (j + 1) * d);
        for (let c = 0; c < d; c++) expect(Math.abs(a[c] - b[c])).toBeLessThan(1e-4);
      });
    } finally {
      await model.close();
      rmSync(work, { recursive: true, force: true });
    }
  });
});

const feedOne = (ids: number[]) => ({ inputIds: [ids], attentionMask: [ids.map(() => 1)], positionIds: [ids.map((_, i) => i)], logitPositions: [[ids.length - 1]], noCache: true });
