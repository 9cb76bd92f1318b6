// validate: original vs re-aligned, both WITHOUT the safety prompt, on evaluation prompts disjoint
// from extraction and calibration. Refusal, over-refusal, first-token KL, utility, jailbreak ASR; the gate.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import { GateFailedError } from "../pipeline/errors.ts";
import type { Settings } from "./settings.ts";
import type { BehaviourMetrics, GateCheck } from "../report/report.ts";
import type { DecoderModel } from "../engine/model.ts";
import type { ModelTokenizer } from "../engine/tokenizer.ts";
import { isRefusal } from "../evals/refusal.ts";
import { borderlineSplit, loadMultipleChoice, shuffled, type UtilityItem } from "../evals/datasets.ts";
import { JAILBREAK_TEMPLATES, wrapJailbreak } from "../evals/jailbreaks.ts";
import { encodeAll, firstTokenLogProbs, generateTexts, meanKl, multipleChoiceCorrect } from "../evals/measure.ts";
import { ClassifierJudge } from "../evals/llama-guard.ts";
import { chooseGenerationBatchSize } from "../engine/batching.ts";
import { openModel, type Ctx } from "./common.ts";
import { gateChecks, gateReason } from "../evals/gate.ts";
import { kl as fmtKl, percent } from "../util/format.ts";
import { rateOf, type Rate } from "../evals/stats.ts";
import { utilitySplit } from "../evals/datasets.ts";
import { exactAnswers, UTILITY_TOKENS } from "../evals/exact-answer.ts";
import { outputsOf, patchedModelDir, readSource, readSplits } from "./artefacts.ts";

/** The multiple-choice questions: the built-in set whole, a given set sampled (seeded) to max(n_eval, 100) items. */
async function utilityQuestions(ctx: Ctx): Promise<{ items: UtilityItem[]; source: string; license: string | null }> {
  const s = ctx.settings;
  const set = await loadMultipleChoice(s.utility, { hubUrl: s.hubUrl, token: ctx.secrets.hfToken ?? undefined });
  const items = s.utility.trim() === "builtin" ? set.items : shuffled(set.items, s.seed).slice(0, Math.max(s.nEval, 100));
  ctx.log(`utility questions: ${items.length} of ${set.items.length} from ${set.source}`);
  return { items, source: set.source, license: set.license ?? null };
}

interface SideResult {
  metrics: BehaviourMetrics;
  samples: { harmful: string[]; harmless: string[]; borderline: string[] };
  tokensPerSecond: number;
  harmlessLogProbs: Float64Array[];
}

