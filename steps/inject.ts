// inject: calibrate the edit's strength without the safety prompt (rosi/calibrate.ts: the largest
// harmful refusal within the gate's over-refusal, KL and utility bounds, on the validation split),
// compare it with a random direction at the same KL, then write the patched checkpoint and the
// record of what was injected (edit.safetensors, calibration.json).
//
// Edit families (each a rank-one edit W'ₘ = Wₘ + vₘ·kₘᵀ of every residual writer m, scaled by one t):
//   rosi     vₘ = t·ŝ,     kₘ = w̄ₘ           the paper's edit
//   rosi-mv  vₘ = t·wₘ·ŝ,  kₘ = w̄ₘ           minimum-variance spread of the same edit (rosi/spread.ts)
//   gated    vₘ = t·ŝ,     kₘ fitted          keys that fire on harmful inputs only (rosi/gated.ts),
//                                             fitted on the train split, so validation stays unseen
// `--method auto` calibrates every family and keeps the best admissible (a coarse sweep of each, then the
// full search for the leader): rosi and rosi-mv on extract's shortlist, gated on its own (screenGated
// ranks every direction extract scored behind its gate, by first-token refusal scores at a fixed KL).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { readDecoderConfig } from "../engine/architectures.ts";
import { writeSafetensors, type TensorData } from "../engine/safetensors.ts";
import type { DecoderModel } from "../engine/model.ts";
import { encodeAll, firstTokenKl, firstTokenLogProbs, mean, refusalScore, type Interventions } from "../evals/measure.ts";
import { borderlineSplit, utilitySplit, type UtilityTaskItem } from "../evals/datasets.ts";
import { gateChecks, passesGate } from "../evals/gate.ts";
import { alpha as fmtAlpha, kl as fmtKl, percent, points, position as fmtPosition } from "../util/format.ts";
import { rosiRows, type SpreadMethod } from "../rosi/spread.ts";
import { unit } from "../rosi/directions.ts";
import { chooseGateFit, collectWriterSamples, GateFitCache, concatSamples, fitGatedKeysCached, GATE_POSITION_CHOICES, gatedInterventions, gatedLayers, gateStats, gateValues, type GateChoice, type GatePrompt, type GatedFit, type WriterSamples } from "../rosi/gated.ts";
import { editedMatrices, vectorSha256, writeEditedCheckpoint } from "../rosi/edit.ts";
import { isFull, klAt, measure, measureWithin, pointKey, randomUnit, scaleForKl, SweepMemo, sweepScale, type FullPoint, type Measured, type MeasureOptions } from "../rosi/calibrate.ts";
import { sha256Hex } from "../util/fs.ts";
import { chart, lineChart } from "../report/plot.ts";
import { chooseTradeoff, recordPoints, tradeoffPoints, type TradeoffChoice } from "./tradeoff.ts";
import type { RunReport } from "../report/report.ts";
import { openModel, positionLabels, readJson, type Ctx } from "./common.ts";
import { outputsOf, readDirections, readSelection, readSource, readSplits, readSpread, writeJson, type Calibration, type CandidateScore, type GatedRecord, type GateScreenEntry, type InjectedEdit, type Selection, type ShortlistEntry, type SweepPoint } from "./artefacts.ts";

/** KL is heavy-tailed across prompts: calibration holds it to 3/4 of the gate's bound, a margin for unseen prompts. */
const KL_MARGIN = 0.75;
const CALIBRATION_TOKENS = 32;
/** Memo of measured sweep points inside the run directory (survives a crash; the step's tmp dir does not). */
const MEMO_FILE = ".inject-sweep.jsonl";
/** The trade-off point the user chose (steps/tradeoff.ts), so that a resumed run does not ask again. */
export const CHOICE_FILE = ".inject-choice.json";

type FamilyName = SpreadMethod | "gated";

/** One edit family on one direction: everything needed to turn a scale t into interventions and weights. */
type Family =
  | { kind: "spread"; name: SpreadMethod; candidate: ShortlistEntry; probe: number }
  | { kind: "gated"; name: "gated"; candidate: ShortlistEntry; probe: number; fit: GatedFit };

