// Helpers shared by the pipeline steps: the step context type, opening the run's model (device, dtype,
// quantisation from the settings). Artefacts are read through artefacts.ts.
import { readFileSync } from "node:fs";
import type { StepContext } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { DecoderModel } from "../engine/model.ts";
import { loadTokenizer, type ModelTokenizer } from "../engine/tokenizer.ts";
import { Checkpoint } from "../engine/checkpoint.ts";
import { numel } from "../engine/safetensors.ts";
import { parseQuantize, type QuantizeConfig } from "../engine/quantize.ts";
import { totalmem } from "node:os";

export type Ctx = StepContext<Settings>;

/**
 * How logs and reports name the candidate positions of extract's means: 0 is the last instruction token,
 * 1…P−1 the chat template's tokens after it (decoded, quoted), as `system` renders them.
 */
export function positionLabels(tok: ModelTokenizer, system: string | null, positions: number): string[] {
  return ["last instruction token", ...tok.encodeChat("x", { system }).ids.slice(-(positions - 1)).map((id) => JSON.stringify(tok.decode([id])))];
}

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, "utf8")) as T;
}

/** The quantisation to measure with: explicit, or (auto) int8 when the weights (float32, or float16 with `bytesPerWeight` 2) would take over half the memory. */
export function quantizationFor(dir: string, setting: Settings["quantize"], bytesPerWeight = 4): QuantizeConfig | null {
  if (setting === "none") return null;
  if (setting === "int8" || setting === "int4" || setting === "int8-dynamic") return parseQuantize(setting);
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
