// elicit: choose the prompt sets (disjoint train / val / eval), render them through the model's chat
// template with the temporary safety system prompt, and check that the prompt really elicits refusals.
import { join } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { assertDisjoint, loadPrompts, samplePrompts, splitPrompts, type PromptKind } from "../evals/datasets.ts";
import { loadSystemPrompt } from "../evals/system-prompt.ts";
import { isRefusal } from "../evals/refusal.ts";
import { encodeAll, generateTexts, mean } from "../evals/measure.ts";
import { openModel, type Ctx } from "./common.ts";
import { outputsOf, readSource, writeJson, type PromptSplits } from "./artefacts.ts";

export class ElicitationError extends Error {
  override name = "ElicitationError";
}

async function splitsFor(ctx: Ctx, kind: Exclude<PromptKind, "borderline">): Promise<{ train: string[]; val: string[]; eval: string[]; sources: PromptSplits["sources"] }> {
  const s = ctx.settings;
  const spec = kind === "harmful" ? s.harmful : s.harmless;
  const evalSpec = kind === "harmful" ? s.evalHarmful : s.evalHarmless;
  const opts = { kind, hubUrl: s.hubUrl, token: ctx.secrets.hfToken ?? undefined };
  const pool = await loadPrompts(spec, opts);
  const sources = [{ name: `${kind} (train/val)`, source: pool.source, size: pool.prompts.length, license: pool.license }];
  if (evalSpec === spec) {
    const split = splitPrompts(pool.prompts, { train: s.nTrain, val: s.nVal, eval: s.nEval }, s.seed);
    return { ...split, sources };
  }
  const split = splitPrompts(pool.prompts, { train: s.nTrain, val: s.nVal }, s.seed);
  const evalSet = await loadPrompts(evalSpec, opts);
  const used = new Set([...split.train, ...split.val]);
  const evalPrompts = samplePrompts(evalSet.prompts.filter((p) => !used.has(p)), s.nEval, s.seed + 1);
  sources.push({ name: `${kind} (eval)`, source: evalSet.source, size: evalSet.prompts.length, license: evalSet.license });
  return { train: split.train, val: split.val, eval: evalPrompts, sources };
}

export const elicitStep: Step<Settings> = {
  name: "elicit",
  version: 1,
  deps: ["pull"],
  outputs: outputsOf("elicit"),
  inputs: (s) => ({
    quantize: s.quantize, dtype: s.dtype, harmful: s.harmful, harmless: s.harmless, evalHarmful: s.evalHarmful, evalHarmless: s.evalHarmless,
    nTrain: s.nTrain, nVal: s.nVal, nEval: s.nEval, seed: s.seed, systemPrompt: s.systemPrompt,
    useSystemPrompt: s.useSystemPrompt, elicitHarmfulMin: s.elicitHarmfulMin, elicitHarmlessMax: s.elicitHarmlessMax,
    maxNewTokens: s.maxNewTokens,
  }),
  async run(ctx) {
    const s = ctx.settings;
    const source = readSource(ctx);
    const harmful = await splitsFor(ctx, "harmful");
    const harmless = await splitsFor(ctx, "harmless");
    assertDisjoint({
      "harmful train": harmful.train, "harmful val": harmful.val, "harmful eval": harmful.eval,
      "harmless train": harmless.train, "harmless val": harmless.val, "harmless eval": harmless.eval,
    });
    const { model, tok } = await openModel(ctx, source.dir, false);
    try {
      const modelName = (source.repo ?? s.model).split("/").filter(Boolean).pop() ?? s.model;
      const prompt = s.useSystemPrompt ? loadSystemPrompt(s.systemPrompt, modelName) : null;
      const system = prompt?.text ?? null;
      const probe = encodeAll(tok, [harmful.val[0] ?? "Hello"], system)[0];
      if (probe.systemMerged) ctx.log("the chat template has no system role: the safety prompt is prepended to the user turn");
      const splits: PromptSplits = {
        harmful: { train: harmful.train, val: harmful.val, eval: harmful.eval },
        harmless: { train: harmless.train, val: harmless.val, eval: harmless.eval },
        sources: [...harmful.sources, ...harmless.sources],
        systemPrompt: system,
        systemPromptSource: prompt?.source ?? null,
        systemMerged: probe.systemMerged,
      };
      writeJson(join(ctx.tmpDir, "prompts.json"), splits);

      let rates = { harmful_refusal_with_prompt: null as number | null, harmless_refusal_with_prompt: null as number | null };
      if (system !== null) {
        const maxNewTokens = Math.min(s.maxNewTokens, 48);
        const gen = async (prompts: string[], label: string) => {
          const bar = ctx.progress(`elicit ${label}`, prompts.length);
          let last = 0;
          const r = await generateTexts(model, tok, encodeAll(tok, prompts, system).map((e) => e.ids), {
            maxNewTokens,
            signal: ctx.signal,
            onBatch: (done) => {
              bar.tick(done - last);
              last = done;
            },
          });
          bar.done();
          return r.texts;
        };
        const hTexts = await gen(harmful.val, "harmful");
        const nTexts = await gen(harmless.val, "harmless");
        const harmfulRate = mean(hTexts.map((t) => +isRefusal(t)));
        const harmlessRate = mean(nTexts.map((t) => +isRefusal(t)));
        rates = { harmful_refusal_with_prompt: harmfulRate, harmless_refusal_with_prompt: harmlessRate };
        writeJson(join(ctx.tmpDir, "elicitation.json"), { ...rates, samples: { harmful: hTexts.slice(0, 8), harmless: nTexts.slice(0, 8) } });
        const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
        ctx.log(`with the safety prompt: harmful refusal ${pct(harmfulRate)}, harmless refusal ${pct(harmlessRate)}`);
        if (harmfulRate < s.elicitHarmfulMin || harmlessRate > s.elicitHarmlessMax) {
          throw new ElicitationError(
            `the safety system prompt does not elicit a usable refusal behaviour: harmful refusal ${pct(harmfulRate)} ` +
              `(need ≥ ${pct(s.elicitHarmfulMin)}), harmless refusal ${pct(harmlessRate)} (need ≤ ${pct(s.elicitHarmlessMax)}). ` +
              `A direction extracted now would be meaningless; try another --system-prompt, ` +
              `or lower --elicit-harmful-min if the model refuses only part of the time.`,
          );
        }
      } else writeJson(join(ctx.tmpDir, "elicitation.json"), { ...rates, note: "--no-system-prompt: nothing to elicit" });
      return { report: { elicitation: rates, details: { prompt_sets: splits.sources, system_prompt_source: splits.systemPromptSource, system_prompt_merged_into_user_turn: splits.systemMerged } } };
    } finally {
      await model.close();
    }
  },
};