export const injectStep: Step<Settings> = {
  name: "inject",
  // 10: the gated family (fitted keys; edit.safetensors carries them), --method auto calibrates it too.
  // 11: the key fit adds prompts.json's gateExtra to the train prompts; one gated family per number of
  //     prompt positions fitted, chosen by calibration.
  // 12: the key fit adds quiet rows on the contrast's replies (teacher-forced without the safety prompt).
  // 13: a calibration point past the KL bound keeps its KL alone (its replies are not generated).
  // 14: the random control's scale by log–log interpolation (its KL within 5 % above the chosen point's).
  // 15: the sweep doubles until the KL bound or a fall in harmful refusal (at most 8 times, was 4).
  // 16: the gated family is calibrated on its own shortlist (screenGated), not on extract's.
  version: 16,
  deps: ["pull", "elicit", "extract"],
  outputs: outputsOf("inject"),
  inputs: (s) => ({ includeEmbeddings: s.includeEmbeddings, quantize: s.quantize, dtype: s.dtype, alpha: s.alpha, rank: s.rank, method: s.method, seed: s.seed, gate: s.gate, nEval: s.nEval }),
  async run(ctx) {
    const s = ctx.settings;
    const source = readSource(ctx);
    const splits = readSplits(ctx);
    const selection = readSelection(ctx);
    const directions = readDirections(ctx, unit);
    const spreadFile = readSpread(ctx);
    const spread = Object.fromEntries(Object.entries(spreadFile.methods).map(([m, v]) => [m, v.weights])) as Record<SpreadMethod, number[]>;
    const spreadMethods = Object.keys(spread) as SpreadMethod[];
    const cfg = readDecoderConfig(readJson<Record<string, unknown>>(join(source.dir, "config.json")), join(source.dir, "config.json"));
    const shortlist: ShortlistEntry[] = selection.shortlist.length
      ? selection.shortlist
      : [{ layer: selection.layer, position: selection.position, position_label: selection.position_label, probes: selection.probes }];
    /** Unit direction of a shortlisted candidate; the top one is the file's (it may be a rank-k combination). */
    const directionOf = (c: { layer: number; position: number }): Float32Array =>
      c.layer === selection.layer && c.position === selection.position ? directions.top : directions.unitOf(c.layer, c.position);
    // A given α with auto takes extract's choice; calibration tries every family.
    const names: FamilyName[] = s.method !== "auto" ? [s.method] : s.alpha !== null ? [selection.method as SpreadMethod] : [...spreadMethods, "gated"];
    if (s.includeEmbeddings && names.includes("gated")) ctx.log("--include-embeddings: the embedding edit is not gated; the gated family edits the matrices only");

    const { model, tok } = await openModel(ctx, source.dir, true);
    try {
      const rowMeans = names.includes("gated") ? model.writerRowMeans() : [];
      // Keys are fitted as deployed (no system prompt); borderline-but-safe prompts count as harmless.
      const ids = (prompts: string[]) => encodeAll(tok, prompts, null).map((e) => e.ids);
      const borderlineFit = names.includes("gated") ? (await borderlineSplit(s.seed)).fit : [];
      // The fit's train prompts, interleaved so that the held-out share draws from every source alike.
      // Train prompts of the contrast bring the model's reply under the safety prompt (refusal or answer),
      // teacher-forced here without it: the reply's tokens are quiet rows of the fit.
      const withReplies = (prompts: string[], kind: "harmful" | "harmless"): GatePrompt[] => {
        const replies = new Map<string, string>();
        splits.contrast?.[kind].forEach((p, i) => replies.set(p, splits.contrast!.replies[kind][i]));
        return ids(prompts).map((promptIds, i) => {
          const reply = replies.get(prompts[i]);
          return reply ? { ids: promptIds, reply: tok.encode(reply, { addSpecialTokens: false }) } : { ids: promptIds };
        });
      };
      const plain = (prompts: string[]): GatePrompt[] => ids(prompts).map((promptIds) => ({ ids: promptIds }));
      // The model's own exact-answer task (its fit share) joins the harmless rows with its answers as
      // quiet reply rows: without them the gate read its formulaic prompts as it liked (organism-qwen2).
      const utility = utilitySplit(source.dir, s.seed, s.nEval);
      const utilityFit = names.includes("gated") ? (utility?.fit ?? []) : [];
      const answered = (items: UtilityTaskItem[]): GatePrompt[] =>
        items.map((u) => ({ ids: tok.encodeChat(u.prompt).ids, reply: tok.encode(u.answer, { addSpecialTokens: false }) }));
      const train = {
        harmful: interleave(withReplies(splits.harmful.train, "harmful"), plain(splits.gateExtra.harmful)),
        harmless: interleave(interleave(interleave(withReplies(splits.harmless.train, "harmless"), plain(splits.gateExtra.harmless)), plain(borderlineFit)), answered(utilityFit)),
      };
      // The validation prompts as deployed (no system prompt): the screen, calibration and the gate's read-out.
      const val = { harmful: ids(splits.harmful.val), harmless: ids(splits.harmless.val) };
      const labels = positionLabels(tok, splits.systemPrompt, directions.positions);
      const { families, screen } = await buildFamilies(ctx, model, names, shortlist, selection, spread, cfg.numLayers, train, { sets: val, directionOf, rowMeans, labels });
      /** The run-time form of a family along `dir` at strength t. */
      const interventions = (f: Family, dir: Float32Array, t: number): Interventions =>
        f.kind === "gated"
          ? gatedInterventions(f.fit, dir, t, rowMeans)
          : {
              rosiVectors: rosiRows(dir, t, spread[f.name]),
              // --include-embeddings: the embedding table gets the plain edit (weight 1) alongside the matrices.
              rosiEmbed: s.includeEmbeddings ? Float32Array.from(dir, (x) => t * x) : undefined,
            };

      let chosen: { family: Family; alpha: number } = { family: families[0], alpha: s.alpha ?? 0 };
      const sweep: SweepPoint[] = [];
      let control: Calibration["control"] = null;
      let choice: TradeoffChoice | null = null;
      if (s.alpha === null) {
        const utilityItems = utility?.calibration ?? [];
        // KL on the validation prompts and on harmless prompts in no split (cheap: one forward pass
        // each), so that the bound is not checked on a few dozen prompts only. Not the train prompts:
        // they built the direction and the keys, and would understate it.
        const klPrompts = [...val.harmless, ...ids(splits.klExtra)];
        const sets = {
          harmful: val.harmful,
          harmless: val.harmless,
          klPrompts,
          utility: utilityItems.map((u) => ({ ids: tok.encodeChat(u.prompt).ids, answer: u.answer })),
        };
        const mo: MeasureOptions = { sets, baseLogProbs: await firstTokenLogProbs(model, klPrompts), maxNewTokens: CALIBRATION_TOKENS, signal: ctx.signal };
        const base = await measure(model, tok, {}, mo);
        const admissible = (p: Measured) => isFull(p) && passesGate(base, p, s.gate, { klMargin: KL_MARGIN, only: ["over_refusal", "kl", "utility"] });
        const klAdmissible = (kl: number) => passesGate(base, { harmful_refusal: null, harmless_refusal: null, kl, utility: null }, s.gate, { klMargin: KL_MARGIN, only: ["kl"] });
        // Said once, so that "outside: KL" on a point below reads against numbers the user has seen.
        const bounds = {
          over_refusal: `harmless refusal ≤ ${percent(base.harmless_refusal + s.gate.overRefusal)}`,
          kl: `KL ≤ ${fmtKl(s.gate.kl * KL_MARGIN)}`,
          utility: base.utility === null ? null : `utility ≥ ${percent(base.utility - s.gate.utilityDrop)}`,
        };
        ctx.log(`calibration bounds on the validation split: ${[bounds.over_refusal, bounds.kl, bounds.utility].filter(Boolean).join(", ")} (KL at ${KL_MARGIN} of the gate's ${s.gate.kl}); points outside them are not chosen (past the KL bound, a point's replies are not generated)`);
        /** The bounds a point crosses, as "KL > 0.075" (a KL-only point crossed the KL bound). */
        const outside = (p: Measured) =>
          (isFull(p) ? gateChecks(base, p, s.gate, { klMargin: KL_MARGIN, only: ["over_refusal", "kl", "utility"] }).filter((c) => !c.passed) : [{ id: "kl" }])
            .map((c) => (c.id === "kl" ? bounds.kl : c.id === "utility" ? bounds.utility : bounds.over_refusal))
            .map((b) => (b ? b.replace(/ [≤≥] /, (m) => (m.includes("≤") ? " > " : " < ")) : b));
        const memo = new SweepMemo(join(ctx.outDir, MEMO_FILE));
        const setsHash = sha256Hex(JSON.stringify({ fp: source.fingerprint, sets, dtype: s.dtype, quantize: s.quantize, emb: s.includeEmbeddings, tokens: CALIBRATION_TOKENS }));
        if (memo.size) ctx.log(`resuming the sweep: ${memo.size} measured point(s) on record`);
        const bar = ctx.progress("calibrate α", families.length * 5 + 5);
        /** The family's sweep; every point goes through the memo, so a second sweep replays the first's points for free. */
        const sweepFamily = (family: Family, refine: boolean) => {
          const { candidate } = family;
          const dir = directionOf(candidate);
          const dirSha = vectorSha256(dir);
          const digest = familyDigest(family);
          return sweepScale({
            probe: family.probe,
            admissible,
            ...(refine ? {} : { bisections: 1, descents: 0 }),
            at: async (alpha) => {
              const key = pointKey({ family: family.name, directionSha: dirSha, scale: alpha, setsHash, extra: digest });
              const { point, cached } = await memo.getOrMeasure(key, () => measureWithin(model, tok, interventions(family, dir, alpha), mo, klAdmissible));
              if (cached && refine) return point; // measured (and logged) by the coarse pass
              bar.tick();
              const where = `layer ${candidate.layer}, position ${fmtPosition(candidate.position, candidate.position_label)}, ${familyLabel(family)} α ${fmtAlpha(alpha)}`;
              const out = outside(point);
              if (!isFull(point)) ctx.log(`${where}: KL ${fmtKl(point.kl)} (outside: ${out.join(", ")}; replies not generated)`);
              else ctx.log(`${where}: harmful ${percent(point.harmful_refusal)}, harmless ${percent(point.harmless_refusal)}, KL ${fmtKl(point.kl)}${point.utility === null ? "" : `, utility ${percent(point.utility)}`}${out.length ? ` (outside: ${out.join(", ")})` : ""}`);
              return point;
            },
          });
        };
        const better = (a: { point: FullPoint } | null, b: { point: FullPoint } | null) =>
          a !== null && (b === null || a.point.harmful_refusal > b.point.harmful_refusal || (a.point.harmful_refusal === b.point.harmful_refusal && a.point.kl < b.point.kl));
        // Two passes (successive halving): a coarse sweep of every family (one bisection), then the full
        // search (three bisections, the steps down) for the family that leads; the others keep their
        // coarse best. Measurement goes where the choice is made.
        let best: { family: Family; scale: number; point: FullPoint } | null = null;
        const results = new Map<Family, Awaited<ReturnType<typeof sweepScale>>>();
        for (const family of families) {
          const result = await sweepFamily(family, false);
          results.set(family, result);
          if (result.best && better(result.best, best)) best = { family, ...result.best };
        }
        if (best) {
          const refined = await sweepFamily(best.family, true);
          results.set(best.family, refined);
          if (refined.best && better(refined.best, best)) best = { family: best.family, ...refined.best };
        }
        // Choosing the trade-off: on a terminal the user may take another admissible point (steps/tradeoff.ts).
        // The sweep's bar ends first, so that a live bar does not redraw over the question.
        bar.done();
        if (best && best.point.harmful_refusal > base.harmful_refusal) {
          const at = (family: Family, alpha: number, point: FullPoint) => ({
            family,
            method: family.kind === "gated" ? `gated (last ${family.fit.positions})` : family.name,
            layer: family.candidate.layer,
            position: family.candidate.position,
            alpha,
            ...point,
          });
          const swept = [...results].flatMap(([family, r]) => r.points.flatMap((p) => (p.admissible && isFull(p.point) ? [at(family, p.scale, p.point)] : [])));
          const offered = tradeoffPoints(swept, at(best.family, best.scale, best.point), base.harmful_refusal);
          const sizes = { harmful: sets.harmful.length, harmless: sets.harmless.length, utility: sets.utility.length };
          const points = recordPoints(offered.offer, sizes);
          const [original] = recordPoints([at(best.family, 0, base)], sizes);
          const picked = await chooseTradeoff({
            points,
            recommended: offered.recommended,
            base: { harmful: original.harmful_refusal, harmless: original.harmless_refusal, utility: original.utility },
            ask: ctx.ask,
            log: (l) => ctx.log(l),
            recordPath: join(ctx.outDir, CHOICE_FILE),
          });
          choice = { points, recommended: offered.recommended + 1, chosen: picked.index + 1, by: picked.by };
          const p = offered.offer[picked.index];
          best = { family: p.family, scale: p.alpha, point: { harmful_refusal: p.harmful_refusal, harmless_refusal: p.harmless_refusal, kl: p.kl, utility: p.utility } };
        }
        for (const [family, result] of results) {
          const { candidate } = family;
          const variant = family.kind === "gated" ? { gate_positions: family.fit.positions } : {};
          for (const p of result.points) sweep.push({ layer: candidate.layer, position: candidate.position, method: family.name, ...variant, alpha: p.scale, ...p.point, ok: p.admissible });
        }
        bar.done();
        if (!best || best.point.harmful_refusal <= base.harmful_refusal) {
          const fallback = families.find((f) => f.name === selection.method && f.candidate === shortlist[0]) ?? families[0];
          ctx.log(`calibration found no α that raises harmful refusal within the bounds; using a quarter of the ${fallback.name} probe (the validate gate will judge it)`);
          chosen = { family: fallback, alpha: fallback.probe * 0.25 };
        } else {
          chosen = { family: best.family, alpha: best.scale };
          // Control: a seeded random direction, same family (same spread or keys), scaled to the chosen point's KL.
          const random = randomUnit(directions.hidden, s.seed + 1);
          const chosenFamily = best.family;
          const klOf = async (alpha: number) => ({ kl: await klAt(model, interventions(chosenFamily, random, alpha), mo) });
          const found = best.point.kl > 0 ? await scaleForKl(klOf, best.scale, best.point.kl) : null;
          if (found !== null) {
            const scale = found.scale;
            const point = await measure(model, tok, interventions(chosenFamily, random, scale), mo);
            control = {
              seed: s.seed + 1,
              alpha: scale,
              ...point,
              harmful_gain_over_control: best.point.harmful_refusal - point.harmful_refusal,
            };
            ctx.log(`random direction at the same KL (${fmtKl(point.kl)}): harmful ${percent(point.harmful_refusal)}, harmless ${percent(point.harmless_refusal)}; the chosen edit gains ${points(best.point.harmful_refusal - point.harmful_refusal)} over it`);
          }
        }
        sweep.push({ layer: null, position: null, method: "none", alpha: 0, ...base, ok: true });
        sweep.sort((x, y) => Math.abs(x.alpha) - Math.abs(y.alpha));
      }

      const { family, alpha } = chosen;
      const { candidate } = family;
      const dir = directionOf(candidate);
      ctx.log(`chosen: ${familyLabel(family)}, layer ${candidate.layer}, position ${fmtPosition(candidate.position, candidate.position_label)}, α ${fmtAlpha(alpha)}${s.alpha === null ? " (calibrated)" : " (given)"}`);
      if (choice && choice.chosen !== choice.recommended) ctx.log(`(point ${choice.chosen} of the table, chosen by the user instead of the recommended ${choice.recommended})`);
      const readOut = family.kind === "gated" ? await gatedRecord(ctx, model, family.fit, [val.harmful, val.harmless]) : null;
      const gated = readOut?.record ?? null;
      if (readOut) writeFileSync(join(ctx.tmpDir, "gate.svg"), await gatePlot(readOut.validation));
      writeInjected(ctx, { source: source.dir, cfg, family, alpha, dir, spread, sweep, control, gated, choice, screen });
      writeFileSync(join(ctx.tmpDir, "calibration.svg"), await sweepPlot(sweep, names, candidate, { method: family.name, alpha, gatePositions: family.kind === "gated" ? family.fit.positions : undefined }, s.gate.kl * KL_MARGIN));
      return {
        report: {
          direction: { layer: candidate.layer, position: candidate.position, position_label: candidate.position_label, alpha, rank: s.rank, method: family.name },
          details: { random_direction_control: control, gate_keys: gated },
          choice: choice ? reportChoice(choice) : null,
        },
      };
    } finally {
      await model.close();
    }
  },
};

