// How the injected direction is spread over the edited matrices.
//
// Each edited matrix m adds (w̄ₘ·x)·vₘ to the residual stream. Plain ROSI uses vₘ = α·ŝ for every m, so
// the total amount along ŝ is α·Σₘ cₘ(x) with cₘ = w̄ₘ·x — an input-dependent scale that can be small,
// negative, or wildly different from prompt to prompt. The minimum-variance spread ("rosi-mv") keeps
// every edit rank-one (vₘ = α·wₘ·ŝ) but picks the weights w so that Σₘ wₘ·cₘ(x) has mean 1 and the
// smallest variance over the model's own activations: w = Σ⁻¹μ / (μᵀΣ⁻¹μ), with μ and Σ the mean and
// covariance of c over real prompt tokens. The edit then behaves as closely to adding the constant α·ŝ
// as a weight edit of these matrices can.
import type { DecoderModel } from "../engine/model.ts";
import { leftPad } from "../engine/generate.ts";

export type SpreadMethod = "rosi" | "rosi-mv";

export interface CoefficientStats {
  mean: number[];
  /** Row-major [M, M] covariance. */
  cov: number[];
  tokens: number;
}

/** Mean and covariance of every edited matrix's coefficient w̄·x over all real tokens of the prompts. */
export async function coefficientStats(model: DecoderModel, prompts: number[][], batchSize = 16): Promise<CoefficientStats> {
  const M = 2 * model.config.numLayers;
  const sum = new Float64Array(M);
  const outer = new Float64Array(M * M);
  let n = 0;
  for (let i = 0; i < prompts.length; i += batchSize) {
    const chunk = prompts.slice(i, i + batchSize);
    const batch = leftPad(chunk, 0);
    const T = batch.inputIds[0].length;
    const r = await model.forward({ ...batch, logitPositions: chunk.map(() => [T - 1]), coefficients: true, noCache: true });
    const c = r.coefficients!;
    for (let b = 0; b < chunk.length; b++) {
      for (let t = 0; t < T; t++) {
        if (batch.attentionMask[b][t] === 0) continue;
        const base = (b * T + t) * M;
        for (let j = 0; j < M; j++) {
          const cj = c[base + j];
          sum[j] += cj;
          for (let k = 0; k < M; k++) outer[j * M + k] += cj * c[base + k];
        }
        n++;
      }
    }
  }
  const mean = Array.from(sum, (x) => x / n);
  const cov = Array.from(outer, (x, idx) => x / n - mean[Math.floor(idx / M)] * mean[idx % M]);
  return { mean, cov, tokens: n };
}

/** Solves A·x = b (A symmetric positive definite after the ridge) by Gaussian elimination with pivoting. */
function solve(A: number[], b: number[]): number[] {
  const n = b.length;
  const a = A.slice();
  const x = b.slice();
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(a[r * n + col]) > Math.abs(a[pivot * n + col])) pivot = r;
    if (pivot !== col) {
      for (let k = 0; k < n; k++) [a[col * n + k], a[pivot * n + k]] = [a[pivot * n + k], a[col * n + k]];
      [x[col], x[pivot]] = [x[pivot], x[col]];
    }
    const d = a[col * n + col];
    if (Math.abs(d) < 1e-300) throw new Error("singular coefficient covariance");
    for (let r = col + 1; r < n; r++) {
      const f = a[r * n + col] / d;
      if (f === 0) continue;
      for (let k = col; k < n; k++) a[r * n + k] -= f * a[col * n + k];
      x[r] -= f * x[col];
    }
  }
  for (let r = n - 1; r >= 0; r--) {
    let s = x[r];
    for (let k = r + 1; k < n; k++) s -= a[r * n + k] * x[k];
    x[r] = s / a[r * n + r];
  }
  return x;
}

/** w = (Σ + λI)⁻¹μ / (μᵀ(Σ + λI)⁻¹μ): E[w·c] = 1 with minimum variance; λ keeps tiny-variance matrices from dominating. */
export function minVarianceWeights(stats: CoefficientStats, ridge = 1e-3): number[] {
  const M = stats.mean.length;
  const trace = Array.from({ length: M }, (_, i) => stats.cov[i * M + i]).reduce((a, b) => a + b, 0);
  const lambda = (ridge * trace) / M + 1e-12;
  const A = stats.cov.map((v, idx) => (Math.floor(idx / M) === idx % M ? v + lambda : v));
  const y = solve(A, stats.mean);
  const denom = stats.mean.reduce((acc, m, i) => acc + m * y[i], 0);
  return y.map((v) => v / denom);
}

/** Mean and standard deviation of Σₘ wₘ·cₘ under the stats (what one unit of α injects along ŝ). */
export function injectedAmount(stats: CoefficientStats, weights: number[]): { mean: number; std: number } {
  const M = weights.length;
  let mean = 0;
  let variance = 0;
  for (let j = 0; j < M; j++) {
    mean += weights[j] * stats.mean[j];
    for (let k = 0; k < M; k++) variance += weights[j] * weights[k] * stats.cov[j * M + k];
  }
  return { mean, std: Math.sqrt(Math.max(variance, 0)) };
}

/** Per-matrix weights of a method: all ones for plain ROSI. */
export function spreadWeights(method: SpreadMethod, stats: CoefficientStats | null, M: number): number[] {
  if (method === "rosi") return Array.from({ length: M }, () => 1);
  if (!stats) throw new Error("rosi-mv needs coefficient statistics");
  return minVarianceWeights(stats);
}

/** rosi_vectors rows: row m = α·wₘ·ŝ. */
export function rosiRows(dir: Float32Array, alpha: number, weights: number[]): Float32Array {
  const H = dir.length;
  const rows = new Float32Array(weights.length * H);
  weights.forEach((w, m) => {
    for (let h = 0; h < H; h++) rows[m * H + h] = alpha * w * dir[h];
  });
  return rows;
}
