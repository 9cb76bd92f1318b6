// The artefacts the steps hand on: this project's dvc.yaml. Each step's `outputs` is its row of
// ARTEFACTS; a step reads an upstream artefact only through `artefact()` / the typed readers below,
// which check that the name is among the producer's outputs (at compile time and at run time) and
// that a JSON file has the fields its consumers rely on.
//
//   pull      source.json
//   elicit    prompts.json, elicitation.json
//   extract   direction.safetensors (all candidates + the top one), selection.json, spread.json, selection.svg
//   inject    model/ (the patched checkpoint), edit.safetensors (the direction that was injected, and
//             its key), calibration.json, calibration.svg (and gate.svg for a gated edit)
//   validate  validation.json, samples.json
//   srr       srr.json, scorer/ (srr.safetensors when the srr setting is on; empty otherwise)
//   export    export.json, gguf/ (the GGUF of the re-aligned model when the gguf setting is not none; empty otherwise)
//   publish   published.json, README.md
//
// JSON artefacts are snake_case (file schemas); the interfaces here are those schemas.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { StepContext } from "../pipeline/runner.ts";
import type { TradeoffChoice } from "./tradeoff.ts";
import { SafetensorsFile } from "../engine/safetensors.ts";

export const ARTEFACTS = {
  pull: ["source.json"],
  elicit: ["prompts.json", "elicitation.json"],
  extract: ["direction.safetensors", "selection.json", "selection.svg", "spread.json"],
  inject: ["model", "edit.safetensors", "calibration.json", "calibration.svg"],
  validate: ["validation.json", "samples.json"],
  // The runner's outputs are fixed per step, so an optional file lives in a folder that is empty when
  // the setting is off (the step still runs, in milliseconds, and its JSON says it was off).
  srr: ["srr.json", "scorer"],
  export: ["export.json", "gguf"],
  publish: ["published.json", "README.md"],
} as const satisfies Record<string, readonly string[]>;

export type StepName = keyof typeof ARTEFACTS;
export type ArtefactName<S extends StepName> = (typeof ARTEFACTS)[S][number];

/** A step's declared outputs, from the table. */
export const outputsOf = (step: StepName): string[] => [...ARTEFACTS[step]];

export class ArtefactError extends Error {
  override name = "ArtefactError";
}

/** Path of an upstream step's artefact; the step must list `step` in its deps. */
export function artefact<S extends StepName>(ctx: StepContext<unknown>, step: S, name: ArtefactName<S>): string {
  if (!(ARTEFACTS[step] as readonly string[]).includes(name)) throw new ArtefactError(`${step} does not produce ${name} (its outputs: ${ARTEFACTS[step].join(", ")})`);
  return join(ctx.upstream(step), name);
}

export function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2) + "\n");
}

type FieldKind = "string" | "number" | "boolean" | "object" | "array" | "string|null" | "number|null" | "object|null";