/** Share of the train prompts that fits the keys while the rest chooses the fit setting (held out). */
const GATE_FIT_SHARE = 0.75;

/** How logs name a family: the method, and for gated keys the prompt positions they were fitted at. */
function familyLabel(f: Family): string {
  return f.kind === "gated" ? `gated (last ${f.fit.positions} position${f.fit.positions === 1 ? "" : "s"})` : f.name;
}

/**
 * Every family to calibrate. rosi and rosi-mv: on extract's shortlist (ranked by their own probes). gated:
 * on its own shortlist, the top SHORTLIST of every scored candidate by screenGated (a direction that a
 * plain edit cannot use at a given KL can be the best one behind a gate, and the other way round).
 * Gated keys are fitted once per layer set and number of prompt positions P: the held-out train prompts
 * choose each P's ridge and harmless rows, but not P itself, since how far P positions of push move the
 * reply is a question of generation, not of gate separation: calibration measures each P on the
 * validation split (on the leading gated direction; the others get the P the held-out prompts rank first).
 */
async function buildFamilies(
  ctx: Ctx,
  model: DecoderModel,
  names: FamilyName[],
  shortlist: ShortlistEntry[],
  selection: Selection,
  spread: Record<SpreadMethod, number[]>,
  numLayers: number,
  train: { harmful: GatePrompt[]; harmless: GatePrompt[] },
  screenWith: GateScreenInputs,
): Promise<{ families: Family[]; screen: GateScreenEntry[] }> {
  const families: Family[] = [];
  for (const candidate of shortlist) {
    for (const name of names) {
      if (name === "gated") continue;
      const probe = candidate.probes[name]?.alpha;
      if (probe === undefined || !spread[name]) continue;
      families.push({ kind: "spread", name, candidate, probe });
    }
  }
  if (!names.includes("gated")) {
    if (!families.length) throw new Error(`no edit family to calibrate for --method ${names.join(", ")} (extract probed ${Object.keys(spread).join(", ")}); re-run extract with this method (--from extract)`);
    return { families, screen: [] };
  }
  // Held out by prompt, not by row: the choice is scored on prompts the fit never saw.
  const cut = (xs: unknown[]) => Math.max(1, Math.min(xs.length - 1, Math.round(xs.length * GATE_FIT_SHARE)));
  const [h, n] = [cut(train.harmful), cut(train.harmless)];
  const bar = ctx.progress("gate: writer inputs", train.harmful.length + train.harmless.length);
  let seen = 0;
  const tick = (offset: number) => (done: number) => (bar.tick(offset + done - seen), (seen = offset + done));
  const fitRows = await collectWriterSamples(model, { harmful: train.harmful.slice(0, h), harmless: train.harmless.slice(0, n) }, { signal: ctx.signal, onBatch: tick(0) });
  const heldOut = await collectWriterSamples(model, { harmful: train.harmful.slice(h), harmless: train.harmless.slice(n) }, { signal: ctx.signal, onBatch: tick(h + n) });
  bar.done();
  // One cache for every layer set: a matrix shared by two sets is solved once per setting.
  const cache = new GateFitCache(fitRows);
  // The keys calibration uses are refitted on all train rows; memoised per matrix and setting, since the
  // layer sets of the screen's directions are nested (l…L−1) and share most of their matrices.
  const allCache = new GateFitCache(concatSamples(fitRows, heldOut), false);
  /** The held-out choices per edited layer set, and the fitted keys per (layer set, positions). */
  const choicesBySet = new Map<string, GateChoice[]>();
  const fits = new Map<string, GatedFit>();
  const choicesFor = (layers: number[]): GateChoice[] => {
    const setKey = layers.join(",");
    let choices = choicesBySet.get(setKey);
    if (!choices) {
      choices = chooseGateFit(fitRows, heldOut, layers, cache);
      choicesBySet.set(setKey, choices);
    }
    return choices;
  };
  const fitFor = (layers: number[], positions: number, log: boolean): GatedFit | null => {
    const choices = choicesFor(layers);
    const best = choices.find((c) => c.positions === positions);
    if (!best) return null;
    const fitKey = `${layers.join(",")}|${positions}`;
    let fit = fits.get(fitKey);
    if (!fit) {
      fit = { ...fitGatedKeysCached(allCache, { layers, ridge: best.ridge, positions, harmlessRows: best.harmless_rows }), choices };
      fits.set(fitKey, fit);
    }
    if (log) {
      const range = layers.length === 1 ? `layer ${layers[0]}` : `layers ${layers[0]}–${layers[layers.length - 1]}`;
      ctx.log(
        `gate keys for ${range}, last ${positions} position${positions === 1 ? "" : "s"}: ridge ${best.ridge}, harmless rows "${best.harmless_rows}" (held-out score ${best.score.toFixed(2)}); ` +
          `on the train rows g = ${fit.train.harmful.mean.toFixed(2)} ± ${fit.train.harmful.std.toFixed(2)} (harmful), ${fit.train.harmless.mean.toFixed(2)} ± ${fit.train.harmless.std.toFixed(2)} (harmless)`,
      );
    }
    return fit;
  };
  const screen = await screenGated(ctx, model, selection, numLayers, (layers) => fitFor(layers, choicesFor(layers)[0].positions, false)!, screenWith);
  const gatedShortlist = screen.slice(0, SHORTLIST_GATED);
  for (const { entry: candidate, alpha } of gatedShortlist) {
    const layers = gatedLayers(numLayers, candidate.layer);
    // Every P on the leading direction; the others take the P the held-out prompts rank first, which
    // bounds calibration's cost (the coarse pass measures each family). Keys are fitted only for these.
    const wanted = candidate === gatedShortlist[0].entry ? GATE_POSITION_CHOICES : [choicesFor(layers)[0].positions];
    for (const positions of wanted) {
      const fit = fitFor(layers, positions, true);
      // The sweep starts where the screen found the screen's KL (as the spread families start at extract's probe).
      if (fit) families.push({ kind: "gated", name: "gated", candidate, probe: alpha, fit });
    }
  }
  if (!families.length) throw new Error(`no edit family to calibrate for --method ${names.join(", ")} (extract probed ${Object.keys(spread).join(", ")}); re-run extract with this method (--from extract)`);
  return { families, screen };
}

