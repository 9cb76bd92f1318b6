// The ROSI building blocks on synthetic data with known answers.
import { describe, expect, test } from "bun:test";
import { principalDirections, safetySubspace } from "../../rosi/directions.ts";
import { injectedAmount, minVarianceWeights, rosiRows, type CoefficientStats } from "../../rosi/spread.ts";
import { mulberry32 } from "../../evals/datasets.ts";

const H = 16;
function gaussian(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
}
const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((s, x, i) => s + x * b[i], 0);

describe("safety subspace (rank k)", () => {
  test("recovers the planted directions, orthonormal, signed along the mean difference", () => {
    const rand = mulberry32(1);
    const e = (i: number) => Float64Array.from({ length: H }, (_, h) => (h === i ? 1 : 0));
    const e1 = e(3);
    const e2 = e(7);
    // harmful = harmless + 4·e1 (+ spread 3 along e1, 1.5 along e2), small isotropic noise
    const harmless = Array.from({ length: 200 }, () => Float64Array.from({ length: H }, () => 0.05 * gaussian(rand)));
    const harmful = Array.from({ length: 200 }, () => {
      const a = 4 + 3 * gaussian(rand);
      const b = 1.5 * gaussian(rand);
      return Float64Array.from({ length: H }, (_, h) => a * e1[h] + b * e2[h] + 0.05 * gaussian(rand));
    });
    const { directions, scales } = safetySubspace(harmful, harmless, 2);
    expect(Math.abs(dot(directions[0], e1))).toBeGreaterThan(0.99);
    expect(dot(directions[0], e1)).toBeGreaterThan(0); // same sign as mean(harmful) − mean(harmless)
    expect(Math.abs(dot(directions[1], e2))).toBeGreaterThan(0.99);
    expect(Math.abs(dot(directions[0], directions[1]))).toBeLessThan(1e-6);
    expect(Math.abs(dot(directions[1], directions[1]) - 1)).toBeLessThan(1e-6);
    expect(scales[0]).toBeGreaterThan(scales[1]);
  });

  test("principal directions of data on a line are that line", () => {
    const rand = mulberry32(2);
    const u = Float64Array.from({ length: H }, (_, h) => (h % 2 ? 1 : -1) / 4);
    const xs = Array.from({ length: 50 }, () => {
      const g = gaussian(rand);
      return u.map((v) => v * g);
    });
    const [d] = principalDirections(xs, 1);
    expect(Math.abs(dot(d, u))).toBeGreaterThan(0.999);
  });
});

describe("minimum-variance spread (rosi-mv)", () => {
  // Two matrices: one with a steady coefficient, one noisy; plain ROSI adds them up.
  const stats: CoefficientStats = { mean: [-0.5, 0.2], cov: [0.01, 0, 0, 1.0], tokens: 1000 };

  test("weights give a mean injected amount of 1 with less variance than any other weighting", () => {
    const w = minVarianceWeights(stats, 0);
    const mv = injectedAmount(stats, w);
    expect(mv.mean).toBeCloseTo(1, 9);
    // Brute force: every weighting with mean 1 has at least this variance.
    for (let t = -3; t <= 3; t += 0.01) {
      const w2 = [(1 - 0.2 * t) / -0.5, t];
      expect(injectedAmount(stats, w2).std).toBeGreaterThanOrEqual(mv.std - 1e-12);
    }
    // Plain ROSI (all weights 1): mean −0.3 (wrong sign here), std ≈ 1.
    const plain = injectedAmount(stats, [1, 1]);
    expect(plain.mean).toBeCloseTo(-0.3, 9);
    expect(plain.std / Math.abs(plain.mean)).toBeGreaterThan(mv.std / mv.mean);
  });

  test("rosi_vectors rows are α·wₘ·ŝ", () => {
    const s = Float32Array.from([0.6, 0.8]);
    expect(Array.from(rosiRows(s, 2, [1, -0.5]))).toEqual([1.2000000476837158, 1.600000023841858, -0.6000000238418579, -0.800000011920929]);
  });
});
