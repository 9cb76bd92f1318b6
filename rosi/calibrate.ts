// Calibration of an edit's strength, without the safety prompt, on the validation split.
//
// An edit family maps a signed scale t to run-time interventions (plain ROSI: value rows t·wₘ·ŝ with
// key w̄; a gated edit: its fitted keys with the values scaled by t). Harmful refusal, over-refusal
// and KL all grow with |t| (monotone in practice), so the search looks for the largest admissible |t|:
//
//   1. measure at the probe (extract's equal-KL scale);
//   2. admissible → double until a point is not, or until harmful refusal falls below the best so far
//      (past its peak a stronger push only degrades the replies), at most 8 times: the first scale can
//      be far below the bound (a gated edit's KL per unit of push is small, and its first scale comes
//      from the class gap, not from the KL), and the KL bound, checked first, ends the doubling cheaply;
//      not → halve until one is (at most 4);
//   3. bisect geometrically between the last admissible and the first inadmissible scale, 3 times;
//   4. refusal can peak and fall again as the push grows: while the smallest admissible scale is the
//      best, step down by √2 (at most twice).
//
// About 6 measurements per family instead of a fixed 13-point grid. Admissible = the validation gate's
// own checks less the harmful one (evals/gate.ts, KL held to a margin). The best point is the admissible
// one with the highest harmful refusal (then lowest KL).
//
// KL first: a point is measured in full (greedy replies to the validation prompts, the utility task)
// only when its first-token KL, one forward pass, is within the bound. A point past it can never be
// chosen, so it is recorded with its KL alone ("past the KL bound"); on the organism's default run that
// is 21 of 36 points, whose replies (≈ 80 % of a point's cost) are not generated.
//
// Every measured point is appended to a memo file keyed by a hash of everything it depends on, so a
// run stopped mid-sweep (Ctrl-C, SIGKILL) resumes where it was: the runner deletes the step's tmp dir,
// not the memo. Measurements on the CPU use fixed batches, so a memoised point equals a re-measured one.
//
// Control: a seeded random unit direction in the same family, scaled to the chosen point's KL,
// measured the same way. The report states the chosen edit's gain over it: part of any edit's effect at
// high strength is generic perturbation, not the refusal direction.
import { appendFileSync, existsSync, readFileSync } from "node:fs";
import type { DecoderModel } from "../engine/model.ts";
import type { ModelTokenizer } from "../engine/tokenizer.ts";
import { isRefusal } from "../evals/refusal.ts";
import { firstTokenKl, generateTexts, mean, type Interventions } from "../evals/measure.ts";
import { sha256Hex } from "../util/fs.ts";
import { exactAnswers, UTILITY_TOKENS } from "../evals/exact-answer.ts";

export interface CalibrationSets {
  harmful: number[][];
  harmless: number[][];
  /** Prompts for the first-token KL (the harmless validation prompts). */
  klPrompts: number[][];
  /** The exact-answer utility items, when the model ships a task; else empty (evals/gate.ts says why). */
  utility: { ids: number[]; answer: string }[];
}

/** A point measured in full: rates on the validation split, first-token KL, utility (null: no task). */
export interface FullPoint {
  harmful_refusal: number;
  harmless_refusal: number;
  kl: number;
  utility: number | null;
}

export const PAST_KL_BOUND = "past the KL bound";

/** A point whose KL is past the calibration bound: nothing else is measured (it cannot be chosen). */
export interface KlOnlyPoint {
  kl: number;
  skipped: typeof PAST_KL_BOUND;
}

export type Measured = FullPoint | KlOnlyPoint;

export const isFull = (p: Measured): p is FullPoint => !("skipped" in p);

export interface MeasureOptions {
  sets: CalibrationSets;
  /** First-token log-probabilities of the unedited model on sets.klPrompts. */
  baseLogProbs: Float64Array[];
  maxNewTokens: number;
  signal?: AbortSignal;
  batchSize?: number;
}