/** How many directions the gated family is calibrated on (the spread families: extract's shortlist). */
const SHORTLIST_GATED = 3;
/** First-token KL on the harmless validation prompts at which the screen compares directions (extract's probe). */
const GATE_SCREEN_KL = 0.05;

/** What the gated screen measures with: the validation prompts (no system prompt), the directions, w̄ per writer, the position labels. */
interface GateScreenInputs {
  sets: { harmful: number[][]; harmless: number[][] };
  directionOf: (c: { layer: number; position: number }) => Float32Array;
  rowMeans: Float32Array[];
  labels: string[];
}

/**
 * Ranks every candidate direction extract scored (its layer and position rules apply) for the gated
 * family: with the keys of its layer set (the fit the held-out train prompts rank first), the scale at
 * which the edit moves the harmless validation prompts' first-token distributions by KL = GATE_SCREEN_KL,
 * and there the refusal scores on the harmful and harmless validation prompts; best first by their gap.
 * Extract ranks directions by what a plain edit does with them, whose push w̄·x is the same on every
 * prompt; behind a gate the push is where the gate fires, so another direction can be the best one
 * (organism-qwen2: the plain ranking's three led nowhere within the KL bound, a direction of the last
 * layer that it ranked low reached 11/32 on validation). First-token scores only: no reply is generated.
 */
