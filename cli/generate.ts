// `realign generate <model-dir | run-dir> --prompt "…" [--system "…"] [--raw] [--max-new-tokens N] [--device …] [--dtype float32|float16] [--json]`
//   [--temperature T [--top-p P] [--top-k K] [--seed S] [--samples N | --best-of N --rank srr[:<file>]]] [--stop <text>]
// Greedy unless --temperature > 0; sampling prints the seed it used (stderr, or "seed" in --json) so a
// run can be repeated exactly. --best-of N --rank srr samples N replies and prints the one a Safety
// Representation Ranking scorer (evals/srr.ts; srr.safetensors) ranks first. A run directory stands for its re-aligned model
// (inject/model), and `--rank srr` then finds the scorer the run's srr step trained (srr/scorer/srr.safetensors).
// Option values arrive as typed (cli.ts scanArgv): `--prompt ""` is the empty prompt (with --raw:
// BOS alone), `--prompt 007` the text "007". Bad options and a model directory whose files cannot
// be loaded (tokenizer, config, weights) are usage errors: one line naming the file, exit 2.
import { existsSync, statSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { DecoderModel } from "../engine/model.ts";
import { generate } from "../engine/generate.ts";
import type { SamplingOptions } from "../engine/sampling.ts";
import { loadTokenizer, TokenizerError } from "../engine/tokenizer.ts";
import { DEVICES, type Device } from "../engine/session.ts";
import { COMPUTE_DTYPES, MissingWeightError, type ComputeDType } from "../engine/decoder.ts";
import { ModelConfigError } from "../engine/config.ts";
import { CheckpointError } from "../engine/checkpoint.ts";
import { SafetensorsError } from "../engine/safetensors.ts";
import { DTypeError } from "../engine/dtype.ts";
import { argmaxOf, loadSrr, rankWithSrr, SrrError, type SrrScorer } from "../evals/srr.ts";
import { UsageError } from "../util/errors.ts";

export interface GenerateCommandOptions {
  prompt?: string;
  system?: string;
  raw?: boolean;
  maxNewTokens?: string;
  device?: string;
  dtype?: string;
  json?: boolean;
  temperature?: string;
  topP?: string;
  topK?: string;
  seed?: string;
  samples?: string;
  stop?: string;
  bestOf?: string;
  rank?: string;
}

/**
 * Where `--rank srr` finds the scorer: <model-dir>/srr.safetensors (a published model), else, for a run's
 * re-aligned model (<run>/inject/model), the srr step's <run>/srr/scorer/srr.safetensors.
 */
export function defaultSrrFile(modelDir: string): string {
  const own = join(modelDir, "srr.safetensors");
  const abs = resolve(modelDir);
  if (existsSync(own) || basename(abs) !== "model" || basename(dirname(abs)) !== "inject") return own;
  const run = join(dirname(abs), "..", "srr", "scorer", "srr.safetensors");
  return existsSync(run) ? resolve(run) : own;
}

/** A realign run directory given where a model directory is expected: its re-aligned model (inject/model). */
export function runDirModel(dir: string): string {
  const m = join(dir, "inject", "model");
  return !existsSync(join(dir, "config.json")) && existsSync(join(dir, ".realign-run")) && existsSync(join(m, "config.json")) ? m : dir;
}

/** --best-of N --rank srr[:<file>]: how many candidates and the scorer's file; null when not asked. */
export function parseRankFlags(f: { bestOf?: unknown; rank?: unknown }, modelDir: string, sampling: SamplingOptions | undefined, cwd = process.cwd()): { bestOf: number; file: string } | null {
  const bestOf = flagValue("--best-of", f.bestOf, INTEGER, "an integer ≥ 2", (x) => Number.isSafeInteger(x) && x >= 2);
  if (f.rank === undefined && bestOf === undefined) return null;
  if (bestOf === undefined) throw new UsageError("--rank needs --best-of N (how many candidates to rank)");
  if (f.rank === undefined) throw new UsageError("--best-of needs --rank srr[:<file>] (the scorer that picks one)");
  if (!sampling) throw new UsageError("--best-of applies only when sampling: add --temperature T (T > 0); greedy gives one reply");
  const rank = f.rank;
  if (typeof rank !== "string" || !/^srr(:.+)?$/.test(rank)) throw new UsageError(`--rank must be srr or srr:<file>, got ${JSON.stringify(rank === true ? "(no value)" : rank)}`);
  const file = rank === "srr" ? defaultSrrFile(modelDir) : resolve(cwd, rank.slice(4));
  if (!existsSync(file)) throw new UsageError(rank === "srr" ? `--rank srr looks for ${file}, which does not exist: give --rank srr:<file>, or run realign with --srr (bun bench/srr.ts also trains one)` : `--rank: ${file} does not exist`);
  return { bestOf, file };
}

/** The SRR scorer of a file (UsageError when it is not one). */
export function loadScorer(file: string): SrrScorer {
  try {
    return loadSrr(file);
  } catch (e) {
    if (e instanceof SrrError) throw new UsageError(e.message);
    throw e;
  }
}

/** Refuses (UsageError) a scorer that reads hidden states this model does not have. */
export function checkScorerFits(s: SrrScorer, file: string, model: { dir: string; config: { hiddenSize: number; numLayers: number } }): SrrScorer {
  const { hiddenSize, numLayers } = model.config;
  if (s.hidden !== hiddenSize || s.layer > numLayers) throw new UsageError(`${file} was trained on another model (hidden size ${s.hidden}, layer ${s.layer}; ${model.dir}: hidden size ${hiddenSize}, ${numLayers} layers)`);
  return s;
}

/** --device, --dtype and --max-new-tokens as typed → checked values (UsageError naming the flag). */
export function parseEngineFlags(opts: { device?: unknown; dtype?: unknown; maxNewTokens?: unknown }, defaultMaxNewTokens: number): { device: Device; dtype: ComputeDType; maxNewTokens: number } {
  const device = (opts.device ?? "auto") as Device;
  if (!DEVICES.includes(device)) throw new UsageError(`--device must be one of ${DEVICES.join(", ")}, got ${JSON.stringify(opts.device)}`);
  const dtype = (opts.dtype ?? "float32") as ComputeDType;
  if (!COMPUTE_DTYPES.includes(dtype)) throw new UsageError(`--dtype must be one of ${COMPUTE_DTYPES.join(", ")}, got ${JSON.stringify(opts.dtype)}`);
  const m = opts.maxNewTokens;
  const maxNewTokens = m === undefined ? defaultMaxNewTokens : typeof m === "string" && /^\s*\d+\s*$/.test(m) ? Number(m) : NaN;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) throw new UsageError(`--max-new-tokens must be a positive integer, got ${JSON.stringify(m)}`);
  return { device, dtype, maxNewTokens };
}