/** Parse a JSON artefact and check the fields its readers rely on; errors name the file and the field. */
function readChecked<T>(path: string, fields: Record<string, FieldKind>): T {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new ArtefactError(`${path}: unreadable (${e instanceof Error ? e.message : String(e)}); re-run the step that writes it (--force)`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new ArtefactError(`${path}: expected a JSON object`);
  const obj = value as Record<string, unknown>;
  for (const [key, kind] of Object.entries(fields)) {
    const v = obj[key];
    const actual = v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
    if (!kind.split("|").includes(actual)) throw new ArtefactError(`${path}: field "${key}" should be ${kind.replace("|", " or ")}, found ${actual}; re-run the step that writes it (--force)`);
  }
  return obj as T;
}

// ---- pull ------------------------------------------------------------------------------------------

/** What the pull step resolved: the local directory holding the checkpoint. */
export interface SourceInfo {
  dir: string;
  repo: string | null;
  commit: string | null;
  fingerprint: string;
  license: string | null;
}

export const readSource = (ctx: StepContext<unknown>): SourceInfo =>
  readChecked<SourceInfo>(artefact(ctx, "pull", "source.json"), { dir: "string", repo: "string|null", commit: "string|null", fingerprint: "string" });

// ---- elicit ----------------------------------------------------------------------------------------

export interface PromptSplits {
  harmful: { train: string[]; val: string[]; eval: string[] };
  harmless: { train: string[]; val: string[]; eval: string[] };
  /** Harmless prompts in no split (≤ KL_EXTRA_PROMPTS): calibration adds them to its first-token KL. */
  klExtra: string[];
  /**
   * Prompts in no split that only the gated edit's key fit adds to the train prompts: the built-in sets
   * (or, when the run already uses them, what its splits left), so that the gate learns harm across
   * phrasings and sources rather than the style of one dataset. Never in val, eval or klExtra.
   */
  gateExtra: { harmful: string[]; harmless: string[] };
  sources: { name: string; source: string; size: number; license?: string }[];
  systemPrompt: string | null;
  systemPromptSource: string | null;
  systemMerged: boolean;
  /**
   * Under the chosen safety prompt: the harmful train prompts it refused and the harmless train prompts
   * it answered (extract's contrastive pairs); null without a system prompt. `replies` holds the greedy
   * reply to each of them under that prompt, index for index (the gated fit's quiet reply rows); empty
   * lists when written before elicit version 5.
   */
  contrast: { harmful: string[]; harmless: string[]; replies: { harmful: string[]; harmless: string[] } } | null;
}

export function readSplits(ctx: StepContext<unknown>): PromptSplits {
  const path = artefact(ctx, "elicit", "prompts.json");
  const s = readChecked<PromptSplits>(path, { harmful: "object", harmless: "object", sources: "array", systemPrompt: "string|null", systemMerged: "boolean" });
  for (const side of ["harmful", "harmless"] as const) {
    for (const split of ["train", "val", "eval"] as const) {
      if (!Array.isArray(s[side][split])) throw new ArtefactError(`${path}: ${side}.${split} should be a list of prompts`);
    }
  }
  if (s.klExtra === undefined) s.klExtra = []; // written before elicit version 3
  if (!Array.isArray(s.klExtra)) throw new ArtefactError(`${path}: klExtra should be a list of prompts`);
  if (s.gateExtra === undefined) s.gateExtra = { harmful: [], harmless: [] }; // written before elicit version 4
  if (!Array.isArray(s.gateExtra?.harmful) || !Array.isArray(s.gateExtra?.harmless)) throw new ArtefactError(`${path}: gateExtra should be {harmful, harmless} lists of prompts`);
  const c = s.contrast as unknown;
  const isList = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === "string");
  if (c !== null && (typeof c !== "object" || !isList((c as Record<string, unknown>).harmful) || !isList((c as Record<string, unknown>).harmless))) {
    throw new ArtefactError(`${path}: field "contrast" should be null or {harmful, harmless} lists of prompts; re-run the step that writes it (--force)`);
  }
  if (s.contrast) {
    const r = (s.contrast as { replies?: unknown }).replies as Record<string, unknown> | undefined;
    if (r === undefined) s.contrast.replies = { harmful: [], harmless: [] }; // written before elicit version 5
    else if (!isList(r.harmful) || !isList(r.harmless) || (r.harmful as string[]).length !== s.contrast.harmful.length || (r.harmless as string[]).length !== s.contrast.harmless.length) {
      throw new ArtefactError(`${path}: field "contrast.replies" should hold one reply per contrast prompt; re-run the step that writes it (--force)`);
    }
  }
  return s;
}

// ---- extract ---------------------------------------------------------------------------------------

/** What the selection measured for one candidate and spread method at its KL probe. */
export interface ProbeScores {
  alpha: number;
  kl: number;
  harmful_score: number;
  harmless_score: number;
  harmful_rate: number;
  harmless_rate: number;
}

/** One candidate direction r[layer][position]: discarded (with the reason) or scored. */
export type CandidateScore =
  | {
      status: "discarded";
      layer: number;
      position: number;
      norm: number;
      reason: string;
    }
  | {
      status: "scored";
      layer: number;
      position: number;
      norm: number;
      /** Mean refusal score on harmless val prompts with r added to the residual entering the layer. */
      induce: number;
      steer_kl: number;
      /** The best spread method's probe (also in `probes`). */
      best: ProbeScores & { method: string };
      probes: Record<string, ProbeScores>;
    };

export interface ShortlistEntry {
  layer: number;
  position: number;
  position_label: string;
  probes: Record<string, ProbeScores>;
}

export interface Selection {
  layer: number;
  position: number;
  position_label: string;
  alpha_probe: number;
  method: string;
  probes: Record<string, ProbeScores>;
  baseline: { harmful_score: number; harmless_score: number };
  kl_probe: number;
  refusal_token_ids: number[];
  candidates: CandidateScore[];
  /** The best few candidates, best first: inject calibrates each and keeps the best admissible one. */
  shortlist: ShortlistEntry[];
  /** sha256 of the top candidate's unit direction (`direction` in direction.safetensors). */
  direction_sha256: string;
}