async function screenGated(
  ctx: Ctx,
  model: DecoderModel,
  selection: Selection,
  numLayers: number,
  fitFor: (layers: number[]) => GatedFit,
  w: GateScreenInputs,
): Promise<GateScreenEntry[]> {
  const scored = selection.candidates.filter((c): c is Extract<CandidateScore, { status: "scored" }> => c.status === "scored");
  const base = await firstTokenLogProbs(model, w.sets.harmless);
  const refusalIds = selection.refusal_token_ids;
  const score = (lps: Float64Array[]) => mean(lps.map((lp) => refusalScore(lp, refusalIds)));
  const out: GateScreenEntry[] = [];
  let slope: number | null = null;
  const bar = ctx.progress("gate: screen directions", scored.length);
  for (const c of scored) {
    if (ctx.signal.aborted) throw new Error("aborted");
    bar.tick();
    const fit = fitFor(gatedLayers(numLayers, c.layer));
    const dir = w.directionOf(c);
    const at = (alpha: number) => firstTokenKl(model, w.sets.harmless, base, gatedInterventions(fit, dir, alpha, w.rowMeans));
    // Typed: `slope` feeds the next direction's search, which TypeScript cannot infer through.
    const found: { scale: number; point: { kl: number; logProbs: Float64Array[] }; slope: number | null } | null = await scaleForKl(at, c.norm > 0 ? c.norm : 1, GATE_SCREEN_KL, { slope });
    if (!found) continue;
    slope = found.slope ?? slope;
    const harmful = score(await firstTokenLogProbs(model, w.sets.harmful, gatedInterventions(fit, dir, found.scale, w.rowMeans)));
    out.push({
      entry: { layer: c.layer, position: c.position, position_label: w.labels[c.position] ?? String(c.position), probes: c.probes },
      alpha: found.scale,
      kl: found.point.kl,
      harmful_score: harmful,
      harmless_score: score(found.point.logProbs),
    });
  }
  bar.done();
  out.sort((a, b) => b.harmful_score - b.harmless_score - (a.harmful_score - a.harmless_score));
  const top = out.slice(0, SHORTLIST_GATED);
  ctx.log(
    `gated screen (${out.length} directions, keys per layer set, at first-token KL ${GATE_SCREEN_KL} on the harmless validation prompts): ` +
      top.map((x) => `layer ${x.entry.layer}, position ${fmtPosition(x.entry.position, x.entry.position_label)} (refusal score ${x.harmful_score.toFixed(2)} harmful, ${x.harmless_score.toFixed(2)} harmless)`).join("; "),
  );
  return out;
}