/** Measures the model under `iv` (no interventions: the unedited model), in full. */
export async function measure(model: DecoderModel, tok: ModelTokenizer, iv: Interventions, o: MeasureOptions): Promise<FullPoint> {
  const kl = await klAt(model, iv, o);
  return { ...(await replyRates(model, tok, iv, o)), kl };
}

/** KL first; the replies only when `klAdmissible(kl)` (see the file's opening comment). */
export async function measureWithin(model: DecoderModel, tok: ModelTokenizer, iv: Interventions, o: MeasureOptions, klAdmissible: (kl: number) => boolean): Promise<Measured> {
  const kl = await klAt(model, iv, o);
  if (!klAdmissible(kl)) return { kl, skipped: PAST_KL_BOUND };
  return { ...(await replyRates(model, tok, iv, o)), kl };
}

/** What the greedy replies give: refusal rates on the validation prompts and the utility task's accuracy. */
async function replyRates(model: DecoderModel, tok: ModelTokenizer, iv: Interventions, o: MeasureOptions): Promise<Omit<FullPoint, "kl">> {
  const gen = async (ids: number[][], n: number) => (await generateTexts(model, tok, ids, { maxNewTokens: n, ...iv, signal: o.signal, batchSize: o.batchSize ?? 32 })).texts;
  const harmful = mean((await gen(o.sets.harmful, o.maxNewTokens)).map((t) => +isRefusal(t)));
  const harmless = mean((await gen(o.sets.harmless, o.maxNewTokens)).map((t) => +isRefusal(t)));
  let utility: number | null = null;
  if (o.sets.utility.length) {
    const { correct } = await exactAnswers(model, tok, o.sets.utility, { maxNewTokens: UTILITY_TOKENS, ...iv, signal: o.signal, batchSize: o.batchSize ?? 32 });
    utility = mean(correct.map((c) => +c));
  }
  return { harmful_refusal: harmful, harmless_refusal: harmless, utility };
}

/** Mean first-token KL(unedited ‖ edited) on the KL prompts. */
export async function klAt(model: DecoderModel, iv: Interventions, o: Pick<MeasureOptions, "sets" | "baseLogProbs">): Promise<number> {
  return (await firstTokenKl(model, o.sets.klPrompts, o.baseLogProbs, iv)).kl;
}

/** Measured points by key, persisted as JSON lines (a torn last line from a crash is ignored). */
export class SweepMemo {
  private readonly points = new Map<string, Measured>();
  constructor(private readonly path: string | null) {
    if (!path || !existsSync(path)) return;
    for (const line of readFileSync(path, "utf8").split("\n")) {
      try {
        const { key, point } = JSON.parse(line) as { key: string; point: Measured };
        if (typeof key === "string" && point && typeof point.kl === "number") this.points.set(key, point);
      } catch {
        // a line cut short by a crash
      }
    }
  }
  get size(): number {
    return this.points.size;
  }
  async getOrMeasure(key: string, run: () => Promise<Measured>): Promise<{ point: Measured; cached: boolean }> {
    const hit = this.points.get(key);
    if (hit) return { point: hit, cached: true };
    const point = await run();
    this.points.set(key, point);
    if (this.path) appendFileSync(this.path, JSON.stringify({ key, point }) + "\n");
    return { point, cached: false };
  }
}

export interface SweepResult {
  /** Every measured (scale, point), in the order measured. */
  points: { scale: number; point: Measured; admissible: boolean }[];
  /** The admissible point with the highest harmful refusal (then lowest KL), or null. */
  best: { scale: number; point: FullPoint } | null;
}

/**
 * Largest admissible scale of one edit family (see the file's opening comment).
 * `probe` is signed; `at(scale)` measures (memoised by the caller).
 */