/** The sampling flags as typed (strings) → engine options; UsageError for bad values or flags that would do nothing. */
export interface SamplingFlags {
  temperature?: unknown;
  topP?: unknown;
  topK?: unknown;
  seed?: unknown;
  samples?: unknown;
}

const NUMBER = /^\s*[+]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?\s*$/i;
const INTEGER = /^\s*\+?\d+\s*$/;

function flagValue(name: string, v: unknown, pattern: RegExp, what: string, ok: (x: number) => boolean): number | undefined {
  if (v === undefined) return undefined;
  const x = typeof v === "string" && pattern.test(v) ? Number(v) : NaN;
  if (!Number.isFinite(x) || !ok(x)) throw new UsageError(`${name} must be ${what}, got ${JSON.stringify(v === true ? "(no value)" : v)}`);
  return x;
}

export function parseSamplingFlags(f: SamplingFlags): { sampling: SamplingOptions | undefined; samples: number } {
  const temperature = flagValue("--temperature", f.temperature, NUMBER, "a number ≥ 0 (0: greedy)", (x) => x >= 0);
  const topP = flagValue("--top-p", f.topP, NUMBER, "a number in (0, 1]", (x) => x > 0 && x <= 1);
  const topK = flagValue("--top-k", f.topK, INTEGER, "a non-negative integer (0: off)", (x) => Number.isSafeInteger(x));
  const seed = flagValue("--seed", f.seed, INTEGER, "a non-negative integer", (x) => Number.isSafeInteger(x));
  const samples = flagValue("--samples", f.samples, INTEGER, "a positive integer", (x) => Number.isSafeInteger(x) && x >= 1) ?? 1;
  const sampling = temperature !== undefined && temperature > 0;
  if (!sampling) {
    const idle = [topP !== undefined && "--top-p", topK !== undefined && "--top-k", seed !== undefined && "--seed", samples > 1 && "--samples"].filter(Boolean);
    if (idle.length) throw new UsageError(`${idle.join(", ")} ${idle.length === 1 ? "applies" : "apply"} only when sampling: add --temperature T (T > 0); without it decoding is greedy`);
    return { sampling: undefined, samples };
  }
  return { sampling: { temperature, topP, topK, seed }, samples };
}

/** The engine's errors about the files of a model directory (not about the device or a bug). */
const MODEL_FILE_ERRORS = [TokenizerError, ModelConfigError, CheckpointError, SafetensorsError, DTypeError, MissingWeightError];

