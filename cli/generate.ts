// `realign generate <model-dir> --prompt "…" [--system "…"] [--raw] [--max-new-tokens N] [--device …] [--dtype float32|float16] [--json]`
// Option values arrive as typed (cli.ts scanArgv): `--prompt ""` is the empty prompt (with --raw:
// BOS alone), `--prompt 007` the text "007". Bad options and a model directory whose files cannot
// be loaded (tokenizer, config, weights) are usage errors: one line naming the file, exit 2.
import { existsSync, statSync } from "node:fs";
import { DecoderModel } from "../engine/model.ts";
import { generateGreedy } from "../engine/generate.ts";
import { loadTokenizer, TokenizerError } from "../engine/tokenizer.ts";
import { DEVICES, type Device } from "../engine/session.ts";
import { COMPUTE_DTYPES, MissingWeightError, type ComputeDType } from "../engine/decoder.ts";
import { ModelConfigError } from "../engine/config.ts";
import { CheckpointError } from "../engine/checkpoint.ts";
import { SafetensorsError } from "../engine/safetensors.ts";
import { DTypeError } from "../engine/dtype.ts";
import { UsageError } from "../util/errors.ts";

export interface GenerateCommandOptions {
  prompt?: string;
  system?: string;
  raw?: boolean;
  maxNewTokens?: string;
  device?: string;
  dtype?: string;
  json?: boolean;
}

/** The engine's errors about the files of a model directory (not about the device or a bug). */
const MODEL_FILE_ERRORS = [TokenizerError, ModelConfigError, CheckpointError, SafetensorsError, DTypeError, MissingWeightError];

async function loadingModelFiles<T>(load: () => Promise<T>): Promise<T> {
  try {
    return await load();
  } catch (e) {
    if (MODEL_FILE_ERRORS.some((c) => e instanceof c)) throw new UsageError((e as Error).message);
    throw e;
  }
}

/** Returns the process exit code (0 ok); throws UsageError (exit 2) for bad options or model files. */
export async function generateCommand(modelDir: string, opts: GenerateCommandOptions): Promise<number> {
  if (!modelDir || !existsSync(modelDir)) throw new UsageError(`model directory ${modelDir || "(none)"} does not exist`);
  if (!statSync(modelDir).isDirectory()) throw new UsageError(`${modelDir} is not a model directory (it is a file)`);
  if (typeof opts.prompt !== "string") throw new UsageError('generate needs --prompt "…" (--prompt "" with --raw: from BOS alone)');
  if (opts.system !== undefined && typeof opts.system !== "string") throw new UsageError("--system needs a value");
  if (opts.raw && opts.system !== undefined) throw new UsageError("--system has no effect with --raw (the raw prompt has no chat template); drop one of them");
  if (!opts.raw && opts.prompt === "") throw new UsageError('an empty --prompt needs --raw: the chat template needs an instruction');
  const device = (opts.device ?? "auto") as Device;
  if (!DEVICES.includes(device)) throw new UsageError(`--device must be one of ${DEVICES.join(", ")}, got ${JSON.stringify(opts.device)}`);
  const dtype = (opts.dtype ?? "float32") as ComputeDType;
  if (!COMPUTE_DTYPES.includes(dtype)) throw new UsageError(`--dtype must be one of ${COMPUTE_DTYPES.join(", ")}, got ${JSON.stringify(opts.dtype)}`);
  const maxNewTokens = opts.maxNewTokens === undefined ? 64 : /^\s*\d+\s*$/.test(opts.maxNewTokens) ? Number(opts.maxNewTokens) : NaN;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) throw new UsageError(`--max-new-tokens must be a positive integer, got ${JSON.stringify(opts.maxNewTokens)}`);

  const tokenizer = await loadingModelFiles(() => loadTokenizer(modelDir));
  const prompt = opts.prompt;
  const promptIds = await loadingModelFiles(async () =>
    opts.raw ? tokenizer.encode(prompt) : tokenizer.encodeChat(prompt, { system: opts.system ?? null }).ids,
  );
  if (promptIds.length === 0) throw new UsageError(`the prompt encodes to no tokens (the tokenizer adds no BOS): give a non-empty --prompt`);
  const model = await loadingModelFiles(() => DecoderModel.load(modelDir, { device, dtype, log: (m) => console.error(m) }));
  try {
    if (!opts.json) console.error(`device: ${model.ep}${model.fallbackReason ? ` (GPU not used: ${model.fallbackReason})` : ""}`);
    const eosIds = tokenizer.eosIds.length ? tokenizer.eosIds : model.checkpoint.eosTokenIds();
    const result = await generateGreedy(model, [promptIds], { maxNewTokens, eosIds, padId: tokenizer.padId ?? 0 });
    const newIds = result.newIds[0]!;
    const text = tokenizer.decode(newIds, { skipSpecialTokens: true });
    if (opts.json) console.log(JSON.stringify({ prompt_ids: promptIds, new_ids: newIds, text }));
    else console.log(text);
  } finally {
    await model.close();
  }
  return 0;
}
