// The hf-golden fixtures' expected.json (outputs of HF transformers) and comparisons against them:
// teacher-forced logits over the prompt and the first `extra` of HF's greedy tokens, scored as
// max |Δlogit| and relative RMS over the prompt positions, and top-1 agreement with HF's choice;
// the largest difference of a row-major output from an expected matrix; and of each sequence's logits.
import { argmax } from "../../engine/generate.ts";
import type { DecoderModel } from "../../engine/model.ts";

export interface GoldenExpected {
  single: { input_ids: number[]; position_ids: number[]; logits: number[][]; generate: { new_tokens: number[] } }[];
}

/** Teacher-forced: prompt + HF's first `extra` greedy tokens in one pass; logits at every position. */
export async function forwardAll(model: DecoderModel, s: GoldenExpected["single"][number], extra = 7): Promise<Float32Array> {
  const ids = [...s.input_ids, ...s.generate.new_tokens.slice(0, extra)];
  const range = [...Array(ids.length).keys()];
  return (await model.forward({ inputIds: [ids], attentionMask: [ids.map(() => 1)], positionIds: [range], logitPositions: [range], noCache: true })).logits;
}

/** Against HF: max |Δlogit| and relative RMS over the prompt positions, and teacher-forced top-1 agreement. */
export async function compareWithHF(model: DecoderModel, expected: GoldenExpected, extra = 7): Promise<{ maxAbs: number; relRms: number; agree: number; total: number }> {
  const V = model.config.vocabSize;
  let maxAbs = 0;
  let se = 0;
  let ss = 0;
  let agree = 0;
  let total = 0;
  for (const s of expected.single) {
    const logits = await forwardAll(model, s, extra);
    const P = s.input_ids.length;
    s.logits.forEach((row, t) =>
      row.forEach((v, c) => {
        const d = logits[t * V + c] - v;
        maxAbs = Math.max(maxAbs, Math.abs(d));
        se += d * d;
        ss += v * v;
      }),
    );
    for (let t = 0; t < P + extra; t++) {
      // HF's choice: argmax of its logits inside the prompt, then its greedy tokens.
      const ref = t < P - 1 ? argmax(new Float32Array(s.logits[t])) : s.generate.new_tokens[t - P + 1];
      total++;
      if (argmax(logits, t * V, V) === ref) agree++;
    }
  }
  return { maxAbs, relRms: Math.sqrt(se / ss), agree, total };
}

/** Largest |a − b| over the rows of `expected` where `keep` is true; `actual` is row-major [rows, width]. */
export function maxDiff(actual: Float32Array, expected: number[][], keep: (row: number) => boolean = () => true): number {
  const width = expected[0].length;
  let worst = 0;
  expected.forEach((row, r) => {
    if (!keep(r)) return;
    for (let c = 0; c < width; c++) worst = Math.max(worst, Math.abs(actual[r * width + c] - row[c]));
  });
  return worst;
}

/** Largest |Δlogit| over every position of each sequence alone (one pass each, no cache) against its expected logits. */
export async function maxLogitDiff(model: DecoderModel, singles: { input_ids: number[]; position_ids: number[]; logits: number[][] }[]): Promise<number> {
  let worst = 0;
  for (const s of singles) {
    const T = s.input_ids.length;
    const out = await model.forward({ inputIds: [s.input_ids], attentionMask: [s.input_ids.map(() => 1)], positionIds: [s.position_ids], logitPositions: [[...Array(T).keys()]], noCache: true });
    worst = Math.max(worst, maxDiff(out.logits, s.logits));
  }
  return worst;
}
