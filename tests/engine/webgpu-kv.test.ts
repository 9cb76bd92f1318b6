// The device-resident KV cache on WebGPU: `present.*` outputs stay in GPU buffers and are fed back as the next
// step's `past_key_values.*` (no download + upload per step). Checked on the hf-golden llama fixture, a
// left-padded batch of two: the cache really is on the device, and decoding with it gives the same logits at
// every step as recomputing the whole sequence without a cache (1e-4), hence the same greedy tokens.
// Runs where a WebGPU adapter initialises (a GPU, or Mesa's lavapipe ≥ 23 on the CPU); skipped loudly elsewhere.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateGreedy } from "../../engine/generate.ts";
import { DecoderModel } from "../../engine/model.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const work = mkdtempSync(join(tmpdir(), "realign-webgpu-kv-"));
let model: DecoderModel | null = null;
let skipReason: string | null = hasShared() ? null : "../shared absent";
if (!skipReason) {
  try {
    model = await DecoderModel.load(sharedPath("fixtures", "hf-golden", "llama"), { device: "webgpu", cacheDir: work });
  } catch (e) {
    skipReason = `no WebGPU adapter (${(e as Error).message.split("\n")[0].slice(0, 160)})`;
  }
}
if (skipReason) console.warn(`\n!!! webgpu-kv tests SKIPPED: ${skipReason} !!!\n`);

describe.skipIf(skipReason !== null)("device-resident KV cache on WebGPU", () => {
  const prompts = [
    [1, 15, 27, 3, 44, 9],
    [1, 8, 31],
  ];
  beforeAll(() => expect(model!.ep).toBe("webgpu"));
  afterAll(async () => {
    await model?.close();
    rmSync(work, { recursive: true, force: true });
  });

  test("present.* come back as GPU buffers", async () => {
    const ids = prompts[0];
    const out = await model!.forward({ inputIds: [ids], attentionMask: [ids.map(() => 1)], positionIds: [[...ids.keys()]], logitPositions: [[ids.length - 1]] });
    expect(out.present!.keys[0].location).toBe("gpu-buffer");
    expect(out.present!.keys[0].dims).toEqual([1, model!.config.numKvHeads, ids.length, model!.config.headDim]);
    expect(out.logits.length).toBe(model!.config.vocabSize);
    for (const t of [...out.present!.keys, ...out.present!.values]) t.dispose();
  });

  test("cached (device) = uncached logits at every step, left-padded batch", async () => {
    const steps = 8;
    const cached = await generateGreedy(model!, prompts, { maxNewTokens: steps, returnStepLogits: true });
    const uncached = await generateGreedy(model!, prompts, { maxNewTokens: steps, returnStepLogits: true, useCache: false });
    expect(cached.newIds).toEqual(uncached.newIds);
    let worst = 0;
    for (let b = 0; b < prompts.length; b++) {
      for (let s = 0; s < steps; s++) {
        const [x, y] = [cached.stepLogits![b][s], uncached.stepLogits![b][s]];
        for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i] - y[i]));
      }
    }
    // The host round trip each step would have been: past uploaded + present downloaded, every layer.
    const { numLayers, numKvHeads, headDim } = model!.config;
    const T = Math.max(...prompts.map((p) => p.length));
    let bytes = 0;
    for (let s = 1; s < steps; s++) bytes += 2 * numLayers * prompts.length * numKvHeads * headDim * 4 * ((T + s - 1) + (T + s));
    console.log(`webgpu device KV: max |cached − uncached| ${worst.toExponential(2)}; host traffic avoided ${(bytes / 1024).toFixed(0)} KiB over ${steps - 1} decode steps`);
    expect(worst).toBeLessThan(1e-4);
  });
});