export const readSelection = (ctx: StepContext<unknown>): Selection =>
  readChecked<Selection>(artefact(ctx, "extract", "selection.json"), { layer: "number", position: "number", method: "string", alpha_probe: "number", shortlist: "array", candidates: "array" });

export interface SpreadFile {
  stats: { mean: number[]; cov: number[]; tokens: number };
  /** Per spread method: the weight of each residual writer (engine row order) and the injected amount per unit α. */
  methods: Record<string, { weights: number[]; injected_per_unit_alpha: { mean: number; std: number } }>;
}

export const readSpread = (ctx: StepContext<unknown>): SpreadFile => readChecked<SpreadFile>(artefact(ctx, "extract", "spread.json"), { stats: "object", methods: "object" });

/** The candidates tensor [layers, positions, hidden] and the top (possibly rank-k combined) direction. */
export interface Directions {
  top: Float32Array;
  candidates: Float32Array;
  layers: number;
  positions: number;
  hidden: number;
  /** Unit direction of candidate (layer, position). */
  unitOf(layer: number, position: number): Float32Array;
}

export function readDirections(ctx: StepContext<unknown>, unit: (v: ArrayLike<number>) => Float32Array): Directions {
  const path = artefact(ctx, "extract", "direction.safetensors");
  const f = SafetensorsFile.open(path);
  try {
    const shape = f.info("candidates").shape;
    if (shape.length !== 3) throw new ArtefactError(`${path}: candidates should be [layers, positions, hidden], found [${shape.join(", ")}]`);
    const [layers, positions, hidden] = shape;
    const top = f.readF32("direction");
    const candidates = f.readF32("candidates");
    if (top.length !== hidden) throw new ArtefactError(`${path}: direction has ${top.length} entries, candidates have hidden ${hidden}`);
    return {
      top,
      candidates,
      layers,
      positions,
      hidden,
      unitOf: (l, p) => unit(candidates.subarray((l * positions + p) * hidden, (l * positions + p + 1) * hidden)),
    };
  } finally {
    f.close();
  }
}

// ---- inject ----------------------------------------------------------------------------------------

interface SweepPointBase {
  layer: number | null;
  position: number | null;
  method: string;
  /** Gated families: the prompt positions the keys were fitted at (one family per count). */
  gate_positions?: number;
  alpha: number;
  kl: number;
  ok: boolean;
}

/** What a point measured in full reads on the validation split (rosi/calibrate.ts FullPoint). */
export interface RatedPoint {
  harmful_refusal: number;
  harmless_refusal: number;
  kl: number;
  utility: number | null;
}

/** A measured calibration point: in full, or its KL alone when that is past the bound (rosi/calibrate.ts). */
export type SweepPoint = SweepPointBase & (RatedPoint | { skipped: "past the KL bound" });

/** The edit that was injected: one record that calibration.json, the weights' metadata, report and card all name. */
export interface InjectedEdit {
  layer: number;
  position: number;
  position_label: string;
  method: string;
  alpha: number;
  direction_sha256: string;
}

/** Mean ± standard deviation of a gate g(x) = Σₘ kₘ·xₘ over n prompt positions. */
export interface GateStatsRecord {
  mean: number;
  std: number;
  max: number;
  n: number;
}

/** The gated family's keys as fitted (rosi/gated.ts) and what the gate reads on train and unseen prompts. */
export interface GatedRecord {
  layers: number[];
  positions: number;
  ridge: number;
  harmless_weight: number;
  normalisation: number;
  train: { harmful: GateStatsRecord; harmless: GateStatsRecord };
  validation: { harmful: GateStatsRecord; harmless: GateStatsRecord };
  /** Fit settings tried on held-out train prompts, best first (rosi/gated.ts GateChoice). */
  choices: { ridge: number; positions: number; harmless_rows: "last" | "spread"; harmful_mean: number; harmless_mean_square: number; score: number }[];
}

