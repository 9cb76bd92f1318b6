// extract: residual-stream means of harmful and harmless training prompts (with the safety prompt)
// at every layer and post-instruction position; candidates r[l][p] = mean_harmful − mean_harmless;
// selection on the validation split without the prompt.
//
// Selection (Arditi et al.'s recipe adapted to injection). For each candidate:
//   induce   = mean refusal score (log-odds of a refusal first token) on harmless val prompts with
//              r[l][p] added to the residual entering layer l;
//   probe α  = for each sign, the |α| at which the ROSI edit moves harmless first-token
//              distributions by KL = klProbe (so every candidate spends the same damage budget);
//   harmful  = mean refusal score on harmful val prompts with the edit at that probe α.
// Layers ≥ 0.8·L are discarded; the candidate with the largest harmful-score gain wins.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { writeSafetensors } from "../engine/safetensors.ts";
import type { DecoderModel } from "../engine/model.ts";
import { candidates, positionCount, residualMeans, residualsAt, safetySubspace, unit, type Candidate } from "../rosi/directions.ts";
import { encodeAll, firstTokenKl, firstTokenLogProbs, generateTexts, mean, meanKl, refusalScore, refusalTokenIds } from "../evals/measure.ts";
import { isRefusal } from "../evals/refusal.ts";
import { coefficientStats, injectedAmount, rosiRows, spreadWeights, type CoefficientStats, type SpreadMethod } from "../rosi/spread.ts";
import { openModel, positionLabels } from "./common.ts";
import { outputsOf, readSource, readSplits, writeJson, type CandidateScore, type ProbeScores, type Selection } from "./artefacts.ts";
import { vectorSha256 } from "../rosi/edit.ts";
import { scaleForKl } from "../rosi/calibrate.ts";
import { chart } from "../report/plot.ts";
import { alpha as fmtAlpha, position as fmtPosition } from "../util/format.ts";

const KL_PROBE = 0.05;
const SELECTION_TOKENS = 12;
/** How many top candidates inject calibrates: the probe ranking is noisy, generation-based calibration is not. */
const SHORTLIST = 3;
/** Fewest refused-harmful and answered-harmless train prompts for the means to use only those. */
const MIN_CONTRAST = 16;

/** Is probe `a` better than `b`: larger refusal-rate gap, then larger score gap. */
function better(a: ProbeScores, b: ProbeScores): boolean {
  const gapA = a.harmful_rate - a.harmless_rate;
  const gapB = b.harmful_rate - b.harmless_rate;
  if (gapA !== gapB) return gapA > gapB;
  return a.harmful_score - a.harmless_score > b.harmful_score - b.harmless_score;
}

/**
 * The |α| at which the edit's mean first-token KL on harmless prompts reaches `target` (within 5 %,
 * rosi/calibrate.ts scaleForKl), signed by `sign`. `hint` (the answer for the previous candidate, and the
 * log–log slope of KL in α found there) is where the search starts, so that it usually takes two or three
 * passes. Also returns the harmless first-token log-probabilities at that α, which the caller scores.
 */
async function alphaForKl(model: DecoderModel, prompts: number[][], base: Float64Array[], dir: Float32Array, weights: number[], sign: number, target: number, hint: { alpha: number; slope: number | null }): Promise<{ alpha: number; kl: number; slope: number | null; logProbs: Float64Array[] } | null> {
  const at = (a: number) => firstTokenKl(model, prompts, base, { rosiVectors: rosiRows(dir, a, weights) });
  const found = await scaleForKl(at, sign * hint.alpha, target, { slope: hint.slope });
  return found && { alpha: found.scale, kl: found.point.kl, slope: found.slope, logProbs: found.point.logProbs };
}

