// Exact-answer utility: is the model's greedy reply, trimmed, the item's answer? The same verdict as
// generating up to `maxNewTokens` tokens and comparing, mostly from one teacher-forced forward pass.
//
// Greedy decoding is deterministic, so the reply is known as far as the argmax follows a token sequence
// that is fed in. Feed the prompt and the answer's own tokens a₁…a_A, and read the logits at the last
// prompt token and at every answer token (A + 1 positions):
//   argmax_j = a_j for every j, then an end-of-sequence id      → the reply is a₁…a_A, EOS: decided
//   argmax_j = EOS at some j                                    → the reply is a₁…a_{j−1}: decided
//   argmax_j = t ∉ {a_j, EOS}                                   → the reply begins a₁…a_{j−1}·t; decided
//                                                                 false when that text already conflicts
//                                                                 with the answer, otherwise undecided
// An argmax whose lead over the runner-up is under ARGMAX_MARGIN (the one-pass and the cached
// step-by-step logits agree to float rounding, not beyond) leaves the item undecided too, as does an
// answer longer than maxNewTokens − 1 tokens. Undecided items are generated, so every verdict is the
// generated one. On the organism's successor task nearly every item is decided by the forward pass,
// which replaces 24 decode steps by one pass over ~40 tokens.
import type { DecoderModel } from "../engine/model.ts";
import { leftPad } from "../engine/generate.ts";
import type { ModelTokenizer } from "../engine/tokenizer.ts";
import { generateTexts, type Interventions } from "./measure.ts";

/** Tokens an exact-answer reply may take (calibration and validation alike). */
export const UTILITY_TOKENS = 24;
/** Smallest lead of the argmax logit over the runner-up for the forward pass to stand for a decode step. */
export const ARGMAX_MARGIN = 1e-3;
/** Logit floats one forward pass may return (rows × positions × vocabulary), which bounds the batch. */
const MAX_LOGIT_FLOATS = 1 << 24;

export interface ExactAnswerItem {
  /** The chat-rendered prompt, ending where the reply starts. */
  ids: number[];
  answer: string;
}

export interface ExactAnswerResult {
  correct: boolean[];
  /** Items whose verdict needed generation (the forward pass did not decide them). */
  generated: number;
}

type Verdict = boolean | "undecided";

/** Per item: does the greedy reply (≤ maxNewTokens tokens, special tokens skipped), trimmed, equal the answer? */
export async function exactAnswers(model: DecoderModel, tok: ModelTokenizer, items: ExactAnswerItem[], opts: { maxNewTokens: number; signal?: AbortSignal; batchSize?: number } & Interventions): Promise<ExactAnswerResult> {
  const iv: Interventions = { rosiVectors: opts.rosiVectors, rosiEmbed: opts.rosiEmbed, steer: opts.steer, editKeys: opts.editKeys };
  const V = model.config.vocabSize;
  const eos = new Set(tok.eosIds);
  const verdicts: Verdict[] = items.map(() => "undecided");
  const answers = items.map((it) => tok.encode(it.answer, { addSpecialTokens: false }));
  const fits = items.map((_, i) => answers[i].length > 0 && answers[i].length + 1 <= opts.maxNewTokens);
  const order = items.map((_, i) => i).filter((i) => fits[i]).sort((a, b) => items[a].ids.length + answers[a].length - (items[b].ids.length + answers[b].length));
  let start = 0;
  while (start < order.length) {
    if (opts.signal?.aborted) throw new Error("aborted");
    // K positions per row: the longest answer in the batch, plus one for the token after it.
    let end = start;
    let K = 0;
    while (end < order.length && end - start < (opts.batchSize ?? 32)) {
      const k = Math.max(K, answers[order[end]].length + 1);
      if (end > start && (end - start + 1) * k * V > MAX_LOGIT_FLOATS) break;
      K = k;
      end++;
    }
    const chunk = order.slice(start, end);
    start = end;
    const sequences = chunk.map((i) => [...items[i].ids, ...answers[i]]);
    const batch = leftPad(sequences, tok.padId ?? 0);
    const T = batch.inputIds[0].length;
    // The last K positions of every row (left padding puts every row's last token at T − 1); a row reads
    // its last A + 1 of them.
    const positions = Array.from({ length: K }, (_, j) => T - K + j);
    const out = await model.forward({ ...batch, logitPositions: chunk.map(() => positions), noCache: true, ...iv });
    chunk.forEach((i, b) => {
      const a = answers[i];
      const rowLogits = (j: number) => out.logits.subarray((b * K + (K - a.length - 1) + j) * V, (b * K + (K - a.length - 1) + j + 1) * V);
      verdicts[i] = verdictOf(tok, a, items[i].answer, eos, rowLogits);
    });
  }
  const undecided = items.map((_, i) => i).filter((i) => verdicts[i] === "undecided");
  if (undecided.length) {
    const texts = (await generateTexts(model, tok, undecided.map((i) => items[i].ids), { maxNewTokens: opts.maxNewTokens, signal: opts.signal, batchSize: opts.batchSize ?? 32, ...iv })).texts;
    undecided.forEach((i, k) => (verdicts[i] = texts[k].trim() === items[i].answer));
  }
  return { correct: verdicts.map((v) => v === true), generated: undecided.length };
}

/** The verdict from the logits after the prompt (j = 0) and after each answer token (see the opening comment). */
function verdictOf(tok: ModelTokenizer, a: number[], answer: string, eos: Set<number>, logitsAt: (j: number) => Float32Array): Verdict {
  for (let j = 0; j <= a.length; j++) {
    const { best, lead } = top(logitsAt(j));
    if (!(lead >= ARGMAX_MARGIN)) return "undecided";
    if (j < a.length && best === a[j]) continue;
    if (eos.has(best)) return tok.decode([...a.slice(0, j), best], { skipSpecialTokens: true }).trim() === answer;
    return conflicts(tok.decode([...a.slice(0, j), best], { skipSpecialTokens: true }), answer) ? false : "undecided";
  }
  return "undecided";
}

/**
 * Can no reply that begins with `text` equal `answer` once trimmed? A replacement character (half of a
 * character whose bytes continue in the next token) decides nothing, and trailing whitespace is left
 * out (a decoder's clean-up may fold it into the next token: "a ." → "a.").
 */
export function conflicts(text: string, answer: string): boolean {
  if (text.includes("\uFFFD")) return false;
  const u = text.trim();
  if (u.length <= answer.length) return !answer.startsWith(u);
  return !u.startsWith(answer) || u.slice(answer.length).trim() !== "";
}

/** The argmax of a logit row (the first on ties, as decoding takes) and its lead over the runner-up. */
function top(row: Float32Array): { best: number; lead: number } {
  let best = 0;
  let first = -Infinity;
  let second = -Infinity;
  for (let i = 0; i < row.length; i++) {
    const v = row[i];
    if (v > first) {
      second = first;
      first = v;
      best = i;
    } else if (v > second) second = v;
  }
  return { best, lead: first - second };
}
