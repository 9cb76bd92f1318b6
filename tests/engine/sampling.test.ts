// Sampling (engine/sampling.ts, engine/generate.ts): the distribution against an independent
// reference (a full sort, HF's ascending-cumsum rule for top-p), empirical frequencies of many seeded
// draws against it (chi-square at p = 0.001, a fixed seed: deterministic), the same on HF's own logits
// (hf-golden llama) through the engine, and on stories260K: seeded runs repeat exactly, a row's
// samples do not depend on its batch, temperature → 0 and top-k 1 equal the greedy reference,
// sampled tokens stay in the top-k / top-p support, stop strings and streaming.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { argmax, generate, generateGreedy } from "../../engine/generate.ts";
import { checkSampling, drawFrom, findStop, hashIds, Rng, sampleToken, samplingDistribution, SamplingError, TextStreamer, type SamplingOptions } from "../../engine/sampling.ts";
import { loadTokenizer } from "../../engine/tokenizer.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

// ---- an independent reference ------------------------------------------------------------------

/** softmax(logits / T), top-k (k largest, lower id on ties), then top-p as HF's TopPLogitsWarper writes it. */
function reference(logits: ArrayLike<number>, o: SamplingOptions): Map<number, number> {
  const T = o.temperature!;
  const x = Array.from(logits, (l) => l / T);
  let ids = x.map((_, i) => i).sort((a, b) => x[b]! - x[a]! || a - b);
  if (o.topK) ids = ids.slice(0, o.topK);
  const m = Math.max(...ids.map((i) => x[i]!));
  const z = ids.reduce((s, i) => s + Math.exp(x[i]! - m), 0);
  let p = new Map(ids.map((i) => [i, Math.exp(x[i]! - m) / z]));
  if (o.topP !== undefined && o.topP < 1) {
    // HF: sort ascending, cumulative sum, remove where cumsum <= 1 − top_p, always keep the most likely.
    const asc = [...ids].reverse();
    let cum = 0;
    const kept = new Map<number, number>();
    asc.forEach((i, n) => {
      cum += p.get(i)!;
      if (cum > 1 - o.topP! || n === asc.length - 1) kept.set(i, p.get(i)!);
    });
    const total = [...kept.values()].reduce((a, b) => a + b, 0);
    p = new Map([...kept].map(([i, v]) => [i, v / total]));
  }
  return p;
}

/** Upper 0.1 % point of chi-square with df degrees of freedom (Wilson–Hilferty). */
const chi2Critical = (df: number) => df * (1 - 2 / (9 * df) + 3.0902 * Math.sqrt(2 / (9 * df))) ** 3;

/** Pearson's chi-square of observed counts against expected probabilities (bins with expectation < 5 pooled). */
function chiSquare(counts: Map<number, number>, probs: Map<number, number>, n: number): { stat: number; df: number } {
  let stat = 0;
  let bins = 0;
  let poolObs = 0;
  let poolExp = 0;
  for (const [id, p] of probs) {
    const e = p * n;
    const o = counts.get(id) ?? 0;
    if (e < 5) {
      poolObs += o;
      poolExp += e;
      continue;
    }
    stat += (o - e) ** 2 / e;
    bins++;
  }
  if (poolExp > 0) {
    stat += (poolObs - poolExp) ** 2 / poolExp;
    bins++;
  }
  return { stat, df: bins - 1 };
}

/** A fixed pseudo-random logits vector (a separate generator from the sampler's). */
function fixedLogits(n: number, scale: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  return Float32Array.from({ length: n }, () => (next() + next() + next() - 1.5) * scale);
}

const CASES: SamplingOptions[] = [
  { temperature: 1 },
  { temperature: 0.6 },
  { temperature: 1.5, topK: 5 },
  { temperature: 1, topP: 0.7 },
  { temperature: 0.8, topK: 8, topP: 0.9 },
];

