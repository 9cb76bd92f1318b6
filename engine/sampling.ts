// Sampling from a decoder's logits: temperature, top-k, top-p (nucleus), with a seeded PRNG.
//
// Order of the warpers is HF generate()'s: logits / temperature, then top-k, then top-p, then softmax
// over what is left. Two deliberate details:
// - top-k keeps exactly k tokens; ties at the k-th value go to the lower token id (HF keeps every tie),
//   so top-k 1 is argmax exactly (first on ties, like torch.argmax and engine/generate.ts).
// - top-p keeps, in descending probability (lower id first on ties), every token whose strictly higher
//   tokens hold less than p of the mass (HF's "remove where the ascending cumulative sum ≤ 1 − p");
//   at least one token is always kept.
// Temperature 0 (or absent) is not sampling at all: the caller decodes greedily (argmax).
//
// Randomness: every row of a batch has its own stream, seeded from (seed, the prompt's token ids, the
// sample's index among that prompt's samples), and draws exactly one uniform number per generated
// token. So a row's samples do not depend on which other prompts share its batch, on batch order, or on
// batch size — as long as its logits are the same, which ONNX Runtime gives up to float rounding.
import { randomInt } from "node:crypto";

export interface SamplingOptions {
  /** Softmax temperature; 0 or absent: greedy (argmax), no sampling. */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 or absent: no limit. */
  topK?: number;
  /** Keep the smallest most-likely set holding at least this much probability; 1 or absent: no limit. */
  topP?: number;
  /** Seed of the PRNG (a non-negative safe integer); absent: a random one, reported in the result. */
  seed?: number;
}

export class SamplingError extends RangeError {
  override name = "SamplingError";
}

/** Checks the values (throws SamplingError naming the option); returns true when they ask for sampling. */
export function checkSampling(s: SamplingOptions | undefined): boolean {
  if (!s) return false;
  const { temperature, topK, topP, seed } = s;
  if (temperature !== undefined && !(Number.isFinite(temperature) && temperature >= 0)) throw new SamplingError(`temperature must be a finite number ≥ 0, got ${temperature}`);
  if (topK !== undefined && !(Number.isInteger(topK) && topK >= 0)) throw new SamplingError(`topK must be a non-negative integer (0: off), got ${topK}`);
  if (topP !== undefined && !(Number.isFinite(topP) && topP > 0 && topP <= 1)) throw new SamplingError(`topP must be in (0, 1] (1: off), got ${topP}`);
  if (seed !== undefined && !(Number.isSafeInteger(seed) && seed >= 0)) throw new SamplingError(`seed must be a non-negative safe integer, got ${seed}`);
  return isSampling(s);
}

/** True when the options sample (temperature > 0); false: greedy. */
export function isSampling(s: SamplingOptions | undefined): boolean {
  return s !== undefined && s.temperature !== undefined && s.temperature > 0;
}

/** A fresh random seed (for runs without one; report it so that they can be repeated). */
export function randomSeed(): number {
  return randomInt(0, 2 ** 32);
}

// ---- PRNG --------------------------------------------------------------------------------------

/** SplitMix32 step (Vigna's splitmix finaliser on 32 bits): a good mixer for seeding. */
function mix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  let z = x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** FNV-1a over 32-bit words: the stream key of a prompt's token ids. */
export function hashIds(ids: readonly number[]): number {
  let h = 0x811c9dc5;
  const step = (w: number) => {
    for (let s = 0; s < 32; s += 8) {
      h ^= (w >>> s) & 0xff;
      h = Math.imul(h, 0x01000193);
    }
  };
  step(ids.length);
  for (const id of ids) step(id >>> 0);
  return h >>> 0;
}

