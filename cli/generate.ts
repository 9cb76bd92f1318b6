// `realign generate <model-dir> --prompt "…" [--system "…"] [--raw] [--max-new-tokens N] [--device …] [--dtype float32|float16] [--json]`
import { existsSync } from "node:fs";
import { DecoderModel } from "../engine/model.ts";
import { generateGreedy } from "../engine/generate.ts";
import { loadTokenizer } from "../engine/tokenizer.ts";
import { DEVICES, type Device } from "../engine/session.ts";
import { COMPUTE_DTYPES, type ComputeDType } from "../engine/decoder.ts";

export interface GenerateCommandOptions {
  prompt?: string;
  system?: string;
  raw?: boolean;
  maxNewTokens?: number | string;
  device?: string;
  dtype?: string;
  json?: boolean;
}

/** Returns the process exit code (0 ok, 2 usage error). */
export async function generateCommand(modelDir: string, opts: GenerateCommandOptions): Promise<number> {
  if (!modelDir || !existsSync(modelDir)) {
    console.error(`error: model directory ${modelDir ?? "(none)"} does not exist`);
    return 2;
  }
  if (opts.prompt === undefined) {
    console.error('error: --prompt "…" is required');
    return 2;
  }
  const device = (opts.device ?? "auto") as Device;
  if (!DEVICES.includes(device)) {
    console.error(`error: --device must be one of ${DEVICES.join(", ")}`);
    return 2;
  }
  const dtype = (opts.dtype ?? "float32") as ComputeDType;
  if (!COMPUTE_DTYPES.includes(dtype)) {
    console.error(`error: --dtype must be one of ${COMPUTE_DTYPES.join(", ")}`);
    return 2;
  }
  const maxNewTokens = Number(opts.maxNewTokens ?? 64);
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 1) {
    console.error("error: --max-new-tokens must be a positive integer");
    return 2;
  }
  const tokenizer = await loadTokenizer(modelDir);
  const promptIds = opts.raw
    ? tokenizer.encode(String(opts.prompt))
    : tokenizer.encodeChat(String(opts.prompt), { system: opts.system ?? null }).ids;
  const model = await DecoderModel.load(modelDir, { device, dtype, log: (m) => console.error(m) });
  if (!opts.json) console.error(`device: ${model.ep}${model.fallbackReason ? ` (GPU not used: ${model.fallbackReason})` : ""}`);
  const eosIds = tokenizer.eosIds.length ? tokenizer.eosIds : model.checkpoint.eosTokenIds();
  const result = await generateGreedy(model, [promptIds], { maxNewTokens, eosIds, padId: tokenizer.padId ?? 0 });
  const newIds = result.newIds[0];
  const text = tokenizer.decode(newIds, { skipSpecialTokens: true });
  if (opts.json) console.log(JSON.stringify({ prompt_ids: promptIds, new_ids: newIds, text }));
  else console.log(text);
  await model.close();
  return 0;
}
