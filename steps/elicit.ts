// elicit: choose the prompt sets (disjoint train / val / eval), try each candidate safety system prompt
// (--system-prompt auto: every built-in one; a directory: every *.md in it; a file: just that one) on
// the train prompts, keep the one with the largest harmful − harmless refusal gap, check that it really
// elicits refusals, and record which harmful train prompts it refused and which harmless ones it
// answered (the contrast extract takes its means from).
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { assertDisjoint, loadPrompts, samplePrompts, splitPrompts, type PromptKind } from "../evals/datasets.ts";
import { loadSystemPrompt, systemPromptFiles } from "../evals/system-prompt.ts";
import { isRefusal } from "../evals/refusal.ts";
import { encodeAll, generateTexts } from "../evals/measure.ts";
import { formatRate, rateOf, type Rate } from "../evals/stats.ts";
import { points } from "../util/format.ts";
import { sha256Hex } from "../util/fs.ts";
import { openModel, type Ctx } from "./common.ts";
import { outputsOf, readSource, writeJson, type PromptSplits } from "./artefacts.ts";

export class ElicitationError extends Error {
  override name = "ElicitationError";
}

// Gaps are differences of rates: "+12.5 points", as everywhere (util/format.ts).
const pct = points;

/**
 * Harmless prompts beyond the validation split that calibration adds to its first-token KL (one forward
 * pass each, no generation): the KL is heavy-tailed, and a bound checked on a few dozen prompts is
 * optimistic for the prompts validation will see. Taken from what the splits left, never from eval.
 */
export const KL_EXTRA_PROMPTS = 128;

async function splitsFor(ctx: Ctx, kind: Exclude<PromptKind, "borderline">): Promise<{ train: string[]; val: string[]; eval: string[]; rest: string[]; sources: PromptSplits["sources"] }> {
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
  const inEval = new Set(evalPrompts);
  return { train: split.train, val: split.val, eval: evalPrompts, rest: split.rest.filter((p) => !inEval.has(p)), sources };
}

/**
 * The gate fit's extra prompts of one class (see PromptSplits.gateExtra): up to nTrain built-in prompts
 * in no split of this run, or, when the run's own prompts are the built-in ones, what its splits left
 * (less the KL prompts, which must stay unseen by the fit).
 */
async function gateExtraFor(ctx: Ctx, kind: "harmful" | "harmless", rest: string[], inSplits: Set<string>): Promise<string[]> {
  const s = ctx.settings;
  const spec = kind === "harmful" ? s.harmful : s.harmless;
  const candidates = spec.trim() === "builtin" ? rest : (await loadPrompts("builtin", { kind })).prompts;
  return samplePrompts(candidates.filter((p) => !inSplits.has(p)), s.nTrain, s.seed + 2);
}

/** At most this many train prompts per class are generated for each candidate prompt (bounds `auto`'s time). */
export const ELICIT_CANDIDATE_CAP = 64;
/** Greedy tokens per elicitation answer (at most; maxNewTokens if smaller): enough to see an opening refusal. */
const ELICIT_TOKENS = 48;

/** One safety prompt tried: what it elicited on (the first ≤ ELICIT_CANDIDATE_CAP of) the train split. */
export interface PromptTried {
  source: string;
  harmful: Rate;
  harmless: Rate;
  /** harmful.rate − harmless.rate. */
  gap: number;
}

/** Content digest of the prompt files a setting names (for the step hash); null when they cannot be listed. */
function promptDigest(spec: string | null, use: boolean): string[] | null {
  if (!use) return null;
  try {
    return systemPromptFiles(spec).map((f) => sha256Hex(readFileSync(f)));
  } catch {
    return null;
  }
}