/** xoshiro128** (Blackman & Vigna): 32-bit outputs, period 2^128 − 1. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** A stream of `seed` (a safe integer) and any number of 32-bit key words (which prompt, which sample). */
  constructor(seed: number, ...key: number[]) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new SamplingError(`seed must be a non-negative safe integer, got ${seed}`);
    let h = mix32(seed >>> 0);
    h = mix32(h ^ Math.floor(seed / 2 ** 32));
    for (const k of key) h = mix32(h ^ (k >>> 0));
    const words: number[] = [];
    for (let i = 0; i < 4; i++) {
      h = mix32(h ^ i);
      words.push(h);
    }
    [this.s0, this.s1, this.s2, this.s3] = words as [number, number, number, number];
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  nextUint32(): number {
    const r = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return r;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  nextFloat(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

const rotl = (x: number, k: number) => (x << k) | (x >>> (32 - k));

// ---- the distribution --------------------------------------------------------------------------

export interface TokenDistribution {
  /** Token ids of the support, in the order the sampler walks them. */
  ids: number[];
  /** Their probabilities (float64, summing to 1). */
  probs: Float64Array;
}

/** Order for "most likely first": larger value, then lower id. */
const byValueDesc = (x: ArrayLike<number>) => (a: number, b: number) => x[b]! - x[a]! || a - b;

/** The k largest of x over `candidates` (larger value first, lower id on ties). */
function topKOf(x: Float64Array, candidates: number[], k: number): number[] {
  if (k >= candidates.length) return candidates;
  // A threshold pass avoids sorting the whole vocabulary: the k-th largest value by quickselect.
  const vals = Float64Array.from(candidates, (i) => x[i]!);
  const kth = quickselectDesc(vals, k - 1);
  const above = candidates.filter((i) => x[i]! > kth);
  const equal = candidates.filter((i) => x[i]! === kth); // already in id order
  return [...above.sort(byValueDesc(x)), ...equal.slice(0, k - above.length)];
}

/** The value that would be at index k (0-based) if `a` were sorted descending; reorders `a`. */
function quickselectDesc(a: Float64Array, k: number): number {
  let lo = 0;
  let hi = a.length - 1;
  while (lo < hi) {
    const pivot = a[(lo + hi) >> 1]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! > pivot) i++;
      while (a[j]! < pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i] = a[j]!;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k]!;
  }
  return a[lo]!;
}

/**
 * The distribution a sampled token is drawn from, for one row of logits (`length` values from
 * `offset`): softmax(logits / temperature) restricted to top-k, then to top-p, renormalised.
 * Computed in float64. `temperature` must be > 0 here (greedy is argmax, not a distribution).
 */
export function samplingDistribution(logits: ArrayLike<number>, opts: SamplingOptions, offset = 0, length = logits.length - offset): TokenDistribution {
  const T = opts.temperature ?? 0;
  if (!(T > 0) || !Number.isFinite(T)) throw new SamplingError(`samplingDistribution needs a temperature > 0, got ${opts.temperature}`);
  const x = new Float64Array(length);
  for (let i = 0; i < length; i++) x[i] = logits[offset + i]! / T;

  let support: number[] = Array.from({ length }, (_, i) => i);
  const k = opts.topK ?? 0;
  let sorted = false;
  if (k > 0 && k < length) {
    support = topKOf(x, support, k);
    sorted = true;
  }
  let max = -Infinity;
  for (const i of support) if (x[i]! > max) max = x[i]!;
  const w = new Float64Array(length);
  let total = 0;
  for (const i of support) {
    const e = Math.exp(x[i]! - max);
    w[i] = e;
    total += e;
  }

  const p = opts.topP ?? 1;
  if (p < 1) {
    // Only tokens at or above a weight threshold whose mass already reaches p can be in the nucleus
    // (every token below it comes after them in descending order), so sort just those.
    let candidates = support;
    if (!sorted && support.length > 256) {
      for (let t = 2 ** -4; t > 1e-300; t /= 16) {
        let mass = 0;
        for (const i of support) if (w[i]! >= t) mass += w[i]!;
        if (mass / total >= p) {
          candidates = support.filter((i) => w[i]! >= t);
          break;
        }
      }
    }
    const order = sorted ? candidates : [...candidates].sort(byValueDesc(x));
    const kept: number[] = [];
    let above = 0;
    for (const i of order) {
      if (kept.length > 0 && above / total >= p) break;
      kept.push(i);
      above += w[i]!;
    }
    support = kept;
    total = above;
  }

  const probs = new Float64Array(support.length);
  support.forEach((i, n) => (probs[n] = w[i]! / total));
  return { ids: support, probs };
}

