// Residual means are computed a batch of prompts at a time, and a pass that returns every layer's residuals holds
// them all to its end: batches are cut so that rows × padded length stays within RESIDUAL_PASS_TOKENS. Checked on
// the demo model with prompts long enough to force small batches: every pass within the budget (or a single row),
// every prompt read once and in order, and the means equal to those of one prompt per pass (the reference: no
// batching at all).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel, type ForwardInput } from "../../engine/model.ts";
import type { ChatEncoding } from "../../engine/tokenizer.ts";
import { mulberry32 } from "../../evals/datasets.ts";
import { RESIDUAL_PASS_TOKENS, residualMeans } from "../../rosi/directions.ts";
import { REPO_ROOT } from "../helpers/shared.ts";

let work = "";
let model: DecoderModel;
beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "realign-residual-batches-"));
  model = await DecoderModel.load(join(REPO_ROOT, "demo", "organism-llama"), { device: "cpu", cacheDir: work });
});
afterAll(async () => {
  await model?.close();
  rmSync(work, { recursive: true, force: true });
});

test(`batches of residual passes stay within ${RESIDUAL_PASS_TOKENS} tokens; the means equal one prompt per pass`, async () => {
  const rand = mulberry32(3);
  // 12 prompts of 40–480 tokens: 16 of the longest would be 7680 tokens, so the budget must split them.
  const lengths = Array.from({ length: 12 }, (_, i) => (i % 3 === 0 ? 480 : 40 + Math.floor(rand() * 200)));
  const encodings = lengths.map((n) => ({ ids: Array.from({ length: n }, () => 5 + Math.floor(rand() * 4000)) }) as unknown as ChatEncoding);
  const passes: { rows: number; T: number }[] = [];
  const seen: number[][] = [];
  const forward = model.forward.bind(model);
  model.forward = async (input: ForwardInput) => {
    passes.push({ rows: input.inputIds.length, T: input.inputIds[0].length });
    seen.push(...input.inputIds.map((row, b) => row.filter((_, t) => input.attentionMask[b][t] === 1)));
    return forward(input);
  };
  try {
    const positions = 3;
    const batched = await residualMeans(model, encodings, positions);
    const batchedPasses = passes.splice(0);
    expect(seen).toEqual(encodings.map((e) => e.ids)); // each prompt once, in order, unpadded
    const single = await residualMeans(model, encodings, positions, { batchSize: 1 });
    expect(passes.length).toBe(encodings.length);

    for (const p of batchedPasses) expect(p.rows === 1 || p.rows * p.T <= RESIDUAL_PASS_TOKENS).toBe(true);
    expect(batchedPasses.length).toBeGreaterThan(1);
    expect(batchedPasses.length).toBeLessThan(encodings.length); // short prompts still share passes

    let worst = 0;
    batched.means.forEach((layer, l) => layer.forEach((m, p) => m.forEach((x, h) => (worst = Math.max(worst, Math.abs(x - single.means[l][p][h]))))));
    expect(worst).toBeLessThan(1e-4);
  } finally {
    model.forward = forward;
  }
});