export const extractStep: Step<Settings> = {
  name: "extract",
  // 7: candidates recorded as a discarded | scored union (selection.json shape; same selection).
  // 8: means from elicit's contrastive pairs (refused harmful, answered harmless train prompts) when ≥ 16 of each.
  // 9: the KL probe by log–log interpolation (KL within 5 % of the probe's), not 4 fixed bisections.
  // 10: the KL probe starts from the previous candidate's α and log–log slope (fewer passes near a KL cliff).
  // 11: refusal tokens as the chat template renders a reply's first token (" I" after Mistral's "[/INST]").
  version: 11,
  deps: ["pull", "elicit"],
  outputs: outputsOf("extract"),
  inputs: (s) => ({ rank: s.rank, quantize: s.quantize, dtype: s.dtype, layer: s.layer, position: s.position, useSystemPrompt: s.useSystemPrompt, method: s.method }),
  async run(ctx) {
    const s = ctx.settings;
    const source = readSource(ctx);
    const splits = readSplits(ctx);
    const { model, tok } = await openModel(ctx, source.dir, true);
    try {
      const L = model.config.numLayers;
      const H = model.config.hiddenSize;
      // Contrastive pairs: the harmful train prompts the safety prompt made the model refuse and the
      // harmless ones it still answered, when enough of each remain; otherwise all train prompts.
      const c = splits.contrast;
      const useContrast = c !== null && c.harmful.length >= MIN_CONTRAST && c.harmless.length >= MIN_CONTRAST;
      if (c !== null && !useContrast) {
        ctx.log(
          `warning: only ${c.harmful.length} refused harmful and ${c.harmless.length} answered harmless train prompts ` +
            `(need ${MIN_CONTRAST} of each for contrastive means): the means use all train prompts`,
        );
      }
      const hTrain = encodeAll(tok, useContrast ? c.harmful : splits.harmful.train, splits.systemPrompt);
      const nTrain = encodeAll(tok, useContrast ? c.harmless : splits.harmless.train, splits.systemPrompt);
      if (useContrast) ctx.log(`means from ${hTrain.length} refused harmful and ${nTrain.length} answered harmless train prompts`);
      const P = positionCount([...hTrain, ...nTrain]);
      const labels = positionLabels(tok, splits.systemPrompt, P);
      const bar = ctx.progress("extract activations", hTrain.length + nTrain.length);
      let seen = 0;
      const tick = (done: number) => {
        bar.tick(done - seen);
        seen = done;
      };
      const hMeans = await residualMeans(model, hTrain, P, { onBatch: tick, signal: ctx.signal });
      // The harmless pass counts on from the harmful one (`seen` is already hTrain.length).
      const nMeans = await residualMeans(model, nTrain, P, { onBatch: (d) => tick(d + hTrain.length), signal: ctx.signal });
      bar.done();
      const cands = candidates(hMeans, nMeans, L);

      // Selection on validation prompts, without the safety prompt.
      const valH = encodeAll(tok, splits.harmful.val, null).map((e) => e.ids);
      const valN = encodeAll(tok, splits.harmless.val, null).map((e) => e.ids);
      const refusalIds = refusalTokenIds(tok);
      const baseN = await firstTokenLogProbs(model, valN);
      const baseH = await firstTokenLogProbs(model, valH);
      const baseline = { harmful_score: mean(baseH.map((lp) => refusalScore(lp, refusalIds))), harmless_score: mean(baseN.map((lp) => refusalScore(lp, refusalIds))) };
      // How the edit's scale w̄·x behaves on the model's own activations (prompts as deployed: no system prompt).
      // The gated family (inject) reuses the direction; the selection probes the spread methods.
      const methods: SpreadMethod[] = s.method === "rosi" || s.method === "rosi-mv" ? [s.method] : ["rosi", "rosi-mv"];
      const stats: CoefficientStats = await coefficientStats(model, [...encodeAll(tok, splits.harmful.train, null), ...encodeAll(tok, splits.harmless.train, null)].map((e) => e.ids));
      const weights = Object.fromEntries(methods.map((m) => [m, spreadWeights(m, stats, 2 * L)])) as Record<SpreadMethod, number[]>;
      const spread = Object.fromEntries(methods.map((m) => [m, { weights: weights[m], injected_per_unit_alpha: injectedAmount(stats, weights[m]) }]));
      writeJson(join(ctx.tmpDir, "spread.json"), { stats, methods: spread });
      // The sign of α that pushes along +ŝ follows from the mean injected amount per unit α (w̄·x is
      // negative on some models, as the paper's formula does not anticipate).
      const signs = Object.fromEntries(methods.map((m) => [m, [Math.sign(injectedAmount(stats, weights[m]).mean) || 1]])) as Record<SpreadMethod, number[]>;
      const hints = Object.fromEntries(methods.map((m) => [m, { alpha: 1, slope: null }])) as Record<SpreadMethod, { alpha: number; slope: number | null }>;
      const maxLayer = 0.8 * L;
      const scores: CandidateScore[] = [];
      const sel = ctx.progress("select direction", cands.length);
      for (const c of cands) {
        if (ctx.signal.aborted) throw new Error("aborted");
        sel.tick();
        const where = { layer: c.layer, position: c.position, norm: c.norm };
        let reason: string | null = null;
        if (s.layer !== null && c.layer !== s.layer) reason = "--layer given";
        else if (s.position !== null && c.position !== (s.position < 0 ? P + s.position : s.position)) reason = "--position given";
        else if (c.layer >= maxLayer && s.layer === null) reason = "layer ≥ 0.8·L";
        else if (c.position === 0 && s.position === null) reason = "last instruction token: candidates are the post-instruction positions (use --position 0 to force it)";
        else if (c.norm < 1e-6) reason = "no harmful/harmless difference at this position";
        if (reason) {
          scores.push({ status: "discarded", ...where, reason });
          continue;
        }
        const steer = new Float32Array(L * H);
        steer.set(Float32Array.from(c.diff), c.layer * H);
        const steered = await firstTokenLogProbs(model, valN, { steer });
        const induce = mean(steered.map((lp) => refusalScore(lp, refusalIds)));
        const steerKl = meanKl(baseN, steered);
        const dir = unit(c.diff);
        const probes: Record<string, ProbeScores> = {};
        let best: (ProbeScores & { method: SpreadMethod }) | null = null;
        for (const method of methods) {
          for (const sign of signs[method]) {
            const probe = await alphaForKl(model, valN, baseN, dir, weights[method], sign, KL_PROBE, hints[method]);
            if (!probe) continue;
            hints[method] = { alpha: Math.abs(probe.alpha), slope: probe.slope ?? hints[method].slope };
            const rv = rosiRows(dir, probe.alpha, weights[method]);
            const harmful = mean((await firstTokenLogProbs(model, valH, { rosiVectors: rv })).map((lp) => refusalScore(lp, refusalIds)));
            const harmless = mean(probe.logProbs.map((lp) => refusalScore(lp, refusalIds)));
            // First-token scores rank candidates poorly on some models; a short greedy reply judged by the
            // marker judge is what validation measures, so it decides, with the scores as tie-break.
            const rate = async (prompts: number[][]) => mean((await generateTexts(model, tok, prompts, { maxNewTokens: SELECTION_TOKENS, rosiVectors: rv, batchSize: 32 })).texts.map((t) => +isRefusal(t)));
            const scored: ProbeScores = {
              alpha: probe.alpha,
              kl: probe.kl,
              harmful_score: harmful,
              harmless_score: harmless,
              harmful_rate: await rate(valH),
              harmless_rate: await rate(valN),
            };
            probes[method] = scored;
            if (!best || better(scored, best)) best = { ...scored, method };
          }
        }
        if (!best) scores.push({ status: "discarded", ...where, reason: "the edit never reaches the KL probe" });
        else scores.push({ status: "scored", ...where, induce, steer_kl: steerKl, best, probes });
      }
      sel.done();
      const viable = scores.filter((x): x is Extract<CandidateScore, { status: "scored" }> => x.status === "scored");
      if (!viable.length) throw new Error("no candidate direction survived selection (see selection.json)");
      // Stable sort by the selection criterion, best first.
      const ranked = viable.map((x, i) => ({ x, i })).sort((a, b) => (better(a.x.best, b.x.best) ? -1 : better(b.x.best, a.x.best) ? 1 : a.i - b.i)).map((r) => r.x);
      const best = ranked[0];
      const chosen = cands.find((c) => c.layer === best.layer && c.position === best.position)!;
      let direction = unit(chosen.diff);
      let subspace: { directions: Float32Array[]; scales: number[] } | null = null;
      if (s.rank > 1) {
        // k rank-one edits of the same matrix share w̄, so Σᵢ αᵢ·ŝᵢ·w̄ᵀ is itself rank one: the k directions
        // are combined, each weighted by its spread (αᵢ ∝ its RMS projection), into one vector.
        const hAct = await residualsAt(model, hTrain, best.layer, best.position, P);
        const nAct = await residualsAt(model, nTrain, best.layer, best.position, P);
        subspace = safetySubspace(hAct, nAct, s.rank);
        const combined = new Float64Array(H);
        subspace.directions.forEach((d, i) => {
          for (let h = 0; h < H; h++) combined[h] += (subspace!.scales[i] / subspace!.scales[0]) * d[h];
        });
        direction = unit(combined);
        ctx.log(`rank ${s.rank}: safety subspace spreads ${subspace.scales.map((x) => x.toPrecision(3)).join(", ")}`);
      }
      const selection: Selection = {
        layer: best.layer,
        position: best.position,
        position_label: labels[best.position] ?? String(best.position),
        alpha_probe: best.best.alpha,
        method: best.best.method,
        probes: best.probes,
        baseline,
        kl_probe: KL_PROBE,
        refusal_token_ids: refusalIds,
        candidates: scores,
        shortlist: ranked.slice(0, s.rank > 1 ? 1 : SHORTLIST).map((c) => ({ layer: c.layer, position: c.position, position_label: labels[c.position] ?? String(c.position), probes: c.probes })),
        direction_sha256: vectorSha256(direction),
      };
      writeJson(join(ctx.tmpDir, "selection.json"), selection);
      writeDirections(join(ctx.tmpDir, "direction.safetensors"), cands, direction, selection, P, subspace);
      writeFileSync(join(ctx.tmpDir, "selection.svg"), await selectionPlot(scores, cands, L, P, labels, best));
      ctx.log(`top candidate: layer ${best.layer}, position ${fmtPosition(best.position, selection.position_label)}, ${best.best.method} probe α ${fmtAlpha(best.best.alpha)} (inject calibrates the shortlist)`);
      return { report: { direction: { layer: best.layer, position: best.position, alpha: null, rank: s.rank, method: best.best.method } } };
    } finally {
      await model.close();
    }
  },
};

