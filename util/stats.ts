// Rates as statistics: a count k of n, with a 95 % Wilson score interval.
//
//   p̂ = k/n,  z = 1.96
//   centre = (p̂ + z²/2n) / (1 + z²/n),  half = z·√(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n)
//
// Wilson rather than the normal approximation because refusal rates sit near 0 and 1, where p̂ ± z·√(p̂(1−p̂)/n)
// collapses to a zero-width interval.

export interface Rate {
  /** k / n (0 when n = 0). */
  rate: number;
  k: number;
  n: number;
  /** 95 % Wilson score interval [lo, hi]. */
  ci95: [number, number];
}

const Z = 1.959963984540054;

export function wilson(k: number, n: number): [number, number] {
  if (n === 0) return [0, 1];
  const p = k / n;
  const z2 = Z * Z;
  const denom = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / denom;
  const half = (Z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / denom;
  return [Math.max(0, centre - half), Math.min(1, centre + half)];
}

/** The rate of `true` among judgments, with its n and interval. */
export function rateOf(judgments: readonly boolean[]): Rate {
  const n = judgments.length;
  const k = judgments.filter(Boolean).length;
  return { rate: n ? k / n : 0, k, n, ci95: wilson(k, n) };
}

/** "12.5 % (4/32, 95 % CI 5.0–28.1 %)". */
export function formatRate(r: Rate): string {
  const pct = (x: number) => `${(x * 100).toFixed(1)}`;
  return `${pct(r.rate)} % (${r.k}/${r.n}, 95 % CI ${pct(r.ci95[0])}–${pct(r.ci95[1])} %)`;
}

/** Largest 95 % half-width a rate measured on n items can have (at p = 0.5). */
export const worstHalfWidth = (n: number): number => {
  const [lo, hi] = wilson(Math.round(n / 2), n);
  return (hi - lo) / 2;
};
