// inject: calibrate the edit's strength without the safety prompt (rosi/calibrate.ts: the largest
// harmful refusal within the gate's over-refusal, KL and utility bounds, on the validation split),
// compare it with a random direction at the same KL, then write the patched checkpoint and the
// record of what was injected (edit.safetensors, calibration.json).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { readDecoderConfig } from "../engine/architectures.ts";
import { writeSafetensors } from "../engine/safetensors.ts";
import { encodeAll, firstTokenLogProbs, type Interventions } from "../evals/measure.ts";
import { utilitySplit } from "../evals/datasets.ts";
import { passesGate } from "../evals/gate.ts";
import { rosiRows, type SpreadMethod } from "../rosi/spread.ts";
import { unit } from "../rosi/directions.ts";
import { editedMatrices, vectorSha256, writeEditedCheckpoint } from "../rosi/edit.ts";
import { klAt, measure, pointKey, randomUnit, scaleForKl, SweepMemo, sweepScale, type Measured, type MeasureOptions } from "../rosi/calibrate.ts";
import { sha256Hex } from "../util/fs.ts";
import { lineChart } from "../report/plot.ts";
import { openModel, readJson } from "./common.ts";
import { outputsOf, readDirections, readSelection, readSource, readSplits, readSpread, writeJson, type Calibration, type InjectedEdit, type ShortlistEntry, type SweepPoint } from "./artefacts.ts";

/** KL is heavy-tailed across prompts: calibration holds it to 3/4 of the gate's bound, a margin for unseen prompts. */
const KL_MARGIN = 0.75;
const CALIBRATION_TOKENS = 32;
/** Memo of measured sweep points inside the run directory (survives a crash; the step's tmp dir does not). */
const MEMO_FILE = ".inject-sweep.jsonl";