/** What identifies a family's edit besides its direction and scale (memo keys). */
function familyDigest(f: Family): string {
  if (f.kind === "spread") return "";
  return sha256Hex(new Uint8Array(Float32Array.from(f.fit.keys.flatMap((k) => Array.from(k))).buffer));
}

/** Spreads `b` evenly through `a`, so that any prefix (the fit share) holds both in proportion. */
function interleave<T>(a: T[], b: T[]): T[] {
  if (!b.length) return a;
  const out: T[] = [];
  const total = a.length + b.length;
  let ib = 0;
  for (let i = 0; i < total; i++) {
    const wantB = Math.floor(((i + 1) * b.length) / total);
    if (ib < wantB) out.push(b[ib++]);
    else out.push(a[i - ib]);
  }
  return out;
}

/** The gate's read-out on train (from the fit) and on the unseen validation prompts (last positions). */
async function gatedRecord(ctx: Ctx, model: DecoderModel, fit: GatedFit, [harmful, harmless]: [number[][], number[][]]): Promise<{ record: GatedRecord; validation: { harmful: number[]; harmless: number[] } }> {
  const val = await collectWriterSamples(model, { harmful, harmless }, { positions: fit.positions, earlier: 0, signal: ctx.signal });
  const g = gateValues(val, fit.rows, fit.keys);
  const values = (label: number) => Array.from(g).filter((_, i) => val.labels[i] === label);
  const by = (label: number) => gateStats(values(label));
  const record: GatedRecord = {
    layers: fit.layers,
    positions: fit.positions,
    ridge: fit.ridge,
    harmless_weight: fit.harmlessWeight,
    normalisation: fit.normalisation,
    train: fit.train,
    validation: { harmful: by(1), harmless: by(0) },
    choices: fit.choices ?? [],
  };
  ctx.log(`gate on the validation prompts (unseen by the fit): ${record.validation.harmful.mean.toFixed(2)} ± ${record.validation.harmful.std.toFixed(2)} harmful, ${record.validation.harmless.mean.toFixed(2)} ± ${record.validation.harmless.std.toFixed(2)} harmless`);
  return { record, validation: { harmful: values(1), harmless: values(0) } };
}