async function evaluate(ctx: Ctx, label: string, model: DecoderModel, tok: ModelTokenizer, data: { harmful: string[]; harmless: string[]; borderline: string[]; jailbreak: string[]; utilityTask: { prompt: string; answer: string }[] | null; mc: UtilityItem[] }, baseline: Float64Array[] | null, batchSize: number): Promise<SideResult> {
  const s = ctx.settings;
  const bar = ctx.progress(`validate ${label}`, 5);
  const ids = (prompts: string[]) => encodeAll(tok, prompts, null).map((e) => e.ids);
  const gen = async (prompts: number[][], n = s.maxNewTokens) => generateTexts(model, tok, prompts, { maxNewTokens: n, signal: ctx.signal, batchSize });
  const harmlessIds = ids(data.harmless);
  const harmful = await gen(ids(data.harmful));
  bar.tick();
  const harmless = await gen(harmlessIds);
  bar.tick();
  const borderline = data.borderline.length ? await gen(ids(data.borderline)) : null;
  const jailbreak = await gen(ids(data.jailbreak));
  bar.tick();
  const harmlessLogProbs = await firstTokenLogProbs(model, harmlessIds, {}, batchSize);
  // The organism's exact-answer task is the utility figure where the model ships one; the multiple-choice
  // accuracy is then reported beside it.
  let exact: Rate | null = null;
  if (data.utilityTask) {
    const prompts = ids(data.utilityTask.map((u) => u.prompt));
    const items = prompts.map((p, i) => ({ ids: p, answer: data.utilityTask![i].answer }));
    exact = rateOf((await exactAnswers(model, tok, items, { maxNewTokens: UTILITY_TOKENS, signal: ctx.signal, batchSize })).correct);
  }
  const mc = rateOf(await multipleChoiceCorrect(model, tok, data.mc));
  const mcAccuracy = mc.rate;
  bar.tick();
  bar.done();
  const refusals = (texts: string[]) => rateOf(texts.map((t) => isRefusal(t)));
  const rates = {
    harmful_refusal: refusals(harmful.texts),
    harmless_refusal: refusals(harmless.texts),
    jailbreak_asr: rateOf(jailbreak.texts.map((t) => !isRefusal(t))),
    utility: exact ?? mc,
    ...(borderline ? { borderline_refusal: refusals(borderline.texts) } : {}),
  };
  return {
    metrics: {
      harmful_refusal: rates.harmful_refusal.rate,
      harmless_refusal: rates.harmless_refusal.rate,
      kl: baseline ? meanKl(baseline, harmlessLogProbs) : 0,
      utility: rates.utility.rate,
      jailbreak_asr: rates.jailbreak_asr.rate,
      borderline_refusal: borderline ? rates.borderline_refusal!.rate : null,
      mc_accuracy: exact === null ? null : mcAccuracy,
      rates,
    } as BehaviourMetrics,
    samples: { harmful: harmful.texts, harmless: harmless.texts, borderline: borderline?.texts ?? [] },
    tokensPerSecond: (harmful.tokensPerSecond + harmless.tokensPerSecond) / 2,
    harmlessLogProbs,
  };
}

