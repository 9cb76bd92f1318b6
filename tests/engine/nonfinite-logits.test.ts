// Generation refuses non-finite logits (argmax over NaN would pick token 0 forever and print "!!!!!!"):
// a model whose forward pass returns a NaN at one step fails with NonFiniteError naming the step.
import { expect, test } from "bun:test";
import { generateGreedy } from "../../engine/generate.ts";
import { NonFiniteError } from "../../engine/dtype.ts";
import type { DecoderModel, ForwardInput, ForwardOutput } from "../../engine/model.ts";

/** A stand-in decoder with a vocabulary of 4: token 2 wins at every step, except a NaN at `badStep`. */
function fakeModel(badStep: number): DecoderModel {
  let step = 0;
  const forward = async (input: ForwardInput): Promise<ForwardOutput> => {
    const B = input.inputIds.length;
    const logits = new Float32Array(B * 4);
    for (let b = 0; b < B; b++) logits.set([0, 1, 5, 2], b * 4);
    if (step === badStep) logits[4 * (B - 1) + 1] = Number.NaN;
    step++;
    return { logits, dims: { batch: B, positions: 1, vocab: 4 } };
  };
  return { dir: "/fake/model", config: { vocabSize: 4 }, forward } as unknown as DecoderModel;
}

test("a NaN logit during greedy decoding is an error naming the step, not token 0", async () => {
  const ok = await generateGreedy(fakeModel(-1), [[1, 2]], { maxNewTokens: 3, useCache: false });
  expect(ok.newIds[0]).toEqual([2, 2, 2]);
  const error = await generateGreedy(fakeModel(1), [[1, 2], [3]], { maxNewTokens: 3, useCache: false }).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(NonFiniteError);
  expect((error as Error).message).toContain("non-finite logit (NaN) for token 1 at generation step 1 of sequence 1");
});
