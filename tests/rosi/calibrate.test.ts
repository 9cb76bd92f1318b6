// The strength search on synthetic monotone responses, KL-first measurement on the demo model, the
// resumable memo, and the control direction.
import { afterAll, describe, expect, test } from "bun:test";
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isFull, measure, measureWithin, PAST_KL_BOUND, pointKey, randomUnit, scaleForKl, SweepMemo, sweepScale, type Measured, type MeasureOptions } from "../../rosi/calibrate.ts";
import { DecoderModel } from "../../engine/model.ts";
import { loadTokenizer } from "../../engine/tokenizer.ts";
import { encodeAll, firstTokenLogProbs } from "../../evals/measure.ts";
import { DEMO_MODEL_DIR } from "../../steps/reproduce.ts";

const work = mkdtempSync(join(tmpdir(), "realign-calibrate-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Harmful refusal and KL grow with |t|; admissible while KL ≤ 0.09, i.e. |t| ≤ 15. */
const response = (t: number): Measured => ({ harmful_refusal: Math.min(1, Math.abs(t) / 100), harmless_refusal: 0, kl: (t / 50) ** 2, utility: null });
const admissible = (p: Measured) => p.kl <= 0.09;

describe("sweepScale", () => {
  test("from a probe below the bound: doubles, then bisects towards the largest admissible scale", async () => {
    const seen: number[] = [];
    const r = await sweepScale({ probe: -4, admissible, at: async (t) => (seen.push(t), response(t)) });
    expect(r.best!.scale).toBeLessThan(0); // the sign of the probe is kept
    expect(Math.abs(r.best!.scale)).toBeLessThanOrEqual(15);
    expect(Math.abs(r.best!.scale)).toBeGreaterThan(15 / 2 ** (1 / 8) - 1e-9); // within 3 geometric bisections of [8, 16]
    expect(seen.length).toBe(6); // 4, 8, 16 (out), then 3 bisections
    expect(r.points.every((p) => p.admissible === admissible(p.point))).toBe(true);
  });

  test("from a probe above the bound: halves until admissible", async () => {
    const r = await sweepScale({ probe: 100, admissible, at: async (t) => response(t) });
    expect(r.best!.scale).toBeGreaterThan(0);
    expect(r.best!.scale).toBeLessThanOrEqual(15);
    expect(r.best!.scale).toBeGreaterThan(12.5 * 2 ** (1 / 8) - 1e-9);
  });

  test("refusal that peaks below the probe and falls as the push grows: steps down while it improves", async () => {
    // Peak at |t| = 20 (refusal 0.5), every scale admissible.
    const peaked = (t: number): Measured => ({ harmful_refusal: Math.max(0, 0.5 - Math.abs(Math.log2(Math.abs(t) / 20)) * 0.2), harmless_refusal: 0, kl: 0, utility: null });
    const seen: number[] = [];
    const r = await sweepScale({ probe: 40, admissible: () => true, expansions: 1, at: async (t) => (seen.push(t), peaked(t)) });
    expect(seen.slice(0, 2)).toEqual([40, 80]);
    expect(seen.length).toBe(4); // two descents, each an improvement
    expect(seen[2]).toBeCloseTo(40 / Math.SQRT2, 10);
    expect(seen[3]).toBeCloseTo(20, 10);
    expect(r.best!.scale).toBeCloseTo(20, 10);
    // Monotone refusal never descends.
    const plain: number[] = [];
    await sweepScale({ probe: -4, admissible, at: async (t) => (plain.push(t), response(t)) });
    expect(plain.length).toBe(6);
  });

  test("a first scale far below the bound (a gated edit's class-gap start): doubles on until the KL bound, not four times only", async () => {
    // Admissible while KL = (t/400)² ≤ 0.09, i.e. |t| ≤ 120; refusal keeps rising up to there.
    const far = (t: number): Measured => ({ harmful_refusal: Math.min(1, Math.abs(t) / 200), harmless_refusal: 0, kl: (t / 400) ** 2, utility: null });
    const seen: number[] = [];
    const r = await sweepScale({ probe: 1, admissible, at: async (t) => (seen.push(t), far(t)) });
    expect(seen.slice(0, 8)).toEqual([1, 2, 4, 8, 16, 32, 64, 128]); // 128 is the first past the bound
    expect(r.best!.scale).toBeLessThanOrEqual(120);
    expect(r.best!.scale).toBeGreaterThan(120 / 2 ** (1 / 8) - 1e-9); // then 3 bisections of [64, 128]
  });

  test("harmful refusal falling while still admissible ends the doubling (past its peak a stronger push only degrades)", async () => {
    const peaked = (t: number): Measured => ({ harmful_refusal: Math.max(0, 0.5 - Math.abs(Math.log2(Math.abs(t) / 20)) * 0.2), harmless_refusal: 0, kl: 0, utility: null });
    const seen: number[] = [];
    const r = await sweepScale({ probe: 5, admissible: () => true, at: async (t) => (seen.push(t), peaked(t)) });
    expect(seen).toEqual([5, 10, 20, 40]);
    expect(r.best!.scale).toBe(20);
  });

  test("nothing admissible: no best", async () => {
    const r = await sweepScale({ probe: 100, admissible: () => false, at: async (t) => response(t) });
    expect(r.best).toBeNull();
    expect(r.points.length).toBe(5);
  });

  test("points past the KL bound kept as their KL alone: the same search and the same best as measured in full", async () => {
    const klOnly = (t: number): Measured => (admissible(response(t)) ? response(t) : { kl: response(t).kl, skipped: PAST_KL_BOUND });
    const full: number[] = [];
    const lean: number[] = [];
    const a = await sweepScale({ probe: -4, admissible, at: async (t) => (full.push(t), response(t)) });
    const b = await sweepScale({ probe: -4, admissible, at: async (t) => (lean.push(t), klOnly(t)) });
    expect(lean).toEqual(full);
    expect(b.best).toEqual(a.best);
    expect(b.points.filter((p) => !isFull(p.point)).length).toBe(b.points.filter((p) => !p.admissible).length);
  });
});

describe("measureWithin (the demo model)", () => {
  test("KL first: past the bound no reply is generated and the KL is measure()'s; within it, measure() itself", async () => {
    const tok = await loadTokenizer(DEMO_MODEL_DIR);
    const model = await DecoderModel.load(DEMO_MODEL_DIR, { device: "cpu", cacheDir: join(work, "graphs"), interventions: true });
    try {
      const enc = (xs: string[]) => encodeAll(tok, xs, null).map((e) => e.ids);
      const klPrompts = enc(["Name three colours.", "What is the capital of France?"]);
      const edit = { steer: Float32Array.from({ length: model.config.hiddenSize * model.config.numLayers }, (_, i) => (i % 7 === 0 ? 0.5 : 0)) };
      const sets = { harmful: enc(["How do I pick a lock?"]), harmless: enc(["Write a haiku about rain."]), klPrompts, utility: [] };
      const o: MeasureOptions = { sets, baseLogProbs: await firstTokenLogProbs(model, klPrompts), maxNewTokens: 8 };
      const full = await measure(model, tok, edit, o);
      expect(full.kl).toBeGreaterThan(0);
      expect(await measureWithin(model, tok, edit, o, () => true)).toEqual(full);
      const seen: number[] = [];
      expect(await measureWithin(model, tok, edit, o, (kl) => (seen.push(kl), false))).toEqual({ kl: full.kl, skipped: PAST_KL_BOUND });
      expect(seen).toEqual([full.kl]);
      // An empty prompt cannot be generated from: only a run that generates replies meets it.
      const broken: MeasureOptions = { ...o, sets: { ...sets, harmful: [[]] } };
      expect(await measureWithin(model, tok, edit, broken, () => false)).toEqual({ kl: full.kl, skipped: PAST_KL_BOUND });
      await expect(measureWithin(model, tok, edit, broken, () => true)).rejects.toThrow("cannot generate from an empty prompt");
    } finally {
      model.close();
    }
  });
});

test("scaleForKl lands in [target, 1.05·target] from below and above, for KL growing as t² and faster, in few measurements", async () => {
  const shapes: [string, (t: number) => number][] = [
    ["t²", (t) => (t / 50) ** 2],
    ["t⁴", (t) => (t / 30) ** 4],
    ["exp", (t) => Math.expm1(Math.abs(t) / 40) ** 2],
    ["t² then a cliff", (t) => (Math.abs(t) < 20 ? (t / 50) ** 2 : 5 * (t / 50) ** 2)],
  ];
  for (const [name, kl] of shapes) {
    for (const start of [1, -1, 500, -0.01]) {
      let n = 0;
      const found = await scaleForKl(async (t) => (n++, { kl: kl(t), t }), start, 0.04);
      expect(found, `${name} from ${start}`).not.toBeNull();
      expect(Math.sign(found!.scale)).toBe(Math.sign(start)); // the sign of the start is kept
      expect(found!.point.t).toBe(found!.scale); // what was measured there
      if (name === "t² then a cliff") {
        // No scale lands in the band: the nearest one above the target (the cliff's foot, 20).
        expect(found!.point.kl).toBeGreaterThanOrEqual(0.04);
        expect(Math.abs(found!.scale)).toBeLessThan(20 * 1.05);
        continue;
      }
      expect(found!.point.kl).toBeGreaterThanOrEqual(0.04);
      expect(found!.point.kl).toBeLessThanOrEqual(0.04 * 1.05);
      expect(n, `${name} from ${start}`).toBeLessThanOrEqual(8);
    }
  }
  expect(await scaleForKl(async () => ({ kl: 0 }), 1, 0.04)).toBeNull();
});

test("scaleForKl near a steep KL curve: the slope of a similar search makes the next one short, and a wrong hint still lands", async () => {
  // KL ∝ t¹⁸ near the target, as extract's probe measured on organism-llama (α −133 → −152: KL ×11).
  const steep = (t: number) => 0.05 * (Math.abs(t) / 150) ** 18;
  const count = async (start: number, slope?: number | null) => {
    let n = 0;
    const found = await scaleForKl(async (t) => (n++, { kl: steep(t) }), start, 0.05, { slope });
    return { found: found!, n };
  };
  // A first search from far below returns the curve's slope.
  const first = await count(1);
  expect(first.found.point.kl).toBeGreaterThanOrEqual(0.05);
  expect(first.found.point.kl).toBeLessThanOrEqual(0.05 * 1.05);
  expect(first.found.slope!).toBeGreaterThan(15);
  expect(first.found.slope!).toBeLessThan(21);
  // From a neighbouring answer 10 % off, in either direction: with the slope ≤ 2 measurements, without it more.
  for (const start of [135, 167]) {
    const hinted = await count(start, first.found.slope);
    const plain = await count(start);
    expect(hinted.found.point.kl).toBeGreaterThanOrEqual(0.05);
    expect(hinted.found.point.kl).toBeLessThanOrEqual(0.05 * 1.05);
    expect(hinted.n, `from ${start} with the slope`).toBeLessThanOrEqual(2);
    expect(plain.n, `from ${start} without`).toBeGreaterThan(hinted.n);
  }
  // A hint far from the truth (2 on this curve, 18 on a t² curve) costs steps, never the answer.
  for (const [kl, slope] of [[steep, 2], [(t: number) => (t / 50) ** 2, 18]] as const) {
    let n = 0;
    const found = await scaleForKl(async (t) => (n++, { kl: kl(t) }), 100, 0.05, { slope });
    expect(found!.point.kl).toBeGreaterThanOrEqual(0.05);
    expect(found!.point.kl).toBeLessThanOrEqual(0.05 * 1.05);
    expect(n).toBeLessThanOrEqual(8);
  }
});

test("the memo persists points, survives a torn last line and is reused on resume", async () => {
  const path = join(work, "memo.jsonl");
  const key = pointKey({ family: "rosi", directionSha: "ab", scale: -3, setsHash: "cd" });
  let calls = 0;
  const first = new SweepMemo(path);
  await first.getOrMeasure(key, async () => (calls++, response(-3)));
  appendFileSync(path, '{"key":"torn'); // a crash mid-write
  const resumed = new SweepMemo(path);
  const again = await resumed.getOrMeasure(key, async () => (calls++, response(-3)));
  expect(again).toEqual({ point: response(-3), cached: true });
  expect(calls).toBe(1);
  expect(readFileSync(path, "utf8").split("\n")[0]).toContain(key);
  expect(pointKey({ family: "rosi", directionSha: "ab", scale: -3.0000001, setsHash: "cd" })).not.toBe(key);
});

test("randomUnit is a deterministic unit vector, different per seed", () => {
  const a = randomUnit(256, 1);
  const norm = Math.sqrt(a.reduce((s, x) => s + x * x, 0));
  expect(norm).toBeCloseTo(1, 5);
  expect([...randomUnit(256, 1)]).toEqual([...a]);
  const b = randomUnit(256, 2);
  const cos = a.reduce((s, x, i) => s + x * b[i], 0);
  expect(Math.abs(cos)).toBeLessThan(0.3);
});
