// REALIGN_MAX_BATCH (engine/batch-cap.ts) on the tiny hf-golden llama: a cap of 2 on 5 prompts gives
// the same greedy (and seeded sampled) tokens as no cap while no session run sees more than 2 rows;
// a capped one-shot forward returns the same logits, residuals and KV cache shapes; nonsense values
// are a BatchCapError naming the variable; without the variable one run takes the whole batch.
import { afterAll, afterEach, beforeAll, describe, expect, spyOn, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BatchCapError, batchChunks, maxBatch } from "../../engine/batch-cap.ts";
import { IO } from "../../engine/decoder.ts";
import { generate, generateGreedy, leftPad } from "../../engine/generate.ts";
import { DecoderModel } from "../../engine/model.ts";
import type { ort } from "../../engine/session.ts";
import { UsageError } from "../../util/errors.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const saved = process.env.REALIGN_MAX_BATCH;
afterEach(() => {
  if (saved === undefined) delete process.env.REALIGN_MAX_BATCH;
  else process.env.REALIGN_MAX_BATCH = saved;
});

describe("REALIGN_MAX_BATCH", () => {
  test("unset or empty: no cap; a positive whole number is the cap; anything else is a clear error naming the variable", () => {
    expect(maxBatch({})).toBeNull();
    expect(maxBatch({ REALIGN_MAX_BATCH: " " })).toBeNull();
    expect(maxBatch({ REALIGN_MAX_BATCH: "3" })).toBe(3);
    for (const bad of ["0", "-1", "abc", "2.5"]) {
      expect(() => maxBatch({ REALIGN_MAX_BATCH: bad })).toThrow(BatchCapError);
      expect(() => maxBatch({ REALIGN_MAX_BATCH: bad })).toThrow(`REALIGN_MAX_BATCH must be a positive whole number of rows per batch, got "${bad}"`);
    }
    // A usage error: the fleet fails such a job at once instead of retrying it.
    expect(new BatchCapError("x")).toBeInstanceOf(UsageError);
    expect(batchChunks(5, 2)).toEqual([[0, 2], [2, 4], [4, 5]]);
  });
});

describe.skipIf(!hasShared())("REALIGN_MAX_BATCH on hf-golden llama", () => {
  let cacheDir = "";
  let model: DecoderModel;
  beforeAll(async () => {
    cacheDir = mkdtempSync(join(tmpdir(), "realign-batch-cap-"));
    model = await DecoderModel.load(sharedPath("fixtures", "hf-golden", "llama"), { device: "cpu", cacheDir });
  });
  afterAll(async () => {
    await model?.close();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  // Five prompts of different lengths (so chunks are padded differently from the whole batch).
  const prompts = [
    [47, 211, 38, 53, 204, 116, 152],
    [249, 143, 177, 23, 233, 154, 30, 171, 158, 236, 124],
    [12, 99, 5],
    [200, 201, 202, 203, 204, 205, 206, 207, 208],
    [77, 66, 55, 44, 33],
  ];

  /** Rows of every session run while `f` runs. */
  const rowsPerRun = async <T>(f: () => Promise<T>): Promise<{ value: T; rows: number[] }> => {
    const spy = spyOn(model.session, "run");
    try {
      const value = await f();
      const rows = spy.mock.calls.map((c) => (c[0] as Record<string, ort.Tensor>)[IO.inputIds]!.dims[0]!);
      return { value, rows };
    } finally {
      spy.mockRestore();
    }
  };

  test("greedy and seeded sampling: a cap of 2 gives the tokens of no cap, and no run has more than 2 rows", async () => {
    const opts = { maxNewTokens: 8, padId: 0 };
    delete process.env.REALIGN_MAX_BATCH;
    const free = await rowsPerRun(() => generateGreedy(model, prompts, opts));
    expect(free.rows.every((r) => r === 5)).toBe(true);
    const sampling = { temperature: 0.8, topK: 20, seed: 7 };
    const freeSampled = await generate(model, prompts.slice(0, 3), { ...opts, sampling, numSamples: 2 });

    process.env.REALIGN_MAX_BATCH = "2";
    const tokens: number[][] = prompts.map(() => []);
    const capped = await rowsPerRun(() => generateGreedy(model, prompts, { ...opts, onToken: (row, t) => tokens[row]!.push(t) }));
    expect(capped.value.newIds).toEqual(free.value.newIds);
    expect(capped.value.finishReasons).toEqual(free.value.finishReasons!);
    expect(tokens).toEqual(free.value.newIds); // onToken rows are rows of the whole request
    expect(Math.max(...capped.rows)).toBe(2);
    // 3 chunks (2 + 2 + 1 rows), 8 steps each.
    expect(capped.rows.length).toBe(3 * 8);
    expect(capped.value.stats.prefillTokens).toBe(free.value.stats.prefillTokens);
    const cappedSampled = await generate(model, prompts.slice(0, 3), { ...opts, sampling, numSamples: 2 });
    expect(cappedSampled.newIds).toEqual(freeSampled.newIds);
    expect(cappedSampled.seed).toBe(7);
  });

  test("a capped one-shot forward: runs of at most 2 rows, the same logits and residuals, the KV cache joined along the batch", async () => {
    const batch = leftPad(prompts, 0);
    const T = batch.inputIds[0]!.length;
    const input = { ...batch, logitPositions: prompts.map(() => [T - 2, T - 1]), residuals: true };
    delete process.env.REALIGN_MAX_BATCH;
    const free = await model.forward(input);
    process.env.REALIGN_MAX_BATCH = "2";
    const capped = await rowsPerRun(() => model.forward(input));
    expect(capped.rows).toEqual([2, 2, 1]);
    const out = capped.value;
    expect(out.dims).toEqual(free.dims);
    const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);
    expect(out.logits.length).toBe(free.logits.length);
    expect(maxDiff(out.logits, free.logits)).toBeLessThan(1e-5);
    expect(out.residuals!.length).toBe(free.residuals!.length);
    out.residuals!.forEach((r, l) => expect(maxDiff(r, free.residuals![l]!)).toBeLessThan(1e-5));
    expect(out.present!.keys[0]!.dims).toEqual(free.present!.keys[0]!.dims);
    expect(maxDiff(out.present!.values[1]!.data as Float32Array, free.present!.values[1]!.data as Float32Array)).toBeLessThan(1e-5);
  });

  test("an invalid cap stops generation with the variable's name", async () => {
    for (const bad of ["0", "-1", "abc"]) {
      process.env.REALIGN_MAX_BATCH = bad;
      await expect(generateGreedy(model, prompts, { maxNewTokens: 2 })).rejects.toThrow(/REALIGN_MAX_BATCH must be a positive whole number/);
    }
  });
});
