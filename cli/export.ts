// `realign export <model-dir> --gguf [--type f32|f16|bf16|q8_0] [--out file.gguf] [--pre name | --pre-from base.gguf] [--json]`
// Writes the GGUF of a Hugging Face model directory (a re-aligned model: runs/<model>/inject/model or the
// published folder) for llama.cpp, Ollama and LM Studio. An existing --out is never replaced. Bad options and
// model files that cannot be exported (architecture, tokenizer, weights) are usage errors: one line, exit 2.
import { existsSync, statSync } from "node:fs";
import { GGUF_TYPES, GgufExportError, defaultGgufName, writeGguf, type GgufType } from "../engine/gguf.ts";
import { GgufVocabError } from "../engine/gguf-vocab.ts";
import { GgufFormatError } from "../engine/gguf-format.ts";
import { TokenizerError } from "../engine/tokenizer.ts";
import { ModelConfigError } from "../engine/config.ts";
import { CheckpointError } from "../engine/checkpoint.ts";
import { SafetensorsError } from "../engine/safetensors.ts";
import { DTypeError, NonFiniteError } from "../engine/dtype.ts";
import { MissingWeightError } from "../engine/decoder.ts";
import { UsageError } from "../util/errors.ts";

export interface ExportCommandOptions {
  gguf?: boolean;
  type?: string;
  out?: string;
  pre?: string;
  preFrom?: string;
  json?: boolean;
}

/** Errors about the model directory's files or the export's own rules (not I/O or a bug). */
const MODEL_FILE_ERRORS = [GgufExportError, GgufVocabError, GgufFormatError, TokenizerError, ModelConfigError, CheckpointError, SafetensorsError, DTypeError, MissingWeightError, NonFiniteError];

const size = (n: number) => (n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);

/** Returns the exit code (0 ok); throws UsageError (exit 2) for bad options or model files. */
export async function exportCommand(modelDir: string, opts: ExportCommandOptions): Promise<number> {
  if (opts.gguf !== true) throw new UsageError("export needs --gguf (the only format realign exports): realign export <model-dir> --gguf [--type f16]");
  if (!modelDir || !existsSync(modelDir)) throw new UsageError(`model directory ${modelDir || "(none)"} does not exist`);
  if (!statSync(modelDir).isDirectory()) throw new UsageError(`${modelDir} is not a model directory (it is a file)`);
  const type = (opts.type ?? "f16") as GgufType;
  if (!GGUF_TYPES.includes(type)) {
    const kq = /^q[2-6]_k/i.test(String(opts.type)) ? "; k-quants: export f16, then llama.cpp's llama-quantize <file-F16.gguf> <out.gguf> Q4_K_M" : "";
    throw new UsageError(`--type must be one of ${GGUF_TYPES.join(", ")}, got ${JSON.stringify(opts.type)}${kq}`);
  }
  if (opts.out !== undefined && (typeof opts.out !== "string" || opts.out === "")) throw new UsageError("--out needs a file name");
  if (opts.pre !== undefined && (typeof opts.pre !== "string" || !/^[A-Za-z0-9._-]+$/.test(opts.pre))) throw new UsageError(`--pre needs a llama.cpp pre-tokenizer name such as llama-bpe, qwen2 or gpt-2`);
  if (opts.preFrom !== undefined && (typeof opts.preFrom !== "string" || !existsSync(opts.preFrom))) throw new UsageError(`--pre-from needs an existing GGUF file, got ${JSON.stringify(opts.preFrom)}`);
  if (opts.pre !== undefined && opts.preFrom !== undefined) throw new UsageError("give either --pre or --pre-from, not both");
  const out = opts.out ?? defaultGgufName(modelDir, type);
  if (existsSync(out)) throw new UsageError(`${out} already exists; realign never replaces a file: choose another --out or remove it`);

  const tty = Boolean(process.stderr.isTTY) && !opts.json;
  let lastPct = -1;
  let result;
  try {
    result = await writeGguf({
      modelDir,
      out,
      type,
      pre: opts.pre ?? null,
      preFrom: opts.preFrom ?? null,
      onProgress: (done, total) => {
        const pct = Math.floor((100 * done) / total);
        if (tty && pct !== lastPct) process.stderr.write(`\rwriting ${out}: ${pct}%`);
        lastPct = pct;
      },
    });
  } catch (e) {
    if (tty && lastPct >= 0) process.stderr.write("\n");
    if (MODEL_FILE_ERRORS.some((c) => e instanceof c)) throw new UsageError((e as Error).message);
    throw e;
  }
  if (tty) process.stderr.write("\n");
  for (const w of result.warnings) console.error(`warning: ${w}`);
  if (opts.json) {
    console.log(JSON.stringify(result));
    return 0;
  }
  console.log(`wrote ${result.path} (${size(result.bytes)}, ${result.type}, ${result.architecture}, ${result.tensors} tensors)`);
  console.log(`tokenizer: ${result.tokenizer.model}, pre-tokenizer "${result.tokenizer.pre.name}" (${result.tokenizer.pre.source})`);
  const edit = Object.entries(result.realign);
  console.log(edit.length ? `ROSI edit recorded: ${edit.map(([k, v]) => `${k}=${v}`).join(", ")}` : "no realign_* metadata in the weights (not a re-aligned checkpoint)");
  console.log(`sha256: ${result.sha256}`);
  console.log(`run it: llama-cli -m ${out} -cnv    (Ollama: a Modelfile with "FROM ./${out.split("/").pop()}")`);
  return 0;
}