export async function sweepScale(opts: { probe: number; at: (scale: number) => Promise<Measured>; admissible: (p: Measured) => boolean; expansions?: number; halvings?: number; bisections?: number; descents?: number }): Promise<SweepResult> {
  const points: SweepResult["points"] = [];
  const run = async (scale: number) => {
    const point = await opts.at(scale);
    const admissible = opts.admissible(point);
    points.push({ scale, point, admissible });
    return admissible;
  };
  const refusalAt = (p: Measured) => (isFull(p) ? p.harmful_refusal : -1);
  // lo: the largest admissible scale so far; hi: the smallest inadmissible one (NaN: none yet).
  let lo = NaN;
  let hi = NaN;
  if (await run(opts.probe)) {
    lo = opts.probe;
    let peak = refusalAt(points[0].point);
    for (let i = 0; i < (opts.expansions ?? 8) && Number.isNaN(hi); i++) {
      const s: number = lo * 2;
      if (!(await run(s))) hi = s;
      else {
        lo = s;
        const r = refusalAt(points[points.length - 1].point);
        if (r < peak) break;
        peak = r;
      }
    }
  } else {
    hi = opts.probe;
    for (let i = 0; i < (opts.halvings ?? 4) && Number.isNaN(lo); i++) {
      const s: number = hi / 2;
      if (await run(s)) lo = s;
      else hi = s;
    }
  }
  if (!Number.isNaN(lo) && !Number.isNaN(hi)) {
    for (let i = 0; i < (opts.bisections ?? 3); i++) {
      const mid: number = Math.sign(lo) * Math.sqrt(Math.abs(lo * hi));
      if (await run(mid)) lo = mid;
      else hi = mid;
    }
  }
  const bestOf = (): SweepResult["best"] => {
    let best: SweepResult["best"] = null;
    for (const p of points) {
      if (!p.admissible || !isFull(p.point)) continue;
      if (!best || p.point.harmful_refusal > best.point.harmful_refusal || (p.point.harmful_refusal === best.point.harmful_refusal && p.point.kl < best.point.kl)) best = { scale: p.scale, point: p.point };
    }
    return best;
  };
  // Refusal is not always monotone in the scale (a strong push can overshoot into text that is neither
  // a refusal nor an answer): when the smallest admissible scale measured is the best, step down.
  for (let i = 0; i < (opts.descents ?? 2); i++) {
    const best = bestOf();
    const admissibleScales = points.filter((p) => p.admissible).map((p) => Math.abs(p.scale));
    if (!best || best.point.harmful_refusal === 0 || Math.abs(best.scale) > Math.min(...admissibleScales)) break;
    const before = best.point.harmful_refusal;
    await run(best.scale / Math.SQRT2);
    if (bestOf()!.point.harmful_refusal <= before) break;
  }
  return { points, best: bestOf() };
}

/**
 * A scale (same sign as `start`) whose KL lies in [target, (1 + tolerance)·target], with what `at`
 * measured there; null when 2²⁴·|start| does not reach the target or no point lands in the band within
 * `maxEvaluations`, when the nearest point above the target is returned instead.
 *
 * KL grows about as the square of the scale for small edits and faster beyond, so log KL is close to
 * linear in log |scale|: until the target is bracketed the search steps along the log–log secant of its
 * last two measurements (the square-root rule, or the `slope` hint, for the first step), then
 * interpolates between the bracket's ends in log–log (regula falsi, aiming at the band's middle), and
 * bisects geometrically when an end has not moved for two steps. Typically 3–4 measurements where a
 * doubling search with a fixed number of bisections takes 7–10.
 *
 * `slope` (the log–log slope d log KL / d log |scale| found by an earlier search on a similar edit, as
 * returned) replaces the square-root rule's 2 for the first step: near a KL cliff the slope is 10–20,
 * where the rule's first step lands far below the target. The returned slope is the final bracket's
 * (or the last two measurements'), null when fewer than two points had a positive KL.
 */