export const injectStep: Step<Settings> = {
  name: "inject",
  // 9: bisection sweep with a resumable memo, random-direction control in calibration.json.
  version: 9,
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
    const methods = Object.keys(spread) as SpreadMethod[];
    const shortlist: ShortlistEntry[] = selection.shortlist.length
      ? selection.shortlist
      : [{ layer: selection.layer, position: selection.position, position_label: selection.position_label, probes: selection.probes }];
    /** Unit direction of a shortlisted candidate; the top one is the file's (it may be a rank-k combination). */
    const directionOf = (c: { layer: number; position: number }): Float32Array =>
      c.layer === selection.layer && c.position === selection.position ? directions.top : directions.unitOf(c.layer, c.position);
    /** The run-time form of the edit along `dir` at strength α with a spread method's weights. */
    const interventions = (dir: Float32Array, method: SpreadMethod, alpha: number): Interventions => ({
      rosiVectors: rosiRows(dir, alpha, spread[method]),
      // --include-embeddings: the embedding table gets the plain edit (weight 1) alongside the matrices.
      rosiEmbed: s.includeEmbeddings ? Float32Array.from(dir, (x) => alpha * x) : undefined,
    });

    let chosen: { candidate: ShortlistEntry; method: SpreadMethod; alpha: number } = {
      candidate: shortlist[0],
      method: s.method === "auto" ? (selection.method as SpreadMethod) : s.method,
      alpha: s.alpha ?? 0,
    };
    const sweep: SweepPoint[] = [];
    let control: Calibration["control"] = null;
    if (s.alpha === null) {
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
        const mo: MeasureOptions = { sets, baseLogProbs: await firstTokenLogProbs(model, harmlessVal), maxNewTokens: CALIBRATION_TOKENS, signal: ctx.signal };
        const base = await measure(model, tok, {}, mo);
        const admissible = (p: Measured) => passesGate(base, p, s.gate, { klMargin: KL_MARGIN, only: ["over_refusal", "kl", "utility"] });
        const memo = new SweepMemo(join(ctx.outDir, MEMO_FILE));
        const setsHash = sha256Hex(JSON.stringify({ fp: source.fingerprint, sets, dtype: s.dtype, quantize: s.quantize, emb: s.includeEmbeddings, tokens: CALIBRATION_TOKENS }));
        if (memo.size) ctx.log(`resuming the sweep: ${memo.size} measured point(s) on record`);
        const families = shortlist.flatMap((candidate) => methods.filter((m) => candidate.probes[m]).map((method) => ({ candidate, method })));
        const bar = ctx.progress("calibrate α", families.length * 8);
        let best: { candidate: ShortlistEntry; method: SpreadMethod; scale: number; point: Measured } | null = null;
        for (const { candidate, method } of families) {
          const dir = directionOf(candidate);
          const dirSha = vectorSha256(dir);
          const result = await sweepScale({
            probe: candidate.probes[method].alpha,
            admissible,
            at: async (alpha) => {
              const key = pointKey({ family: method, directionSha: dirSha, scale: alpha, setsHash });
              const { point } = await memo.getOrMeasure(key, () => measure(model, tok, interventions(dir, method, alpha), mo));
              bar.tick();
              const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
              ctx.log(`L${candidate.layer}/p${candidate.position} ${method} α ${alpha.toPrecision(4)}: harmful ${pct(point.harmful_refusal)}, harmless ${pct(point.harmless_refusal)}, KL ${point.kl.toFixed(3)}${point.utility === null ? "" : `, utility ${pct(point.utility)}`}${admissible(point) ? "" : " (out of bounds)"}`);
              return point;
            },
          });
          for (const p of result.points) sweep.push({ layer: candidate.layer, position: candidate.position, method, alpha: p.scale, ...p.point, ok: p.admissible });
          const b = result.best;
          if (b && (!best || b.point.harmful_refusal > best.point.harmful_refusal || (b.point.harmful_refusal === best.point.harmful_refusal && b.point.kl < best.point.kl))) {
            best = { candidate, method, scale: b.scale, point: b.point };
          }
        }
        bar.done();
        if (!best || best.point.harmful_refusal <= base.harmful_refusal) {
          ctx.log("calibration found no α that raises harmful refusal within the bounds; using a quarter of the selection probe (the validate gate will judge it)");
          chosen = { candidate: shortlist[0], method: selection.method as SpreadMethod, alpha: selection.alpha_probe * 0.25 };
        } else {
          chosen = { candidate: best.candidate, method: best.method, alpha: best.scale };
          // Control: a seeded random direction, same spread, scaled to the chosen point's KL.
          const random = randomUnit(directions.hidden, s.seed + 1);
          const klOf = (alpha: number) => klAt(model, interventions(random, best!.method, alpha), mo);
          const scale = best.point.kl > 0 ? await scaleForKl(klOf, best.scale, best.point.kl) : null;
          if (scale !== null) {
            const point = await measure(model, tok, interventions(random, best.method, scale), mo);
            control = {
              seed: s.seed + 1,
              alpha: scale,
              ...point,
              harmful_gain_over_control: best.point.harmful_refusal - point.harmful_refusal,
            };
            ctx.log(`random direction at the same KL (${point.kl.toFixed(3)}): harmful ${(point.harmful_refusal * 100).toFixed(1)} %, harmless ${(point.harmless_refusal * 100).toFixed(1)} %; the chosen edit gains ${((best.point.harmful_refusal - point.harmful_refusal) * 100).toFixed(1)} points over it`);
          }
        }
        sweep.push({ layer: null, position: null, method: "none", alpha: 0, ...base, ok: true });
        sweep.sort((x, y) => Math.abs(x.alpha) - Math.abs(y.alpha));
      } finally {
        await model.close();
      }
    }
    const { candidate, method, alpha } = chosen;
    const dir = directionOf(candidate);
    ctx.log(`${method}, layer ${candidate.layer}, position ${candidate.position_label}, α = ${alpha.toPrecision(5)}${s.alpha === null ? " (calibrated)" : " (given)"}`);

    // The one record of what was injected: calibration.json, edit.safetensors, the weights' metadata and the report.
    const edit: InjectedEdit = {
      layer: candidate.layer,
      position: candidate.position,
      position_label: candidate.position_label,
      method,
      alpha,
      direction_sha256: vectorSha256(dir),
    };
    writeSafetensors(
      join(ctx.tmpDir, "edit.safetensors"),
      [{ name: "direction", dtype: "F32", shape: [dir.length], data: new Uint8Array(dir.buffer, dir.byteOffset, dir.byteLength) }],
      Object.fromEntries(Object.entries(edit).map(([k, v]) => [k, String(v)])),
    );
    const cfg = readDecoderConfig(readJson<Record<string, unknown>>(join(source.dir, "config.json")));
    const weights = spread[method];
    const vectors = new Map<string, Float32Array>();
    for (let l = 0; l < cfg.numLayers; l++) {
      editedMatrices(cfg, l).forEach((n, k) => vectors.set(n, Float32Array.from(dir, (x) => alpha * weights[2 * l + k] * x)));
    }
    const bar = ctx.progress("write patched shards", 1);
    let last = 0;
    writeEditedCheckpoint(source.dir, join(ctx.tmpDir, "model"), {
      vectors,
      embedding: s.includeEmbeddings ? Float32Array.from(dir, (x) => alpha * x) : undefined,
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
      control,
    };
    writeJson(join(ctx.tmpDir, "calibration.json"), calibration);
    writeFileSync(join(ctx.tmpDir, "calibration.svg"), sweepPlot(sweep, methods, candidate));
    return {
      report: {
        direction: { layer: candidate.layer, position: candidate.position, alpha, rank: s.rank, method },
        details: { random_direction_control: control },
      },
    };
  },
};

function sweepPlot(sweep: SweepPoint[], methods: SpreadMethod[], c: { layer: number; position: number }): string {
  return lineChart({
    title: "α sweep on the validation split (no system prompt)",
    xLabel: "|α|",
    yLabel: "rate / KL",
    series: methods.flatMap((m) => {
      const pts = sweep.filter((p) => (p.method === m && p.layer === c.layer && p.position === c.position) || p.method === "none");
      return [
        { name: `${m}: harmful refusal`, points: pts.map((p) => [Math.abs(p.alpha), p.harmful_refusal] as [number, number]) },
        { name: `${m}: harmless refusal`, points: pts.map((p) => [Math.abs(p.alpha), p.harmless_refusal] as [number, number]) },
        { name: `${m}: KL`, points: pts.map((p) => [Math.abs(p.alpha), p.kl] as [number, number]) },
      ];
    }),
  });
}