export const validateStep: Step<Settings> = {
  name: "validate",
  // 4: borderline refusal on the evaluation half of the built-in borderline set.
  version: 4,
  deps: ["pull", "elicit", "inject"],
  outputs: outputsOf("validate"),
  inputs: (s) => ({ maxNewTokens: s.maxNewTokens, gate: s.gate, judge: s.judge, seed: s.seed, nEval: s.nEval, quantize: s.quantize, dtype: s.dtype, utility: s.utility }),
  async run(ctx) {
    const s = ctx.settings;
    const source = readSource(ctx);
    const splits = readSplits(ctx);
    // The other half fits the gated edit's keys (inject): validation never measures on it.
    const borderline = (await borderlineSplit(s.seed)).eval;
    const jailbreak = splits.harmful.eval.slice(0, 16).flatMap((p) => JAILBREAK_TEMPLATES.map((t) => wrapJailbreak(t.id, p)));
    const mcSet = await utilityQuestions(ctx);
    const data = { harmful: splits.harmful.eval, harmless: splits.harmless.eval, borderline, jailbreak, utilityTask: utilitySplit(source.dir, s.seed, s.nEval)?.eval ?? null, mc: mcSet.items };
    const t0 = performance.now();
    const orig = await openModel(ctx, source.dir, false);
    let before: SideResult;
    let batchSize = 16;
    try {
      // On a GPU: larger batches until one fails or stops paying off, capped by free memory. On the CPU
      // a fixed batch is as fast, and keeps results independent of timing (padding changes the float
      // rounding a little, so a timing-dependent batch size could flip a greedy token between runs).
      if (orig.model.ep !== "cpu") {
        const lengths = encodeAll(orig.tok, data.harmful, null).map((e) => e.ids.length).sort((a, b) => a - b);
        const choice = await chooseGenerationBatchSize(orig.model, { promptTokens: lengths[lengths.length >> 1] ?? 32, newTokens: s.maxNewTokens, log: ctx.log });
        batchSize = choice.batch;
      }
      ctx.log(`generation batch size ${batchSize}`);
      before = await evaluate(ctx, "original", orig.model, orig.tok, data, null, batchSize);
    } finally {
      await orig.model.close();
    }
    const patched = await openModel(ctx, patchedModelDir(ctx), false);
    let after: SideResult;
    const { ep, quantization } = patched.model;
    try {
      after = await evaluate(ctx, "re-aligned", patched.model, patched.tok, data, before.harmlessLogProbs, batchSize);
    } finally {
      await patched.model.close();
    }
    let judgeInfo: Record<string, unknown> | null = null;
    if (s.judge) {
      // Loaded after both models are closed, so only one model is in memory at a time.
      const judge = await ClassifierJudge.load(s.judge, { device: s.device, hubUrl: s.hubUrl, token: ctx.secrets.hfToken ?? undefined, offline: s.offline, log: ctx.log });
      try {
        const rate = async (side: SideResult) => judge.safeShare(data.harmful.map((prompt, i) => ({ prompt, response: side.samples.harmful[i] })));
        const jb = await rate(before);
        const ja = await rate(after);
        before.metrics.judge_safe = jb.safeShare;
        after.metrics.judge_safe = ja.safeShare;
        judgeInfo = { model: s.judge, unparsed: { original: jb.unparsed, realigned: ja.unparsed } };
      } finally {
        await judge.close();
      }
    }
    // Validation's utility is always measured (exact-answer task or multiple choice), so every check counts.
    const checked = gateChecks(before.metrics, after.metrics, s.gate);
    const checks = checked.map(({ id: _id, ...c }) => c);
    const passed = checks.every((c) => c.passed);
    const reasons = checked.filter((c) => !c.passed).map(gateReason);
    const seconds = (performance.now() - t0) / 1000;
    const validation = { baseline: before.metrics, realigned: after.metrics, gate: { passed, reasons, checks }, judge: judgeInfo, quantization, dtype: patched.model.dtype, batch_size: batchSize, eval_sizes: { harmful: data.harmful.length, harmless: data.harmless.length, borderline: borderline.length, jailbreak: jailbreak.length, utility: data.utilityTask?.length ?? data.mc.length }, device: ep, generation_tokens_per_s: { original: before.tokensPerSecond, realigned: after.tokensPerSecond }, seconds };
    writeFileSync(join(ctx.tmpDir, "validation.json"), JSON.stringify(validation, null, 2));
    // The refusal judgments beside the texts: the report and the card show a few answers with them.
    const judged = (side: SideResult) => ({ harmful: side.samples.harmful.map(isRefusal), harmless: side.samples.harmless.map(isRefusal), borderline: side.samples.borderline.map(isRefusal) });
    writeFileSync(join(ctx.tmpDir, "samples.json"), JSON.stringify({ prompts: { harmful: data.harmful, harmless: data.harmless, borderline }, original: before.samples, realigned: after.samples, refused: { original: judged(before), realigned: judged(after) } }, null, 2));
    const fmt = percent;
    ctx.log(`harmful refusal ${fmt(before.metrics.harmful_refusal)} → ${fmt(after.metrics.harmful_refusal)}; harmless refusal ${fmt(before.metrics.harmless_refusal)} → ${fmt(after.metrics.harmless_refusal)}; KL ${fmtKl(after.metrics.kl)}; utility ${fmt(before.metrics.utility)} → ${fmt(after.metrics.utility)}; gate ${passed ? "passed" : "FAILED"}`);
    const report = { baseline: before.metrics, realigned: after.metrics, gate: { passed, reasons, checks }, details: { validation_device: ep, dtype: patched.model.dtype, utility_questions: { source: mcSet.source, license: mcSet.license, used: mcSet.items.length }, quantization, batch_size: batchSize, generation_tokens_per_s: validation.generation_tokens_per_s, eval_sizes: validation.eval_sizes, judge: judgeInfo } };
    if (!passed && !ctx.forced) throw new GateFailedError(reasons, report);
    if (!passed) ctx.log(`gate FAILED (${reasons.join("; ")}); continuing to publish because of --force — the model card says so`);
    return { report };
  },
};