export interface Calibration extends InjectedEdit {
  weights: number[];
  given: boolean;
  bounds: { over_refusal: number; kl: number; utility_drop: number };
  sweep: SweepPoint[];
  /** A seeded random unit direction, same spread, scaled to the chosen point's KL (null: α given, or no KL to match). */
  control: ({ seed: number; alpha: number; harmful_gain_over_control: number } & RatedPoint) | null;
  /** The gated family's keys (null for rosi / rosi-mv); the keys themselves are in edit.safetensors. */
  gated: GatedRecord | null;
  /** Every direction the gated screen measured, best first (empty when gated was not calibrated; absent in older runs). */
  gated_screen?: GateScreenRecord[];
  /** The admissible points offered and the one taken (steps/tradeoff.ts); null: α given, or nothing admissible. */
  choice?: TradeoffChoice | null;
}

/** One direction as inject's gated screen measured it (steps/inject.ts screenGated). */
export interface GateScreenRecord {
  layer: number;
  position: number;
  position_label: string;
  /** The scale at which the gated edit along it moves the harmless validation prompts' first tokens by the screen's KL, and that KL. */
  alpha: number;
  kl: number;
  /** Mean refusal score (log-odds of a refusal first token) on the harmful and harmless validation prompts there. */
  harmful_score: number;
  harmless_score: number;
}

/** A screened direction with its shortlist entry (what the gated families are built on). */
export interface GateScreenEntry extends Omit<GateScreenRecord, "layer" | "position" | "position_label"> {
  entry: ShortlistEntry;
}

export const readCalibration = (ctx: StepContext<unknown>): Calibration =>
  readChecked<Calibration>(artefact(ctx, "inject", "calibration.json"), { layer: "number", position: "number", method: "string", alpha: "number", direction_sha256: "string", sweep: "array" });

/** The patched checkpoint's directory. */
export const patchedModelDir = (ctx: StepContext<unknown>): string => artefact(ctx, "inject", "model");

/** The injected direction file (`direction`, and `key.<tensor>` for a gated edit, plus the InjectedEdit as metadata), as published. */
export const injectedEditPath = (ctx: StepContext<unknown>): string => artefact(ctx, "inject", "edit.safetensors");

// ---- srr -------------------------------------------------------------------------------------------

/** The scorer file inside the srr step's scorer/ folder (present only when the srr setting was on). */
export const SRR_FILE = "srr.safetensors";

/** The trained scorer of a finished srr step, or null when the step ran with srr off. */
export function srrScorerPath(ctx: StepContext<unknown>): string | null {
  const p = join(artefact(ctx, "srr", "scorer"), SRR_FILE);
  return existsSync(p) ? p : null;
}

// ---- export ----------------------------------------------------------------------------------------

/** What the export step wrote: the GGUF file in gguf/ and what a model card says about it. */
export interface GgufRecord {
  /** File name inside gguf/ (and in the published repo). */
  file: string;
  type: string;
  bytes: number;
  sha256: string;
  architecture: string;
  tensors: number;
  tokenizer_model: string;
  pre_tokenizer: string;
  pre_tokenizer_source: string;
  /** The realign.* GGUF metadata (the ROSI edit: method, alpha, layer, position, direction_sha256). */
  realign: Record<string, string>;
  warnings: string[];
  /** Matrices written as F16 in a q8_0 export (rows not a multiple of 32). */
  fallbacks: string[];
  /** An Ollama TEMPLATE that renders exactly what the model's chat template renders (checked on probe conversations), or why there is none. */
  ollama: { kind: "template"; template: string; stop: string[] } | { kind: "none"; reason: string };
}

/** export.json: the gguf setting was none (nothing written), or the record of the file. */
export type ExportRecord = { gguf: null } | { gguf: GgufRecord };

export function readExport(ctx: StepContext<unknown>): ExportRecord {
  const path = artefact(ctx, "export", "export.json");
  const r = readChecked<{ gguf: unknown }>(path, { gguf: "object|null" });
  if (r.gguf === null) return { gguf: null };
  const g = r.gguf as Record<string, unknown>;
  if (typeof g.file !== "string" || typeof g.type !== "string" || typeof g.bytes !== "number") throw new ArtefactError(`${path}: gguf should name its file, type and bytes; re-run the export step (--from export)`);
  return { gguf: g as unknown as GgufRecord };
}

/** The GGUF file of a finished export step, or null when the gguf setting was none. */
export function ggufPath(ctx: StepContext<unknown>): { path: string; record: GgufRecord } | null {
  const r = readExport(ctx);
  return r.gguf ? { path: join(artefact(ctx, "export", "gguf"), r.gguf.file), record: r.gguf } : null;
}
