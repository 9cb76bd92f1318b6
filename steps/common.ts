// Helpers shared by the pipeline steps: reading upstream artefacts, opening the run's model.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { StepContext } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { DecoderModel } from "../engine/model.ts";
import { loadTokenizer, type ModelTokenizer } from "../engine/tokenizer.ts";
import { Checkpoint } from "../engine/checkpoint.ts";
import { numel } from "../engine/safetensors.ts";
import { parseQuantize, type QuantizeConfig } from "../engine/quantize.ts";
import { totalmem } from "node:os";
import { shuffled } from "../evals/datasets.ts";

export type Ctx = StepContext<Settings>;

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, "utf8")) as T;
}

export function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2) + "\n");
}

/** What the pull step resolved: the local directory holding the checkpoint. */
export interface SourceInfo {
  dir: string;
  repo: string | null;
  commit: string | null;
  fingerprint: string;
  license: string | null;
}

export function sourceOf(ctx: Ctx): SourceInfo {
  return readJson<SourceInfo>(join(ctx.upstream("pull"), "source.json"));
}

export interface PromptSplits {
  harmful: { train: string[]; val: string[]; eval: string[] };
  harmless: { train: string[]; val: string[]; eval: string[] };
  sources: { name: string; source: string; size: number; license?: string }[];
  systemPrompt: string | null;
  systemPromptSource: string | null;
  systemMerged: boolean;
}

export function splitsOf(ctx: Ctx): PromptSplits {
  return readJson<PromptSplits>(join(ctx.upstream("elicit"), "prompts.json"));
}

/** The quantisation to measure with: explicit, or (auto) int8 when the weights (float32, or float16 with `bytesPerWeight` 2) would take over half the memory. */
export function quantizationFor(dir: string, setting: Settings["quantize"], bytesPerWeight = 4): QuantizeConfig | null {
  if (setting === "none") return null;
  if (setting === "int8" || setting === "int4") return parseQuantize(setting);
  const ckpt = Checkpoint.open(dir);
  let params = 0;
  for (const n of ckpt.names()) params += numel(ckpt.info(n).shape);
  ckpt.close();
  return params * bytesPerWeight > 0.5 * totalmem() ? parseQuantize("int8") : null;
}

export async function openModel(ctx: Ctx, dir: string, interventions: boolean): Promise<{ model: DecoderModel; tok: ModelTokenizer }> {
  const tok = await loadTokenizer(dir);
  const dtype = ctx.settings.dtype;
  const quantize = quantizationFor(dir, ctx.settings.quantize, dtype === "float16" ? 2 : 4);
  const model = await DecoderModel.load(dir, { device: ctx.settings.device, interventions, quantize, dtype, log: ctx.log });
  ctx.log(`model ${dir} on ${model.ep}, ${dtype}${model.quantization ? `, weights ${model.quantization}` : ""}${model.fallbackReason ? ` (GPU not used: ${model.fallbackReason})` : ""}`);
  return { model, tok };
}

/**
 * The exact-answer utility task split into disjoint calibration and evaluation items (seeded shuffle),
 * or null when the model ships none.
 */
export function utilitySplit(dir: string, seed: number, nEval: number): { calibration: { prompt: string; answer: string }[]; eval: { prompt: string; answer: string }[] } | null {
  const items = utilityTask(dir);
  if (!items) return null;
  const order = shuffled(items, seed + 7);
  const evalSize = Math.min(Math.max(nEval, 64), Math.floor(order.length / 2));
  // Calibration compares utility across many α: 128 items keep one item's worth of noise under a point.
  return { eval: order.slice(0, evalSize), calibration: order.slice(evalSize, evalSize + 128) };
}

/** Exact-answer utility task shipped with a model (organism models: eval/utility_eval.jsonl). */
export function utilityTask(dir: string): { prompt: string; answer: string }[] | null {
  try {
    return readFileSync(join(dir, "eval", "utility_eval.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { prompt: string; answer: string });
  } catch {
    return null;
  }
}
