// inject: calibrate α without the safety prompt (largest harmful refusal whose harmless over-refusal
// rise, first-token KL and utility drop stay within bounds), then write the patched checkpoint.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { SafetensorsFile } from "../engine/safetensors.ts";
import { readDecoderConfig } from "../engine/architectures.ts";
import type { DecoderModel } from "../engine/model.ts";
import type { ModelTokenizer } from "../engine/tokenizer.ts";
import { isRefusal } from "../evals/refusal.ts";
import { encodeAll, firstTokenLogProbs, generateTexts, klDivergence, mean } from "../evals/measure.ts";
import { rosiRows, type SpreadMethod } from "../rosi/spread.ts";
import { unit } from "../rosi/directions.ts";
import { openModel, readJson, type Ctx } from "./common.ts";
import { utilitySplit } from "../evals/datasets.ts";
import { passesGate } from "../evals/gate.ts";
import { outputsOf, readDirections, readSelection, readSource, readSplits, readSpread, writeJson, type Calibration, type InjectedEdit, type SweepPoint } from "./artefacts.ts";
import { writeSafetensors } from "../engine/safetensors.ts";
import { editedMatrices, vectorSha256, writeEditedCheckpoint } from "../rosi/edit.ts";
import { lineChart } from "../report/plot.ts";

/**
 * Calibration keeps to the gate's bounds (over-refusal rise, first-token KL, utility drop), measured on
 * the validation split. KL is heavy-tailed across prompts, so it is held to 3/4 of the gate's bound as a
 * margin for unseen prompts.
 */
const KL_MARGIN = 0.75;
const CALIBRATION_TOKENS = 32;

async function measure(ctx: Ctx, model: DecoderModel, tok: ModelTokenizer, sets: { harmful: number[][]; harmless: number[][]; klPrompts: number[][]; utility: { ids: number[]; answer: string }[] }, baseN: Float64Array[], dir: Float32Array, weights: number[], alpha: number): Promise<Omit<SweepPoint, "ok" | "method" | "layer" | "position">> {
  const rosiVectors = alpha === 0 ? undefined : rosiRows(dir, alpha, weights);
  // --include-embeddings: the embedding table gets the plain edit (weight 1) alongside the matrices.
  const rosiEmbed = alpha !== 0 && ctx.settings.includeEmbeddings ? Float32Array.from(dir, (x) => alpha * x) : undefined;
  const gen = async (ids: number[][], n: number) => (await generateTexts(model, tok, ids, { maxNewTokens: n, rosiVectors, rosiEmbed, signal: ctx.signal, batchSize: 32 })).texts;
  const harmful = mean((await gen(sets.harmful, CALIBRATION_TOKENS)).map((t) => +isRefusal(t)));
  const harmless = mean((await gen(sets.harmless, CALIBRATION_TOKENS)).map((t) => +isRefusal(t)));
  const lp = await firstTokenLogProbs(model, sets.klPrompts, { rosiVectors, rosiEmbed });
  const kl = mean(lp.map((q, i) => klDivergence(baseN[i], q)));
  let utility: number | null = null;
  if (sets.utility.length) {
    const texts = await gen(sets.utility.map((u) => u.ids), 24);
    utility = mean(texts.map((t, i) => +(t.trim() === sets.utility[i].answer)));
  }
  return { alpha, harmful_refusal: harmful, harmless_refusal: harmless, kl, utility };
}