function writeDirections(path: string, cands: Candidate[], chosen: Float32Array, sel: Selection, positions: number, subspace: { directions: Float32Array[]; scales: number[] } | null): void {
  const layers = Math.max(...cands.map((c) => c.layer)) + 1;
  const H = chosen.length;
  const all = new Float32Array(layers * positions * H);
  for (const c of cands) all.set(Float32Array.from(c.diff), (c.layer * positions + c.position) * H);
  const bytes = (f: Float32Array) => new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
  writeSafetensors(
    path,
    [
      { name: "direction", dtype: "F32", shape: [H], data: bytes(chosen) },
      { name: "candidates", dtype: "F32", shape: [layers, positions, H], data: bytes(all) },
      ...(subspace
        ? [
            { name: "subspace", dtype: "F32" as const, shape: [subspace.directions.length, H], data: bytes(Float32Array.from(subspace.directions.flatMap((d) => [...d]))) },
            { name: "subspace_scales", dtype: "F32" as const, shape: [subspace.scales.length], data: bytes(Float32Array.from(subspace.scales)) },
          ]
        : []),
    ],
    { layer: String(sel.layer), position: String(sel.position), position_label: sel.position_label, alpha_probe: String(sel.alpha_probe), direction_sha256: sel.direction_sha256, note: "candidates[l][p] = mean(harmful) - mean(harmless) of the residual entering layer l; direction = unit(candidates[layer][position])" },
  );
}