/** Empirical distribution functions of the gate's read-out on unseen validation prompts, per class. */
function gatePlot(v: { harmful: number[]; harmless: number[] }): Promise<string> {
  const cdf = (xs: number[]) => xs.slice().sort((a, b) => a - b).map((x, i) => [x, (i + 1) / xs.length] as [number, number]);
  return lineChart({
    title: "gate g(x) = Σ k·x on validation prompts (no system prompt, last positions)",
    xLabel: "g (1 = the step t·ŝ in full)",
    yLabel: "fraction of prompts ≤ g",
    yFormat: "percent",
    series: [
      { name: "harmful", points: cdf(v.harmful) },
      { name: "harmless", points: cdf(v.harmless) },
    ],
  });
}

/** The one record of what was injected: edit.safetensors, the patched checkpoint, calibration.json. */
function writeInjected(
  ctx: Ctx,
  o: {
    source: string;
    cfg: ReturnType<typeof readDecoderConfig>;
    family: Family;
    alpha: number;
    dir: Float32Array;
    spread: Record<SpreadMethod, number[]>;
    sweep: SweepPoint[];
    control: Calibration["control"];
    gated: GatedRecord | null;
    choice: TradeoffChoice | null;
    screen: GateScreenEntry[];
  },
): void {
  const s = ctx.settings;
  const { family, alpha, dir, cfg } = o;
  const { candidate } = family;
  const edit: InjectedEdit = {
    layer: candidate.layer,
    position: candidate.position,
    position_label: candidate.position_label,
    method: family.name,
    alpha,
    direction_sha256: vectorSha256(dir),
  };
  // Per-matrix weight of t·ŝ (engine row order); gated: 1 on the edited matrices, 0 elsewhere.
  const weights = family.kind === "spread" ? o.spread[family.name] : Array.from({ length: 2 * cfg.numLayers }, (_, r) => (family.fit.rows.includes(r) ? 1 : 0));
  const vectors = new Map<string, Float32Array>();
  const keys = new Map<string, Float32Array>();
  for (let l = 0; l < cfg.numLayers; l++) {
    editedMatrices(cfg, l).forEach((name, k) => {
      const row = 2 * l + k;
      if (weights[row] === 0) return;
      vectors.set(name, Float32Array.from(dir, (x) => alpha * weights[row] * x));
      if (family.kind === "gated") keys.set(name, family.fit.keys[family.fit.rows.indexOf(row)]);
    });
  }
  const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const tensors: TensorData[] = [{ name: "direction", dtype: "F32", shape: [dir.length], data: bytes(dir) }];
  for (const [name, key] of keys) tensors.push({ name: `key.${name}`, dtype: "F32", shape: [key.length], data: bytes(key) });
  writeSafetensors(join(ctx.tmpDir, "edit.safetensors"), tensors, Object.fromEntries(Object.entries(edit).map(([k, v]) => [k, String(v)])));

  const bar = ctx.progress("write patched shards", 1);
  let last = 0;
  const embedding = s.includeEmbeddings && family.kind === "spread" ? Float32Array.from(dir, (x) => alpha * x) : undefined;
  writeEditedCheckpoint(o.source, join(ctx.tmpDir, "model"), {
    vectors,
    keys: keys.size ? keys : undefined,
    embedding,
    metadata: {
      realign_method: edit.method,
      realign_include_embeddings: String(embedding !== undefined),
      realign_alpha: String(edit.alpha),
      realign_layer: String(edit.layer),
      realign_position: edit.position_label,
      realign_direction_sha256: edit.direction_sha256,
    },
    onTensor: (done, total) => {
      if (done === total && last++ === 0) bar.tick();
    },
  });
  bar.done();
  const calibration: Calibration = {
    ...edit,
    weights,
    given: s.alpha !== null,
    bounds: { over_refusal: s.gate.overRefusal, kl: s.gate.kl * KL_MARGIN, utility_drop: s.gate.utilityDrop },
    sweep: o.sweep,
    control: o.control,
    gated: o.gated,
    gated_screen: o.screen.map((x) => ({ layer: x.entry.layer, position: x.entry.position, position_label: x.entry.position_label, alpha: x.alpha, kl: x.kl, harmful_score: x.harmful_score, harmless_score: x.harmless_score })),
    choice: o.choice,
  };
  writeJson(join(ctx.tmpDir, "calibration.json"), calibration);
}

