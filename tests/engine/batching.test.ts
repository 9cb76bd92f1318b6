// Automatic batch size: the doubling search on a fake probe with a deterministic clock, the memory
// cap from the model config, and the real search on the hf-golden llama fixture.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { autoBatchSize, bytesPerRow, chooseGenerationBatchSize, generationProbe, suggestedBatchSize } from "../../engine/batching.ts";
import type { DecoderConfig } from "../../engine/config.ts";
import { DecoderModel } from "../../engine/model.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

/** A probe whose batch of b rows "takes" cost(b) ms on a fake clock; records every call. */
function fakeProbe(cost: (b: number) => number, fail?: (b: number) => boolean) {
  let now = 0;
  const calls: number[] = [];
  return {
    calls,
    clock: () => now,
    probe: async (b: number) => {
      calls.push(b);
      if (fail?.(b)) throw new Error(`Failed to allocate memory for requested buffer of size ${b * 1e9}\nstack…`);
      now += cost(b);
    },
  };
}

// A fixed 100 ms per call plus 10 ms per row: throughput b / (0.1 + 0.01 b) rises with b and flattens.
const overheadCost = (b: number) => 100 + 10 * b;
const rateOf = (b: number) => b / (overheadCost(b) / 1000);

describe("autoBatchSize (fake probe, injected clock)", () => {
  test("doubles while each step gains ≥ 5 %, keeps the last size that did", async () => {
    const f = fakeProbe(overheadCost);
    const r = await autoBatchSize(f.probe, { clock: f.clock });
    // rates: 1→9.1, 2→16.7, 4→28.6, 8→44.4, 16→61.5, 32→76.2, 64→86.5, 128→92.8 (+7.2 %), 256→96.2 (+3.7 %)
    expect(r.batch).toBe(128);
    expect(r.stoppedBy).toBe("no-gain");
    expect(Object.keys(r.tokensPerSecond).map(Number)).toEqual([1, 2, 4, 8, 16, 32, 64, 128, 256]);
    for (const [b, rate] of Object.entries(r.tokensPerSecond)) expect(rate).toBeCloseTo(rateOf(Number(b)), 9);
    expect(rateOf(256) / rateOf(128)).toBeLessThan(1.05);
    expect(rateOf(128) / rateOf(64)).toBeGreaterThan(1.05);
    // one untimed warm-up at the start size, then one timed call per size
    expect(f.calls).toEqual([1, 1, 2, 4, 8, 16, 32, 64, 128, 256]);
  });

  test("a throughput drop stops the search at the previous size", async () => {
    // Up to 8 rows cost the same (parallel hardware); 16 rows thrash.
    const f = fakeProbe((b) => (b <= 8 ? 100 : 1000));
    const r = await autoBatchSize(f.probe, { clock: f.clock, warmup: false });
    expect(r).toMatchObject({ batch: 8, stoppedBy: "no-gain" });
    expect(r.tokensPerSecond[16]).toBeCloseTo(16, 9);
    expect(f.calls).toEqual([1, 2, 4, 8, 16]);
  });

  test("a failing batch (out of memory) stops the search and keeps the last size that ran", async () => {
    const f = fakeProbe(overheadCost, (b) => b >= 16);
    const logs: string[] = [];
    const r = await autoBatchSize(f.probe, { clock: f.clock, log: (m) => logs.push(m) });
    expect(r.batch).toBe(8);
    expect(r.stoppedBy).toBe("error");
    expect(r.error).toBe("Failed to allocate memory for requested buffer of size 16000000000");
    expect(Object.keys(r.tokensPerSecond).map(Number)).toEqual([1, 2, 4, 8]);
    expect(logs.at(-1)).toMatch(/batch 16: failed .*; using 8/);
  });

  test("max caps the search; start and minGain are honoured", async () => {
    const f = fakeProbe(overheadCost);
    expect(await autoBatchSize(f.probe, { clock: f.clock, max: 6 })).toMatchObject({ batch: 4, stoppedBy: "max" });
    const g = fakeProbe(overheadCost);
    const r = await autoBatchSize(g.probe, { clock: g.clock, start: 4, minGain: 0.5, warmup: false });
    // 4→28.6, 8→44.4 (+56 %), 16→61.5 (+38 % < 50 %)
    expect(r).toMatchObject({ batch: 8, stoppedBy: "no-gain" });
    expect(g.calls).toEqual([4, 8, 16]);
  });

  test("a probe that reports tokens is measured in tokens per second", async () => {
    let now = 0;
    const r = await autoBatchSize(
      async (b) => {
        now += 1000; // one second whatever the batch: doubling always doubles throughput
        return b * 50;
      },
      { clock: () => now, max: 8, warmup: false },
    );
    expect(r.tokensPerSecond).toEqual({ 1: 50, 2: 100, 4: 200, 8: 400 });
    expect(r.batch).toBe(8);
  });

  test("clear errors when even the first batch fails, and for bad options", async () => {
    const f = fakeProbe(overheadCost, () => true);
    await expect(autoBatchSize(f.probe, { clock: f.clock })).rejects.toThrow(/even batch size 1 failed: Failed to allocate memory/);
    await expect(autoBatchSize(f.probe, { clock: f.clock, warmup: false, start: 2 })).rejects.toThrow(/even batch size 2 failed/);
    await expect(autoBatchSize(f.probe, { start: 0 })).rejects.toThrow(/start must be a positive integer/);
    await expect(autoBatchSize(f.probe, { start: 8, max: 4 })).rejects.toThrow(/max must be an integer ≥ start/);
  });
});