/** Per layer: the harmful refusal score at the KL probe (one line per position) and the separation ‖r‖, in two panels; the chosen candidate marked. */
function selectionPlot(scores: CandidateScore[], cands: Candidate[], L: number, P: number, labels: string[], chosen: { layer: number; position: number }): Promise<string> {
  const series = [];
  for (let p = 0; p < P; p++) {
    series.push({
      name: `position ${fmtPosition(p, labels[p])}`,
      points: scores.flatMap((x) => (x.status === "scored" && x.position === p ? [[x.layer, x.best.harmful_score] as [number, number]] : [])),
    });
  }
  const hit = scores.find((x) => x.status === "scored" && x.layer === chosen.layer && x.position === chosen.position);
  const norm = (l: number) => Math.max(...cands.filter((c) => c.layer === l).map((c) => c.norm));
  const label = `chosen: layer ${chosen.layer}, position ${fmtPosition(chosen.position, labels[chosen.position])}`;
  return chart({
    title: "Candidate directions (train-prompt means, scored on validation prompts)",
    xLabel: "layer",
    xInteger: true,
    panels: [
      { yLabel: "harmful refusal score at the KL probe", series, marked: hit && hit.status === "scored" ? [{ x: hit.layer, y: hit.best.harmful_score, label }] : [] },
      { yLabel: "separation ‖r‖ (best position)", series: [{ name: "‖r‖ = ‖mean harmful − mean harmless‖", points: Array.from({ length: L }, (_, l) => [l, norm(l)] as [number, number]) }], marked: [{ x: chosen.layer, y: norm(chosen.layer), label: "chosen" }] },
    ],
  });
}