/** Draws from a distribution with one uniform u ∈ [0, 1) (inverse CDF in the support's order). */
export function drawFrom(d: TokenDistribution, u: number): number {
  let acc = 0;
  for (let n = 0; n < d.ids.length; n++) {
    acc += d.probs[n]!;
    if (u < acc) return d.ids[n]!;
  }
  // Rounding left the total a hair below 1 and u above it: the last token with mass.
  for (let n = d.ids.length - 1; n >= 0; n--) if (d.probs[n]! > 0) return d.ids[n]!;
  return d.ids[d.ids.length - 1]!;
}

/** One sampled token id (relative to `offset`) from a row of logits, with uniform u. */
export function sampleToken(logits: ArrayLike<number>, opts: SamplingOptions, u: number, offset = 0, length = logits.length - offset): number {
  return drawFrom(samplingDistribution(logits, opts, offset, length), u);
}

// ---- streaming text ----------------------------------------------------------------------------

/**
 * Turns a growing list of token ids into text deltas for streaming: decodes the whole list each time
 * (so merges across tokens and byte-fallback pieces decode as they will in the end), and holds back
 * a trailing U+FFFD (an incomplete UTF-8 sequence) and any tail that could be the start of a stop
 * string, until the next token settles it. `flush()` gives what is left.
 */
export class TextStreamer {
  private ids: number[] = [];
  private emitted = 0;
  private stopped = false;

  constructor(
    private readonly decode: (ids: number[]) => string,
    private readonly stopStrings: readonly string[] = [],
  ) {}

  /** Adds a token; returns the new text that is safe to show ("" when nothing is). */
  push(id: number): string {
    if (this.stopped) return "";
    this.ids.push(id);
    const text = this.decode(this.ids);
    const stop = findStop(text, this.stopStrings);
    if (stop) {
      this.stopped = true;
      return this.take(text, stop.index);
    }
    let end = text.length;
    while (end > this.emitted && text.charCodeAt(end - 1) === 0xfffd) end--;
    end = Math.min(end, text.length - partialStopLength(text.slice(0, end), this.stopStrings));
    return this.take(text, end);
  }

  /** The rest of the text (up to a stop string, if one was seen). */
  flush(): string {
    if (this.stopped) return "";
    const text = this.decode(this.ids);
    return this.take(text, text.length);
  }

  /** The full text so far, cut at a stop string. */
  text(): string {
    const text = this.decode(this.ids);
    const stop = findStop(text, this.stopStrings);
    return stop ? text.slice(0, stop.index) : text;
  }

  private take(text: string, end: number): string {
    if (end <= this.emitted) return "";
    const delta = text.slice(this.emitted, end);
    this.emitted = end;
    return delta;
  }
}

/** The earliest stop string in text (its index and which one), or null. */
export function findStop(text: string, stops: readonly string[], from = 0): { index: number; stop: string } | null {
  let best: { index: number; stop: string } | null = null;
  for (const s of stops) {
    if (s.length === 0) continue;
    const i = text.indexOf(s, Math.max(0, from - s.length + 1));
    if (i >= 0 && (best === null || i < best.index)) best = { index: i, stop: s };
  }
  return best;
}

/** Length of the longest tail of `text` that is a proper prefix of some stop string. */
function partialStopLength(text: string, stops: readonly string[]): number {
  let longest = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > longest; n--) {
      if (text.endsWith(s.slice(0, n))) {
        longest = n;
        break;
      }
    }
  }
  return longest;
}