export const elicitStep: Step<Settings> = {
  name: "elicit",
  // 2: --system-prompt auto / <dir>: every candidate prompt is tried on the train split and the one
  //    with the largest harmful − harmless refusal gap kept (elicitMinGap replaces elicitHarmfulMin /
  //    elicitHarmlessMax); rates as {rate, k, n, ci95}; prompts.json gains `contrast` (refused harmful
  //    and answered harmless train prompts under the chosen prompt).
  // 3: prompts.json gains klExtra (harmless prompts outside every split, for calibration's KL only).
  // 4: prompts.json gains gateExtra (prompts in no split, for the gated edit's key fit only).
  // 5: the contrast keeps the model's reply to each of its prompts (the gated fit's quiet reply rows).
  version: 5,
  deps: ["pull"],
  outputs: outputsOf("elicit"),
  inputs: (s) => ({
    quantize: s.quantize, dtype: s.dtype, harmful: s.harmful, harmless: s.harmless, evalHarmful: s.evalHarmful, evalHarmless: s.evalHarmless,
    nTrain: s.nTrain, nVal: s.nVal, nEval: s.nEval, seed: s.seed, systemPrompt: s.systemPrompt,
    systemPromptFiles: promptDigest(s.systemPrompt, s.useSystemPrompt),
    useSystemPrompt: s.useSystemPrompt, elicitMinGap: s.elicitMinGap,
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
    const modelName = (source.repo ?? s.model).split("/").filter(Boolean).pop() ?? s.model;
    // Load every candidate before opening the model, so that a bad file fails at once.
    const candidates = s.useSystemPrompt ? systemPromptFiles(s.systemPrompt).map((f) => loadSystemPrompt(f, modelName)) : [];
    const { model, tok } = await openModel(ctx, source.dir, false);
    try {
      const maxNewTokens = Math.min(s.maxNewTokens, ELICIT_TOKENS);
      /** isRefusal of each greedy answer to `prompts` under `system`. */
      const refusals = async (prompts: string[], system: string, label: string): Promise<{ refused: boolean[]; texts: string[] }> => {
        if (prompts.length === 0) return { refused: [], texts: [] };
        const bar = ctx.progress(label, prompts.length);
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
        return { refused: r.texts.map((t) => isRefusal(t)), texts: r.texts };
      };

      let chosen: (typeof candidates)[number] | null = null;
      const tried: PromptTried[] = [];
      let contrast: PromptSplits["contrast"] = null;
      let elicitation: Record<string, unknown>;
      let rates = { harmful_refusal_with_prompt: null as number | null, harmless_refusal_with_prompt: null as number | null };
      if (candidates.length > 0) {
        // A single prompt is measured on the whole train split; several on its first ELICIT_CANDIDATE_CAP.
        const cap = candidates.length > 1 ? ELICIT_CANDIDATE_CAP : Infinity;
        const hSub = harmful.train.slice(0, cap);
        const nSub = harmless.train.slice(0, cap);
        const answers: { harmful: { refused: boolean[]; texts: string[] }; harmless: { refused: boolean[]; texts: string[] } }[] = [];
        let best = -1;
        for (const [i, c] of candidates.entries()) {
          const name = basename(c.source);
          const h = await refusals(hSub, c.text, `elicit ${name} harmful`);
          const n = await refusals(nSub, c.text, `elicit ${name} harmless`);
          const entry = { source: c.source, harmful: rateOf(h.refused), harmless: rateOf(n.refused), gap: 0 };
          entry.gap = entry.harmful.rate - entry.harmless.rate;
          tried.push(entry);
          answers.push({ harmful: h, harmless: n });
          ctx.log(`${name}: harmful refusal ${formatRate(entry.harmful)}, harmless refusal ${formatRate(entry.harmless)}, gap ${pct(entry.gap)}`);
          if (best < 0 || entry.gap > tried[best]!.gap) best = i;
        }
        const top = tried[best]!;
        if (top.gap < s.elicitMinGap) {
          const list = tried.map((t) => `  ${t.source}: harmful refusal ${formatRate(t.harmful)}, harmless refusal ${formatRate(t.harmless)}, gap ${pct(t.gap)}`).join("\n");
          throw new ElicitationError(
            `no safety system prompt elicits a usable refusal behaviour (the best harmful − harmless refusal gap is ${pct(top.gap)}, ` +
              `need ≥ ${pct(s.elicitMinGap)}); a direction extracted now would be meaningless. Tried on the train prompts:\n${list}\n` +
              `Try a stronger prompt with --system-prompt <file or dir of *.md>, or lower --elicit-min-gap if the model refuses only part of the time.`,
          );
        }
        chosen = candidates[best]!;
        if (candidates.length > 1) ctx.log(`chose ${chosen.source} (largest refusal gap)`);
        // The contrast covers the whole train split: generate what the cap left out.
        const got = answers[best]!;
        const hRest = await refusals(harmful.train.slice(hSub.length), chosen.text, "elicit harmful (rest of train)");
        const nRest = await refusals(harmless.train.slice(nSub.length), chosen.text, "elicit harmless (rest of train)");
        const hRefused = [...got.harmful.refused, ...hRest.refused];
        const nRefused = [...got.harmless.refused, ...nRest.refused];
        const hTexts = [...got.harmful.texts, ...hRest.texts];
        const nTexts = [...got.harmless.texts, ...nRest.texts];
        contrast = {
          harmful: harmful.train.filter((_, i) => hRefused[i]),
          harmless: harmless.train.filter((_, i) => !nRefused[i]),
          replies: {
            harmful: hTexts.filter((_, i) => hRefused[i]),
            harmless: nTexts.filter((_, i) => !nRefused[i]),
          },
        };
        const fullHarmful = rateOf(hRefused);
        const fullHarmless = rateOf(nRefused);
        rates = { harmful_refusal_with_prompt: fullHarmful.rate, harmless_refusal_with_prompt: fullHarmless.rate };
        elicitation = {
          ...rates,
          chosen: { source: chosen.source, harmful: fullHarmful, harmless: fullHarmless, gap: fullHarmful.rate - fullHarmless.rate },
          prompts_tried: tried,
          measured_on: { split: "train", harmful: hSub.length, harmless: nSub.length, max_new_tokens: maxNewTokens },
          min_gap: s.elicitMinGap,
          samples: { harmful: got.harmful.texts.slice(0, 8), harmless: got.harmless.texts.slice(0, 8) },
        };
      } else elicitation = { ...rates, chosen: null, prompts_tried: [], note: "--no-system-prompt: nothing to elicit" };

      const system = chosen?.text ?? null;
      const probe = encodeAll(tok, [harmful.val[0] ?? "Hello"], system)[0];
      if (probe.systemMerged) ctx.log("the chat template has no system role: the safety prompt is prepended to the user turn");
      const klExtra = harmless.rest.slice(0, KL_EXTRA_PROMPTS);
      const inSplits = new Set([harmful, harmless].flatMap((x) => [...x.train, ...x.val, ...x.eval]).concat(klExtra));
      const gateExtra = {
        harmful: await gateExtraFor(ctx, "harmful", harmful.rest, inSplits),
        harmless: await gateExtraFor(ctx, "harmless", harmless.rest, inSplits),
      };
      const splits: PromptSplits = {
        harmful: { train: harmful.train, val: harmful.val, eval: harmful.eval },
        harmless: { train: harmless.train, val: harmless.val, eval: harmless.eval },
        klExtra,
        gateExtra,
        sources: [...harmful.sources, ...harmless.sources],
        systemPrompt: system,
        systemPromptSource: chosen?.source ?? null,
        systemMerged: probe.systemMerged,
        contrast,
      };
      writeJson(join(ctx.tmpDir, "prompts.json"), splits);
      writeJson(join(ctx.tmpDir, "elicitation.json"), elicitation);
      return {
        report: {
          elicitation: { ...rates, chosen: splits.systemPromptSource, prompts_tried: tried },
          details: {
            prompt_sets: splits.sources,
            system_prompt_source: splits.systemPromptSource,
            system_prompt_merged_into_user_turn: splits.systemMerged,
            system_prompts_tried: tried.map((t) => ({ ...t, chosen: t.source === splits.systemPromptSource })),
            contrast: contrast && { harmful_refused: contrast.harmful.length, harmless_answered: contrast.harmless.length },
          },
        },
      };
    } finally {
      await model.close();
    }
  },
};