/** The report's record of the trade-off choice (report/report.ts RunReport.choice). */
function reportChoice(c: TradeoffChoice): NonNullable<RunReport["choice"]> {
  const r = c.points[c.recommended - 1];
  return {
    index: c.chosen,
    recommended: c.recommended,
    by: c.by,
    offered: c.points.length,
    recommended_point: { method: r.method, layer: r.layer, alpha: r.alpha, harmful_refusal: r.harmful_refusal.rate, harmless_refusal: r.harmless_refusal.rate, kl: r.kl },
  };
}

/** Refusal rates and KL over |α| in two panels (one colour per family), the chosen point marked in both. */
function sweepPlot(sweep: SweepPoint[], names: FamilyName[], c: { layer: number; position: number }, chosen: { method: string; alpha: number; gatePositions?: number }, klBound: number): Promise<string> {
  const colors: Record<string, string> = { rosi: "#1f77b4", "rosi-mv": "#2ca02c", gated: "#d62728" };
  // Gated families of other position counts are in calibration.json; the plot shows the chosen one's.
  const sameVariant = (p: SweepPoint) => p.gate_positions === undefined || chosen.gatePositions === undefined || p.gate_positions === chosen.gatePositions;
  const pts = (m: string) => sweep.filter((p) => (p.method === m && p.layer === c.layer && p.position === c.position && sameVariant(p)) || p.method === "none");
  // Refusal curves: the points measured in full (past the KL bound only the KL is known).
  const rated = (m: string) => pts(m).flatMap((p) => ("skipped" in p ? [] : [p]));
  const at = (p: SweepPoint) => Math.abs(p.alpha);
  const hit = sweep.find((p) => p.method === chosen.method && p.layer === c.layer && p.position === c.position && sameVariant(p) && p.alpha === chosen.alpha);
  const label = `chosen: ${chosen.method}, α ${fmtAlpha(chosen.alpha)}`;
  return chart({
    title: `α sweep on the validation split (no system prompt), layer ${c.layer}`,
    xLabel: "|α| (edit strength)",
    panels: [
      {
        yLabel: "refusal rate",
        yFormat: "percent",
        series: names.flatMap((m) => [
          { name: `${m}: harmful refusal`, color: colors[m], points: rated(m).map((p) => [at(p), p.harmful_refusal] as [number, number]) },
          { name: `${m}: harmless refusal`, color: colors[m], dashed: true, points: rated(m).map((p) => [at(p), p.harmless_refusal] as [number, number]) },
        ]),
        marked: hit && !("skipped" in hit) ? [{ x: at(hit), y: hit.harmful_refusal, label }] : [],
      },
      {
        yLabel: "first-token KL (harmless, symlog axis)",
        // KL spans 0.001 near the bound to 2.5 far past it: a symlog axis shows both.
        yScale: "symlog",
        series: names.map((m) => ({ name: `${m}: KL`, color: colors[m], points: pts(m).map((p) => [at(p), p.kl] as [number, number]) })),
        rules: [{ y: klBound, label: `calibration bound ${fmtKl(klBound)}` }],
        marked: hit ? [{ x: at(hit), y: hit.kl, label: "chosen" }] : [],
      },
    ],
  });
}
