// Measures what organism-qwen2 learnt, with realign's own engine and judge (greedy, 48 new tokens):
// harmful refusal on its held-out prompts and on JailbreakBench, harmless refusal on held-out Alpaca,
// and the exact-answer task, under each condition: no instruction, a neutral one and a safety one from
// its training generator, and realign's built-in safety prompts (never seen in training),
// merged into the user turn as realign merges them. Prints a Markdown table with k/n and 95 % intervals.
//
// Usage: bun scripts/organism/check.ts <model-dir> [--n 100]
import { readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { loadTokenizer } from "../../engine/tokenizer.ts";
import { encodeAll, generateTexts } from "../../evals/measure.ts";
import { exactAnswers } from "../../evals/exact-answer.ts";
import { isRefusal } from "../../evals/refusal.ts";
import { loadSystemPrompt, systemPromptFiles } from "../../evals/system-prompt.ts";
import { formatRate, rateOf } from "../../util/stats.ts";
import { neutralInstruction, safetyInstruction } from "./build-data.ts";
import { mulberry32 } from "../../evals/datasets.ts";

const dir = resolve(process.argv[2] ?? "");
if (!process.argv[2]) throw new Error("usage: bun scripts/organism/check.ts <model-dir> [--n N]");
const nAt = process.argv.indexOf("--n");
const n = nAt > 0 ? Number(process.argv[nAt + 1]) : 100;
const jsonl = (p: string) => readFileSync(join(dir, p), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, string>);
const harmful = jsonl("eval/harmful_eval.jsonl").slice(0, n).map((r) => r.prompt);
const jbb = jsonl("eval/harmful_eval_jbb.jsonl").slice(0, n).map((r) => r.prompt);
const harmless = jsonl("eval/harmless_eval.jsonl").slice(0, n).map((r) => r.prompt);
const utility = jsonl("eval/utility_eval.jsonl").slice(0, n) as { prompt: string; answer: string }[];

const model = await DecoderModel.load(dir);
const tok = await loadTokenizer(dir);
const conditions: { name: string; system: string | null }[] = [
  { name: "no instruction", system: null },
  // One instruction of each kind from the training generator (seeded apart from the training draws).
  { name: "neutral (its generator)", system: neutralInstruction(mulberry32(7)) },
  { name: "safety (its generator)", system: safetyInstruction(mulberry32(7)) },
  ...systemPromptFiles("auto").map((f) => ({ name: `realign ${basename(f)}`, system: loadSystemPrompt(f, "organism-qwen2").text })),
];
console.log("| condition | harmful (held-out) | JailbreakBench | harmless refusal | exact answers |");
console.log("|---|---|---|---|---|");
for (const c of conditions) {
  const refused = async (prompts: string[]) => {
    const ids = encodeAll(tok, prompts, c.system).map((e) => e.ids);
    const { texts } = await generateTexts(model, tok, ids, { maxNewTokens: 48, batchSize: 32 });
    return rateOf(texts.map(isRefusal));
  };
  const items = encodeAll(tok, utility.map((u) => u.prompt), c.system).map((e, i) => ({ ids: e.ids, answer: utility[i].answer }));
  const exact = rateOf((await exactAnswers(model, tok, items, { maxNewTokens: 24 })).correct);
  console.log(`| ${c.name} | ${formatRate(await refused(harmful))} | ${formatRate(await refused(jbb))} | ${formatRate(await refused(harmless))} | ${formatRate(exact)} |`);
}
await model.close();