export async function loadingModelFiles<T>(load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (e) {
    if (MODEL_FILE_ERRORS.some((c) => e instanceof c)) throw new UsageError((e as Error).message);
    throw e;
  }
}

/** Returns the process exit code (0 ok); throws UsageError (exit 2) for bad options or model files. */
export async function generateCommand(given: string, opts: GenerateCommandOptions): Promise<number> {
  if (!given || !existsSync(given)) throw new UsageError(`model directory ${given || "(none)"} does not exist`);
  if (!statSync(given).isDirectory()) throw new UsageError(`${given} is not a model directory (it is a file)`);
  const modelDir = runDirModel(given);
  if (typeof opts.prompt !== "string") throw new UsageError('generate needs --prompt "…" (--prompt "" with --raw: from BOS alone)');
  if (opts.system !== undefined && typeof opts.system !== "string") throw new UsageError("--system needs a value");
  if (opts.raw && opts.system !== undefined) throw new UsageError("--system has no effect with --raw (the raw prompt has no chat template); drop one of them");
  if (!opts.raw && opts.prompt === "") throw new UsageError('an empty --prompt needs --raw: the chat template needs an instruction');
  const { device, dtype, maxNewTokens } = parseEngineFlags(opts, 64);
  const { sampling, samples: asked } = parseSamplingFlags(opts);
  const ranking = parseRankFlags(opts, modelDir, sampling);
  if (ranking && asked > 1) throw new UsageError("give one of --samples (print every sample) and --best-of (print the top-ranked)");
  const samples = ranking ? ranking.bestOf : asked;
  if (opts.stop !== undefined && (typeof opts.stop !== "string" || opts.stop === "")) throw new UsageError("--stop needs a non-empty text");
  const stopStrings = opts.stop === undefined ? [] : [opts.stop];

  const tokenizer = await loadingModelFiles(() => loadTokenizer(modelDir));
  const prompt = opts.prompt;
  const promptIds = await loadingModelFiles(async () =>
    opts.raw ? tokenizer.encode(prompt) : tokenizer.encodeChat(prompt, { system: opts.system ?? null }).ids,
  );
  if (promptIds.length === 0) throw new UsageError(`the prompt encodes to no tokens (the tokenizer adds no BOS): give a non-empty --prompt`);
  const loadedScorer = ranking ? loadScorer(ranking.file) : null;
  const model = await loadingModelFiles(() => DecoderModel.load(modelDir, { device, dtype, log: (m) => console.error(m) }));
  try {
    if (!opts.json) console.error(`device: ${model.ep}${model.fallbackReason ? ` (GPU not used: ${model.fallbackReason})` : ""}`);
    const scorer = loadedScorer ? checkScorerFits(loadedScorer, ranking!.file, model) : null;
    const eosIds = tokenizer.eosIds.length ? tokenizer.eosIds : model.checkpoint.eosTokenIds();
    const decode = (ids: number[]) => tokenizer.decode(ids, { skipSpecialTokens: true });
    const result = await generate(model, [promptIds], { maxNewTokens, eosIds, padId: tokenizer.padId ?? 0, sampling, numSamples: samples, stopStrings, decode });
    const outputs = result.newIds.map((newIds, i) => {
      const full = decode(newIds);
      const cut = result.stopIndex?.[i];
      return { new_ids: newIds, text: cut === null || cut === undefined ? full : full.slice(0, cut), finish_reason: result.finishReasons?.[i] ?? "length" };
    });
    const scores = scorer ? await rankWithSrr(model, scorer, promptIds, result.newIds) : null;
    const chosen = scores ? argmaxOf(scores) : 0;
    const first = outputs[chosen]!;
    if (opts.json) {
      const json: Record<string, unknown> = { prompt_ids: promptIds, new_ids: first.new_ids, text: first.text };
      if (result.seed !== undefined) json.seed = result.seed;
      if (samples > 1) json.samples = outputs;
      if (scores) json.rank = { method: "srr", file: ranking!.file, layer: scorer!.layer, scores, chosen };
      console.log(JSON.stringify(json));
    } else {
      if (result.seed !== undefined) console.error(`seed: ${result.seed}`);
      if (scores) console.error(`srr: sample ${chosen + 1} of ${samples} ranked first (scores ${scores.map((x) => x.toFixed(2)).join(", ")})`);
      if (samples === 1 || scores) console.log(first.text);
      else outputs.forEach((o, i) => console.log(`--- sample ${i + 1}/${samples} ---\n${o.text}`));
    }
  } finally {
    await model.close();
  }
  return 0;
}
