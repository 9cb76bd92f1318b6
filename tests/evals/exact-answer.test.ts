// The exact-answer utility from one teacher-forced pass (evals/exact-answer.ts) against its reference:
// greedy generation of every item, trimmed, compared with the answer.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { loadTokenizer } from "../../engine/tokenizer.ts";
import { conflicts, exactAnswers, UTILITY_TOKENS } from "../../evals/exact-answer.ts";
import { firstTokenLogProbs, generateTexts } from "../../evals/measure.ts";
import { utilityTask } from "../../evals/datasets.ts";
import { randomUnit } from "../../rosi/calibrate.ts";
import { REPO_ROOT } from "../helpers/shared.ts";

test("conflicts: a reply that begins with this text can no longer be the answer once trimmed", () => {
  expect(conflicts("The number after 5 is 7.", "The number after 5 is 6.")).toBe(true);
  expect(conflicts("The number after", "The number after 5 is 6.")).toBe(false); // still on course
  expect(conflicts("  The num", "The number after 5 is 6.")).toBe(false); // leading space is trimmed
  expect(conflicts("The number after 5 is 6.\n\n", "The number after 5 is 6.")).toBe(false); // trailing space too
  expect(conflicts("The number after 5 is 6. And", "The number after 5 is 6.")).toBe(true);
  expect(conflicts("The number after 11", "The number after 10 is 11.")).toBe(true);
  expect(conflicts("The number after 1 ", "The number after 1.")).toBe(false); // "1 ." may fold into "1."
  expect(conflicts("The \uFFFD", "The number")).toBe(false);
  expect(conflicts("   ", "The number")).toBe(false);
});

describe("exact answers on the demo model", () => {
  const dir = resolve(REPO_ROOT, "demo", "organism-llama");
  const work = mkdtempSync(join(tmpdir(), "realign-exact-"));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  test("the verdicts equal greedy generation's, unedited and under edits that break some answers; the forward pass decides most items", async () => {
    const tok = await loadTokenizer(dir);
    const model = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    try {
      const items = utilityTask(dir)!.slice(0, 96).map((u) => ({ ids: tok.encodeChat(u.prompt).ids, answer: u.answer }));
      const L = model.config.numLayers;
      const H = model.config.hiddenSize;
      const steerAt = (norm: number) => {
        const steer = new Float32Array(L * H);
        steer.set(randomUnit(H, 3).map((x) => x * norm), H);
        return steer;
      };
      const rates: number[] = [];
      for (const steer of [undefined, steerAt(40), steerAt(120)]) {
        const fast = await exactAnswers(model, tok, items, { maxNewTokens: UTILITY_TOKENS, steer });
        const texts = (await generateTexts(model, tok, items.map((i) => i.ids), { maxNewTokens: UTILITY_TOKENS, steer, batchSize: 32 })).texts;
        const reference = texts.map((t, i) => t.trim() === items[i].answer);
        expect(fast.correct).toEqual(reference);
        if (!steer) expect(fast.generated).toBeLessThan(items.length / 4);
        rates.push(reference.filter(Boolean).length);
        console.log(`steer ${steer ? "on" : "off"}: ${rates.at(-1)}/${items.length} correct, ${fast.generated} generated`);
      }
      // The edits did break answers, so the wrong-answer verdicts were exercised too.
      expect(Math.min(...rates)).toBeLessThan(rates[0]);
      expect(rates[0]).toBeGreaterThan(items.length / 2);
    } finally {
      await model.close();
    }
  }, 120_000);

  test("firstTokenLogProbs batches by length and answers in the prompts' order: each row equals that prompt alone", async () => {
    const tok = await loadTokenizer(dir);
    const model = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache"), interventions: true });
    try {
      const prompts = utilityTask(dir)!.slice(0, 9).map((u, i) => tok.encodeChat(`${"Please. ".repeat(i % 4)}${u.prompt}`).ids);
      const batched = await firstTokenLogProbs(model, prompts, {}, 4);
      for (let i = 0; i < prompts.length; i++) {
        const [alone] = await firstTokenLogProbs(model, [prompts[i]]);
        let worst = 0;
        for (let v = 0; v < alone.length; v++) worst = Math.max(worst, Math.abs(alone[v] - batched[i][v]));
        expect(worst).toBeLessThan(1e-4);
      }
    } finally {
      await model.close();
    }
  });
});