const CONFIG = {
  modelType: "llama",
  hiddenSize: 4096,
  intermediateSize: 14336,
  numLayers: 32,
  numHeads: 32,
  numKvHeads: 8,
  headDim: 128,
  vocabSize: 128256,
} as DecoderConfig;

describe("suggestedBatchSize (memory estimate)", () => {
  test("per-row bytes: KV cache of prompt + new tokens, one layer's activations, one logits row", () => {
    const T = 512;
    const S = T + 64;
    const kv = 2 * 2 * 32 * 8 * 128 * S;
    const act = T * (6 * 4096 + 3 * 14336 + (32 + 16) * 128) + 32 * T * T;
    expect(bytesPerRow({ config: CONFIG }, T)).toBe(4 * (kv + act + 128256));
    // Llama-3-8B shape, 512-token prompts: about 0.4 GB per row
    expect(bytesPerRow({ config: CONFIG }, T) / 1e9).toBeGreaterThan(0.3);
    expect(bytesPerRow({ config: CONFIG }, T) / 1e9).toBeLessThan(0.5);
  });

  test("the largest power of two that fits in half the free memory, at least 1, at most hardMax", () => {
    const row = bytesPerRow({ config: CONFIG }, 256);
    const model = { config: CONFIG, ep: "cpu" as const };
    expect(suggestedBatchSize(model, 256, { freeBytes: 2 * 10 * row })).toBe(8); // fits 10 → 8
    expect(suggestedBatchSize(model, 256, { freeBytes: 2 * 16 * row })).toBe(16);
    expect(suggestedBatchSize(model, 256, { freeBytes: 2 * 16 * row - 1 })).toBe(8);
    expect(suggestedBatchSize(model, 256, { freeBytes: 10 })).toBe(1);
    expect(suggestedBatchSize(model, 256, { freeBytes: 1e15 })).toBe(256);
    expect(suggestedBatchSize(model, 256, { freeBytes: 1e15, hardMax: 48 })).toBe(32);
    expect(suggestedBatchSize(model, 256, { freeBytes: 10 * row, fraction: 1 })).toBe(8);
    // longer prompts never allow a larger batch
    expect(suggestedBatchSize(model, 2048, { freeBytes: 2 * 16 * row })).toBeLessThanOrEqual(16);
    expect(() => suggestedBatchSize(model, 0)).toThrow(/promptTokens must be a positive integer/);
  });

  test("without freeBytes on CPU it uses os.freemem()", () => {
    const b = suggestedBatchSize({ config: CONFIG, ep: "cpu" }, 128);
    expect(Number.isInteger(b) && b >= 1 && b <= 256 && (b & (b - 1)) === 0).toBe(true);
  });
});

describe.skipIf(!hasShared())("batch-size search on a real model (hf-golden llama, CPU)", () => {
  let cacheDir = "";
  let model: DecoderModel;
  beforeAll(async () => {
    cacheDir = mkdtempSync(join(tmpdir(), "realign-batching-"));
    model = await DecoderModel.load(sharedPath("fixtures", "hf-golden", "llama"), { device: "cpu", cacheDir });
  });
  afterAll(async () => {
    await model?.close();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  test("the generation probe runs the engine and counts prefill + decode tokens", async () => {
    expect(await generationProbe(model, 12, 3)(2)).toBe(2 * 15);
  });

  test("chooseGenerationBatchSize returns a size it measured, within the memory cap", async () => {
    const logs: string[] = [];
    const r = await chooseGenerationBatchSize(model, { promptTokens: 16, probeNewTokens: 4, hardMax: 16, log: (m) => logs.push(m) });
    expect(r.cap).toBe(16); // the tiny model fits 16 rows in any machine's memory
    expect([1, 2, 4, 8, 16]).toContain(r.batch);
    expect(r.tokensPerSecond[r.batch]).toBeGreaterThan(0);
    for (const [b, rate] of Object.entries(r.tokensPerSecond)) {
      expect(Number(b)).toBeLessThanOrEqual(16);
      expect(Number.isFinite(rate) && rate > 0).toBe(true);
    }
    expect(logs[0]).toMatch(/batch-size search on cpu: prompts of 16 tokens, memory cap 16/);
  });
});