describe("the sampling distribution", () => {
  test("matches the reference: support and probabilities (small and large vocabularies, ties)", () => {
    const vectors = [fixedLogits(12, 2, 1), fixedLogits(300, 3, 2), fixedLogits(5000, 4, 3), Float32Array.from([1, 3, 3, 2, 3, 0, -1, 2])];
    for (const logits of vectors) {
      for (const o of [...CASES, { temperature: 0.3, topP: 0.95 }, { temperature: 2, topK: 100, topP: 0.5 }, { temperature: 1, topK: 3 }, { temperature: 1, topP: 0.01 }]) {
        const d = samplingDistribution(logits, o);
        const ref = reference(logits, o);
        expect([...d.ids].sort((a, b) => a - b)).toEqual([...ref.keys()].sort((a, b) => a - b));
        d.ids.forEach((id, n) => expect(Math.abs(d.probs[n]! - ref.get(id)!)).toBeLessThan(1e-12));
        expect(Math.abs(d.probs.reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-12);
      }
    }
  });

  test("empirical frequencies of 20,000 seeded draws fit the reference (chi-square, p = 0.001); nothing outside the support", () => {
    const logits = fixedLogits(12, 2, 7);
    const n = 20_000;
    for (const o of CASES) {
      const rng = new Rng(12345, 1);
      const counts = new Map<number, number>();
      for (let i = 0; i < n; i++) {
        const t = sampleToken(logits, o, rng.nextFloat());
        counts.set(t, (counts.get(t) ?? 0) + 1);
      }
      const ref = reference(logits, o);
      for (const id of counts.keys()) expect(ref.has(id)).toBe(true);
      const { stat, df } = chiSquare(counts, ref, n);
      expect(df).toBeGreaterThan(0);
      expect(stat).toBeLessThan(chi2Critical(df));
    }
  });

  test("the chi-square check has teeth: draws from T = 1 fail against T = 0.6", () => {
    const logits = fixedLogits(12, 2, 7);
    const rng = new Rng(12345, 1);
    const counts = new Map<number, number>();
    for (let i = 0; i < 20_000; i++) {
      const t = sampleToken(logits, { temperature: 1 }, rng.nextFloat());
      counts.set(t, (counts.get(t) ?? 0) + 1);
    }
    const { stat, df } = chiSquare(counts, reference(logits, { temperature: 0.6 }), 20_000);
    expect(stat).toBeGreaterThan(chi2Critical(df));
  });

  test("top-k 1 is argmax (first on ties) at any temperature", () => {
    for (const logits of [fixedLogits(50, 3, 11), fixedLogits(4096, 5, 12), Float32Array.from([0, 2, 5, 5, 1])]) {
      for (const temperature of [0.01, 1, 7]) {
        for (const u of [0, 0.5, 0.999999]) expect(sampleToken(logits, { temperature, topK: 1 }, u)).toBe(argmax(logits));
      }
    }
  });

  test("a very low temperature puts all the mass on the argmax", () => {
    const logits = fixedLogits(300, 3, 13);
    const d = samplingDistribution(logits, { temperature: 1e-4 });
    expect(d.probs[d.ids.indexOf(argmax(logits))]).toBeGreaterThan(1 - 1e-12);
  });

  test("drawFrom walks the CDF: u at the edges", () => {
    const d = { ids: [4, 9, 2], probs: Float64Array.from([0.5, 0.3, 0.2]) };
    expect(drawFrom(d, 0)).toBe(4);
    expect(drawFrom(d, 0.4999)).toBe(4);
    expect(drawFrom(d, 0.5)).toBe(9);
    expect(drawFrom(d, 0.81)).toBe(2);
    expect(drawFrom(d, 0.9999999999999999)).toBe(2);
  });

  test("option checks", () => {
    expect(checkSampling(undefined)).toBe(false);
    expect(checkSampling({ temperature: 0, topK: 5 })).toBe(false);
    expect(checkSampling({ temperature: 0.7, seed: 3 })).toBe(true);
    expect(() => checkSampling({ temperature: -1 })).toThrow(SamplingError);
    expect(() => checkSampling({ temperature: 1, topP: 0 })).toThrow("topP must be in (0, 1]");
    expect(() => checkSampling({ temperature: 1, topP: 1.5 })).toThrow("topP");
    expect(() => checkSampling({ temperature: 1, topK: 2.5 })).toThrow("topK");
    expect(() => checkSampling({ temperature: 1, seed: -1 })).toThrow("seed");
    expect(() => samplingDistribution([1, 2], { temperature: 0 })).toThrow("temperature > 0");
  });
});

describe("the PRNG", () => {
  test("a seed and key give the same stream; another seed or key another one", () => {
    const take = (r: Rng) => Array.from({ length: 8 }, () => r.nextUint32());
    expect(take(new Rng(42, 7, 0))).toEqual(take(new Rng(42, 7, 0)));
    expect(take(new Rng(42, 7, 0))).not.toEqual(take(new Rng(43, 7, 0)));
    expect(take(new Rng(42, 7, 0))).not.toEqual(take(new Rng(42, 7, 1)));
    expect(take(new Rng(2 ** 40, 0))).not.toEqual(take(new Rng(0, 0)));
    expect(hashIds([1, 2, 3])).toBe(hashIds([1, 2, 3]));
    expect(hashIds([1, 2, 3])).not.toBe(hashIds([1, 2, 3, 0]));
  });

  test("uniform on [0, 1): 100,000 draws in 20 bins (chi-square, p = 0.001)", () => {
    const r = new Rng(2024);
    const counts = new Map<number, number>();
    for (let i = 0; i < 100_000; i++) {
      const u = r.nextFloat();
      expect(u >= 0 && u < 1).toBe(true);
      const bin = Math.floor(u * 20);
      counts.set(bin, (counts.get(bin) ?? 0) + 1);
    }
    const { stat, df } = chiSquare(counts, new Map(Array.from({ length: 20 }, (_, i) => [i, 1 / 20])), 100_000);
    expect(stat).toBeLessThan(chi2Critical(df));
  });
});

describe("streaming text and stop strings", () => {
  // A fake tokenizer: token i decodes to PIECES[i]; "\uFFFD" stands for half a UTF-8 character that
  // the next token completes ("é" = tokens 3 + 4).
  const PIECES = ["Hel", "lo", " wor", "\uFFFD", "", "ld", "<", "/s", ">", "!"];
  const decode = (ids: number[]) => {
    let s = "";
    ids.forEach((id, n) => (s += id === 3 && ids[n + 1] === 4 ? "é" : PIECES[id]));
    return s;
  };

  test("deltas join to the text; a half character and a possible stop-string start are held back", () => {
    const st = new TextStreamer(decode, ["</s>"]);
    const deltas = [0, 1, 2, 3, 4, 5, 6, 9].map((id) => st.push(id));
    expect(deltas).toEqual(["Hel", "lo", " wor", "", "é", "ld", "", "<!"]);
    expect(st.flush()).toBe("");
    expect(st.text()).toBe("Hello woréld<!");
  });

  test("the stream ends at a stop string, which is not shown", () => {
    const st = new TextStreamer(decode, ["</s>"]);
    const shown = [0, 1, 6, 7, 8, 9].map((id) => st.push(id)).join("");
    expect(shown).toBe("Hello");
    expect(st.text()).toBe("Hello");
    expect(findStop("ab</s>cd</s>", ["cd", "</s>"])).toEqual({ index: 2, stop: "</s>" });
  });
});

// ---- through the engine ------------------------------------------------------------------------

let cacheDir = "";
beforeAll(() => {
  cacheDir = mkdtempSync(join(tmpdir(), "realign-sampling-"));
});
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

describe.skipIf(!hasShared())("hf-golden llama: sampled first tokens against HF's own logits", () => {
  const dir = sharedPath("fixtures", "hf-golden", "llama");
  let model: DecoderModel;
  beforeAll(async () => {
    model = await DecoderModel.load(dir, { device: "cpu", cacheDir });
  });
  afterAll(() => model?.close());

  test("1,200 samples of the first token fit softmax(HF logits / T) restricted by top-k / top-p", async () => {
    const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as { single: { input_ids: number[]; generate: { step_logits: number[][] } }[] };
    const s = expected.single[0]!;
    const hfLogits = s.generate.step_logits[0]!;
    const n = 1200;
    for (const o of [{ temperature: 0.25, topK: 10, seed: 5 }, { temperature: 0.3, topP: 0.6, seed: 6 }]) {
      const r = await generate(model, [s.input_ids], { maxNewTokens: 1, sampling: o, numSamples: n });
      expect(r.newIds.length).toBe(n);
      const counts = new Map<number, number>();
      for (const ids of r.newIds) counts.set(ids[0]!, (counts.get(ids[0]!) ?? 0) + 1);
      const ref = reference(hfLogits, o);
      for (const id of counts.keys()) expect(ref.has(id)).toBe(true);
      const { stat, df } = chiSquare(counts, ref, n);
      expect(df).toBeGreaterThan(2);
      expect(stat).toBeLessThan(chi2Critical(df));
    }
  });
});

describe.skipIf(!hasShared())("stories260K: sampling through the engine", () => {
  const dir = sharedPath("models", "stories260K");
  let model: DecoderModel;
  let ref: { prompt_ids: number[]; greedy_ids: number[] };
  beforeAll(async () => {
    model = await DecoderModel.load(dir, { device: "cpu", cacheDir });
    ref = JSON.parse(readFileSync(join(dir, "greedy_reference.json"), "utf8"));
  });
  afterAll(() => model?.close());
  const steps = () => ref.greedy_ids.length - ref.prompt_ids.length;
  const other = () => ref.greedy_ids.slice(0, 5);

  test("seeded runs repeat exactly (3 samples of 2 prompts); another seed differs; the seed is reported", async () => {
    const o = { maxNewTokens: 24, sampling: { temperature: 1, topP: 0.95, seed: 7 }, numSamples: 3 };
    const a = await generate(model, [ref.prompt_ids, other()], o);
    const b = await generate(model, [ref.prompt_ids, other()], o);
    expect(a.newIds.length).toBe(6);
    expect(b.newIds).toEqual(a.newIds);
    expect(a.seed).toBe(7);
    const c = await generate(model, [ref.prompt_ids, other()], { ...o, sampling: { ...o.sampling, seed: 8 } });
    expect(c.newIds).not.toEqual(a.newIds);
    // The three samples of a prompt are different draws.
    expect(new Set(a.newIds.slice(0, 3).map((x) => x.join())).size).toBe(3);
    const unseeded = await generate(model, [ref.prompt_ids], { maxNewTokens: 2, sampling: { temperature: 1 } });
    expect(Number.isSafeInteger(unseeded.seed)).toBe(true);
  });

  test("a prompt's samples do not depend on its batch (alone, or after another prompt)", async () => {
    const sampling = { temperature: 1, seed: 99 };
    const alone = await generate(model, [ref.prompt_ids], { maxNewTokens: 20, sampling, numSamples: 2 });
    const mixed = await generate(model, [other(), ref.prompt_ids], { maxNewTokens: 20, sampling, numSamples: 2, padId: 0 });
    expect(mixed.newIds.slice(2)).toEqual(alone.newIds);
  });

  test("temperature 0, temperature → 0 (1e-4) and top-k 1 reproduce greedy_reference.json", async () => {
    for (const sampling of [{ temperature: 0 }, { temperature: 1e-4, seed: 1 }, { temperature: 1, topK: 1, seed: 2 }, { temperature: 5, topK: 1, seed: 3 }]) {
      const r = await generate(model, [ref.prompt_ids], { maxNewTokens: steps(), sampling });
      expect([...ref.prompt_ids, ...r.newIds[0]!]).toEqual(ref.greedy_ids);
    }
    const g = await generateGreedy(model, [ref.prompt_ids], { maxNewTokens: steps(), sampling: { temperature: 1, seed: 4 } });
    expect([...ref.prompt_ids, ...g.newIds[0]!]).toEqual(ref.greedy_ids); // generateGreedy ignores sampling
  });

  test("every sampled token lies in the top-k / top-p support of its step's logits", async () => {
    for (const sampling of [{ temperature: 1.2, topK: 3, seed: 11 }, { temperature: 1, topP: 0.5, seed: 12 }, { temperature: 2, topK: 20, topP: 0.6, seed: 13 }]) {
      const r = await generate(model, [ref.prompt_ids, other()], { maxNewTokens: 16, sampling, numSamples: 2, returnStepLogits: true, padId: 0 });
      let checked = 0;
      r.newIds.forEach((ids, row) =>
        ids.forEach((id, step) => {
          const support = reference(r.stepLogits![row]![step]!, sampling);
          expect(support.has(id)).toBe(true);
          checked++;
        }),
      );
      expect(checked).toBe(64);
    }
  });

  test("stop strings end a row (tokens kept, stopIndex where the text starts); onToken streams every token", async () => {
    const tok = await loadTokenizer(dir);
    const decode = (ids: number[]) => tok.decode(ids, { skipSpecialTokens: true });
    const streamed: [number, number, number][] = [];
    const r = await generate(model, [ref.prompt_ids, other()], {
      maxNewTokens: steps(),
      stopStrings: ["there was"],
      decode,
      padId: 0,
      onToken: (row, token, step) => streamed.push([row, token, step]),
    });
    const ids = r.newIds[0]!;
    expect(ids).toEqual(ref.greedy_ids.slice(1, 1 + ids.length));
    expect(ids.length).toBeLessThan(steps());
    expect(r.finishReasons![0]).toBe("stop");
    const text = decode(ids);
    expect(text.endsWith("there was")).toBe(true);
    expect(decode(ids.slice(0, -1)).includes("there was")).toBe(false);
    expect(r.stopIndex![0]).toBe(text.indexOf("there was"));
    for (let row = 0; row < 2; row++) {
      const mine = streamed.filter((s) => s[0] === row);
      expect(mine.map((s) => s[1])).toEqual(r.newIds[row]!);
      expect(mine.map((s) => s[2])).toEqual(r.newIds[row]!.map((_, i) => i));
    }
  });
});