export const injectStep: Step<Settings> = {
  name: "inject",
  // 8: writes edit.safetensors, the direction it injected (publish ships it).
  version: 8,
  deps: ["pull", "elicit", "extract"],
  outputs: outputsOf("inject"),
  inputs: (s) => ({ includeEmbeddings: s.includeEmbeddings, quantize: s.quantize, dtype: s.dtype, alpha: s.alpha, rank: s.rank, method: s.method, seed: s.seed, gate: s.gate, nEval: s.nEval }),
  async run(ctx) {
    const s = ctx.settings;
    const source = readSource(ctx);
    const splits = readSplits(ctx);
    const selection = readSelection(ctx);
    const directions = readDirections(ctx, unit);
    let dir = directions.top;
    const shortlist = selection.shortlist?.length ? selection.shortlist : [{ layer: selection.layer, position: selection.position, position_label: selection.position_label, probes: selection.probes }];
    /** Unit direction of a shortlisted candidate; the top one is the file's (it may be a rank-k combination). */
    const directionOf = (c: { layer: number; position: number }): Float32Array => {
      if (c.layer === selection.layer && c.position === selection.position) return dir;
      return directions.unitOf(c.layer, c.position);
    };
    let chosenCandidate: { layer: number; position: number; position_label: string } = shortlist[0];

    const spreadFile = readSpread(ctx);
    const spread = Object.fromEntries(Object.entries(spreadFile.methods).map(([m, v]) => [m, v.weights])) as Record<SpreadMethod, number[]>;
    const methods = Object.keys(spread) as SpreadMethod[];
    let method: SpreadMethod = s.method === "auto" ? (selection.method as SpreadMethod) : s.method;
    let alpha = s.alpha;
    let sweep: SweepPoint[] = [];
    if (alpha === null) {
      const { model, tok } = await openModel(ctx, source.dir, true);
      try {
        const utilityItems = utilitySplit(source.dir, s.seed, s.nEval)?.calibration ?? [];
        const harmlessVal = encodeAll(tok, splits.harmless.val, null).map((e) => e.ids);
        const sets = {
          harmful: encodeAll(tok, splits.harmful.val, null).map((e) => e.ids),
          harmless: harmlessVal,
          // Not the train prompts: they built the direction (their mean is in it) and overstate the KL.
          klPrompts: harmlessVal,
          utility: utilityItems.map((u) => ({ ids: tok.encodeChat(u.prompt).ids, answer: u.answer })),
        };
        const baseN = await firstTokenLogProbs(model, sets.klPrompts);
        const base = await measure(ctx, model, tok, sets, baseN, dir, spread[methods[0]], 0);
        // The validation gate's own checks, less the harmful one (calibration maximises it), KL with a margin.
        const ok = (p: Omit<SweepPoint, "ok" | "method" | "layer" | "position">) =>
          passesGate(base, p, s.gate, { klMargin: KL_MARGIN, only: ["over_refusal", "kl", "utility"] });
        const bar = ctx.progress("calibrate α", shortlist.length * methods.length * 13);
        const run = async (cand: { layer: number; position: number }, candDir: Float32Array, method: SpreadMethod, a: number) => {
          const p = await measure(ctx, model, tok, sets, baseN, candDir, spread[method], a);
          const point: SweepPoint = { layer: cand.layer, position: cand.position, method, ...p, ok: ok(p) };
          sweep.push(point);
          bar.tick();
          ctx.log(`L${cand.layer}/p${cand.position} ${method} α ${a.toPrecision(4)}: harmful ${(p.harmful_refusal * 100).toFixed(1)} %, harmless ${(p.harmless_refusal * 100).toFixed(1)} %, KL ${p.kl.toFixed(3)}${p.utility === null ? "" : `, utility ${(p.utility * 100).toFixed(1)} %`}${point.ok ? "" : " (out of bounds)"}`);
          return point;
        };
        const better = (a: SweepPoint | null, b: SweepPoint) => !a || b.harmful_refusal > a.harmful_refusal || (b.harmful_refusal === a.harmful_refusal && b.kl < a.kl);
        for (const cand of shortlist) {
          const candDir = directionOf(cand);
          for (const method of methods) {
            const probe = cand.probes[method]?.alpha;
            if (probe === undefined) continue;
            // Coarse grid around the probe, then finer steps between the best admissible point and the first failure above it.
            for (const f of [0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4]) await run(cand, candDir, method, probe * f);
            const mine = sweep.filter((p) => p.method === method && p.layer === cand.layer && p.position === cand.position);
            const b0 = mine.filter((p) => p.ok).reduce<SweepPoint | null>((a, b) => (better(a, b) ? b : a), null);
            if (b0) {
              const above = mine.filter((p) => !p.ok && Math.abs(p.alpha) > Math.abs(b0.alpha)).sort((x, y) => Math.abs(x.alpha) - Math.abs(y.alpha))[0];
              if (above) for (let i = 1; i <= 4; i++) await run(cand, candDir, method, b0.alpha + ((above.alpha - b0.alpha) * i) / 5);
            }
          }
        }
        bar.done();
        const chosen = sweep.filter((p) => p.ok).reduce<SweepPoint | null>((a, b) => (better(a, b) ? b : a), null);
        if (!chosen || chosen.harmful_refusal <= base.harmful_refusal) {
          ctx.log("calibration found no α that raises harmful refusal within the bounds; using a quarter of the selection probe (the validate gate will judge it)");
          method = selection.method as SpreadMethod;
          alpha = selection.alpha_probe * 0.25;
        } else {
          method = chosen.method as SpreadMethod;
          alpha = chosen.alpha;
          chosenCandidate = shortlist.find((c) => c.layer === chosen.layer && c.position === chosen.position)!;
          dir = directionOf(chosenCandidate);
        }
        sweep.push({ layer: null, position: null, method: "none", ...base, ok: true });
        sweep.sort((x, y) => Math.abs(x.alpha) - Math.abs(y.alpha));
      } finally {
        await model.close();
      }
    }
    ctx.log(`${method}, α = ${alpha.toPrecision(5)}${s.alpha === null ? " (calibrated)" : " (given)"}`);

    const cfg = readDecoderConfig(readJson<Record<string, unknown>>(join(source.dir, "config.json")));
    const numLayers = cfg.numLayers;
    const weights = spread[method];
    const vectors = new Map<string, Float32Array>();
    for (let l = 0; l < numLayers; l++) {
      editedMatrices(cfg, l).forEach((n, k) => vectors.set(n, Float32Array.from(dir, (x) => alpha! * weights[2 * l + k] * x)));
    }
    // The one record of what was injected: calibration.json, edit.safetensors, the weights' metadata and the report.
    const edit: InjectedEdit = {
      layer: chosenCandidate.layer,
      position: chosenCandidate.position,
      position_label: chosenCandidate.position_label,
      method,
      alpha,
      direction_sha256: vectorSha256(dir),
    };
    writeSafetensors(
      join(ctx.tmpDir, "edit.safetensors"),
      [{ name: "direction", dtype: "F32", shape: [dir.length], data: new Uint8Array(dir.buffer, dir.byteOffset, dir.byteLength) }],
      Object.fromEntries(Object.entries(edit).map(([k, v]) => [k, String(v)])),
    );
    const bar = ctx.progress("write patched shards", 1);
    let last = 0;
    writeEditedCheckpoint(source.dir, join(ctx.tmpDir, "model"), {
      vectors,
      embedding: s.includeEmbeddings ? Float32Array.from(dir, (x) => alpha! * x) : undefined,
      metadata: {
        realign_method: edit.method,
        realign_include_embeddings: String(s.includeEmbeddings),
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
      sweep,
    };
    writeJson(join(ctx.tmpDir, "calibration.json"), calibration);
    writeFileSync(
      join(ctx.tmpDir, "calibration.svg"),
      lineChart({
        title: "α sweep on the validation split (no system prompt)",
        xLabel: "|α|",
        yLabel: "rate / KL",
        series: [
          ...methods.flatMap((m) => {
            const pts = sweep.filter((p) => (p.method === m && p.layer === chosenCandidate.layer && p.position === chosenCandidate.position) || p.method === "none");
            return [
              { name: `${m}: harmful refusal`, points: pts.map((p) => [Math.abs(p.alpha), p.harmful_refusal] as [number, number]) },
              { name: `${m}: harmless refusal`, points: pts.map((p) => [Math.abs(p.alpha), p.harmless_refusal] as [number, number]) },
              { name: `${m}: KL`, points: pts.map((p) => [Math.abs(p.alpha), p.kl] as [number, number]) },
            ];
          }),
        ],
      }),
    );
    return { report: { direction: { layer: chosenCandidate.layer, position: chosenCandidate.position, alpha, rank: s.rank, method } } };
  },
};