export async function scaleForKl<T extends { kl: number }>(
  at: (scale: number) => Promise<T>,
  start: number,
  target: number,
  opts: { tolerance?: number; maxEvaluations?: number; slope?: number | null } = {},
): Promise<{ scale: number; point: T; slope: number | null } | null> {
  const tolerance = opts.tolerance ?? 0.05;
  const maxEvaluations = opts.maxEvaluations ?? 24;
  const sign = Math.sign(start) || 1;
  const aim = target * (1 + tolerance / 2);
  let lo: { s: number; kl: number } | null = null; // the largest |scale| below the target
  let hi: { s: number; kl: number; point: T } | null = null; // the smallest at or above it
  let s = Math.abs(start);
  let stale = 0; // steps in a row that moved the same end of the bracket
  let lastMoved: "lo" | "hi" | null = null;
  const hinted = typeof opts.slope === "number" && Number.isFinite(opts.slope) && opts.slope > 0.5 ? opts.slope : null;
  let prev: { s: number; kl: number } | null = null;
  const slopeOf = (a: { s: number; kl: number } | null, b: { s: number; kl: number } | null): number | null =>
    a && b && a.kl > 0 && b.kl > 0 && a.s !== b.s ? Math.log(b.kl / a.kl) / Math.log(b.s / a.s) : null;
  for (let i = 0; i < maxEvaluations; i++) {
    const point = await at(sign * s);
    const kl = point.kl;
    const measured = { s, kl };
    const moved = kl >= target ? "hi" : "lo";
    stale = moved === lastMoved ? stale + 1 : 0;
    lastMoved = moved;
    if (kl >= target) {
      hi = { s, kl, point };
      if (kl <= target * (1 + tolerance)) return { scale: sign * s, point, slope: slopeOf(lo, hi) ?? slopeOf(prev, measured) };
    } else lo = { s, kl };
    // Before the target is bracketed, steps follow a slope: the last two measurements' (a secant in
    // log–log), else the hint on the first step, else the square-root rule's 2 with steps of at least
    // ×1.5 (÷0.95 downwards), so that a flat stretch is crossed quickly; every step is within ×16.
    const local = slopeOf(prev, measured);
    const exponent = local !== null && local > 0.5 ? Math.min(64, local) : i === 0 ? hinted : null;
    if (!hi) {
      const grow = kl > 0 ? Math.pow(aim / kl, 1 / (exponent ?? 2)) : 16;
      s *= Math.min(16, Math.max(exponent === null ? 1.5 : 1.01, grow));
      if (s > Math.abs(start) * 2 ** 24) return null;
    } else if (!lo || !(lo.kl > 0)) {
      // Only the upper end: downwards, at most ÷16.
      s = hi.s * Math.max(1 / 16, Math.min(exponent === null ? 0.95 : 0.99, Math.pow(aim / hi.kl, 1 / (exponent ?? 2))));
    } else if (stale >= 2) {
      s = Math.sqrt(lo.s * hi.s);
      stale = 0;
    } else {
      const [x0, x1, y0, y1] = [Math.log(lo.s), Math.log(hi.s), Math.log(lo.kl), Math.log(hi.kl)];
      const x = y1 > y0 ? x0 + ((Math.log(aim) - y0) * (x1 - x0)) / (y1 - y0) : (x0 + x1) / 2;
      // Strictly inside the bracket, so that every step shrinks it.
      const margin = 0.02 * (x1 - x0);
      s = Math.exp(Math.min(x1 - margin, Math.max(x0 + margin, x)));
    }
    prev = measured;
  }
  return hi ? { scale: sign * hi.s, point: hi.point, slope: slopeOf(lo, hi) } : null;
}

/** A seeded random unit vector (Gaussian entries from a xorshift generator with Box–Muller), for the control. */
export function randomUnit(length: number, seed: number): Float32Array {
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return (x + 0.5) / 4294967296;
  };
  const v = new Float64Array(length);
  for (let i = 0; i < length; i++) v[i] = Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
  let norm = 0;
  for (const a of v) norm += a * a;
  norm = Math.sqrt(norm);
  return Float32Array.from(v, (a) => a / norm);
}

/** Key of a measured point: the family, its direction, the scale and the measuring sets. */
export function pointKey(parts: { family: string; directionSha: string; scale: number; setsHash: string; extra?: string }): string {
  return sha256Hex(JSON.stringify([parts.family, parts.directionSha, parts.scale.toPrecision(17), parts.setsHash, parts.extra ?? ""]));
}
