// A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json …) as llama.cpp's GGUF tokenizer metadata.
//   - Byte-level BPE (a ByteLevel pre-tokenizer: GPT-2, Llama 3, Qwen2, ChatML organisms) → tokenizer.ggml.model
//     "gpt2": tokens exactly as in the vocabulary, merges as "left right" (llama.cpp's BPE applies them by rank,
//     like HF), and tokenizer.ggml.pre, which names the pre-tokenizer regex llama.cpp applies.
//   - BPE with byte fallback and "▁" for spaces (sentencepiece-style: Llama 2, Mistral, Gemma, TinyLlama
//     stories), or a Unigram model → "llama": llama.cpp's SPM tokenizer merges the adjacent pair whose
//     concatenation is the best-scoring token. For BPE the score of a token is −(rank of the first merge that
//     makes it), so the best pair is the lowest-ranked merge, which is what HF's BPE applies. (convert_hf_to_gguf's
//     LlamaHfVocab writes −1000 for every token, which turns the merge order into left-to-right.) Unigram
//     models keep their own scores.
// Special tokens: bos/eos/unk/pad ids and add_bos/add_eos come from realign's tokenizer (loadTokenizer: the
// same HF rules the engine encodes prompts with), the chat template from tokenizer_config / chat_template.jinja.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ModelTokenizer } from "./tokenizer.ts";
import { gv, type GgufValue } from "./gguf-format.ts";

export class GgufVocabError extends Error {
  override name = "GgufVocabError";
}

/** llama.cpp's token types (llama_token_type; gguf-py TokenType). */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

type Json = Record<string, unknown>;

/**
 * Pre-tokenizer regexes of tokenizer.json (a `Split` with this regex followed by ByteLevel without its own
 * regex), and the tokenizer.ggml.pre name under which llama.cpp (src/llama-vocab.cpp) applies the same split.
 */
const KNOWN_SPLITS: ReadonlyArray<{ regex: string; pre: string; family: string }> = [
  {
    regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    pre: "llama-bpe",
    family: "Llama 3",
  },
  {
    regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    pre: "qwen2",
    family: "Qwen2",
  },
  {
    regex: "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
    pre: "gpt-2",
    family: "GPT-2",
  },
];

/** Which tokenizer.ggml.pre was written, and why. */
export interface PreTokenizerChoice {
  name: string;
  source: string;
}

export interface GgufVocab {
  model: "gpt2" | "llama";
  pre: PreTokenizerChoice;
  /** The tokenizer.* key/values, in write order. */
  kv: Array<[string, GgufValue]>;
  /** Number of tokens (= the embedding's rows). */
  size: number;
  warnings: string[];
}

function readJson(path: string): Json {
  return JSON.parse(readFileSync(path, "utf8")) as Json;
}

const isObj = (v: unknown): v is Json => v !== null && typeof v === "object" && !Array.isArray(v);

/** The parts of a pre_tokenizer (a Sequence is flattened). */
function preParts(pt: unknown): Json[] {
  if (!isObj(pt)) return [];
  if (pt.type === "Sequence" && Array.isArray(pt.pretokenizers)) return pt.pretokenizers.flatMap(preParts);
  return [pt];
}

function normalizerParts(n: unknown): Json[] {
  if (!isObj(n)) return [];
  if (n.type === "Sequence" && Array.isArray(n.normalizers)) return n.normalizers.flatMap(normalizerParts);
  return [n];
}

/** tokenizer.ggml.pre for a byte-level BPE tokenizer: the option, else the regex in tokenizer.json, else the family's. */
function choosePre(tj: Json, modelType: string, explicit: string | null, source = "given (--pre)"): PreTokenizerChoice {
  if (explicit) return { name: explicit, source };
  const parts = preParts(tj.pre_tokenizer);
  const splits = parts.filter((p) => p.type === "Split");
  const byteLevel = parts.find((p) => p.type === "ByteLevel");
  if (splits.length === 1 && byteLevel && byteLevel.use_regex === false) {
    const pattern = splits[0]!.pattern;
    const regex = isObj(pattern) && typeof pattern.Regex === "string" ? pattern.Regex : null;
    const known = KNOWN_SPLITS.find((k) => k.regex === regex);
    if (known) return { name: known.pre, source: `tokenizer.json's pre-tokenizer regex is the ${known.family} one, which llama.cpp applies as "${known.pre}"` };
  }
  if (splits.length === 0 && byteLevel && byteLevel.use_regex !== false) {
    return { name: "gpt-2", source: `tokenizer.json's pre-tokenizer is ByteLevel with its GPT-2 regex, which llama.cpp applies as "gpt-2"` };
  }
  // The family's documented pre-tokenizer (convert_hf_to_gguf's hashes resolve these families to these names).
  if (modelType === "qwen2" || modelType === "qwen3") return { name: "qwen2", source: `not recognised in tokenizer.json; the qwen2 family's name (Qwen3 kept its tokenizer)` };
  throw new GgufVocabError(
    `tokenizer.json's byte-level pre-tokenizer is not one realign recognises (Llama 3, Qwen2, GPT-2), so llama.cpp's split is unknown; ` +
      `pass --pre <name> with the tokenizer.ggml.pre of the base model's GGUF (e.g. llama-bpe, qwen2, gpt-2)`,
  );
}

const BYTE_TOKEN = /^<0x[0-9A-Fa-f]{2}>$/;

/** Tokens that HF marks as plain added tokens but llama.cpp should treat as control (convert_hf_to_gguf's rule). */
const looksSpecial = (t: string): boolean => (t.startsWith("<|") && t.endsWith("|>")) || t === "<pad>" || t === "<mask>" || (t.startsWith("<unused") && t.endsWith(">"));

/** Special-token ids, add_bos/add_eos and the chat template, from realign's own reading of the tokenizer files. */
function specialKv(tok: ModelTokenizer, size: number, cfg: Json, unkId: number | null, padDeclared: boolean): Array<[string, GgufValue]> {
  const kv: Array<[string, GgufValue]> = [];
  const inRange = (id: number | null | undefined): id is number => typeof id === "number" && Number.isInteger(id) && id >= 0 && id < size;
  // A model whose tokenizer declares no BOS (ChatML organisms, Qwen) still names one in config.json; llama.cpp
  // needs an id (it defaults to 11 for BPE) and only adds it when add_bos_token is true.
  const bos = tok.bosId ?? (typeof cfg.bos_token_id === "number" ? cfg.bos_token_id : null);
  if (inRange(bos)) kv.push(["tokenizer.ggml.bos_token_id", gv.u32(bos)]);
  const eos = tok.eosIds[0];
  if (inRange(eos)) kv.push(["tokenizer.ggml.eos_token_id", gv.u32(eos)]);
  if (inRange(unkId)) kv.push(["tokenizer.ggml.unknown_token_id", gv.u32(unkId)]);
  // realign falls back to EOS for padding; a GGUF names a pad token only when the files declare one
  if (inRange(tok.padId) && padDeclared) kv.push(["tokenizer.ggml.padding_token_id", gv.u32(tok.padId)]);
  // What HF's tokenizer(text) adds, probed: the engine's raw prompts are encoded this way.
  const withSpecial = tok.encode("a", { addSpecialTokens: true });
  const without = tok.encode("a", { addSpecialTokens: false });
  const addBos = tok.bosId !== null && withSpecial.length > without.length && withSpecial[0] === tok.bosId;
  const addEos = tok.eosIds.length > 0 && withSpecial.length > without.length && tok.eosIds.includes(withSpecial[withSpecial.length - 1]!);
  kv.push(["tokenizer.ggml.add_bos_token", gv.bool(addBos)]);
  kv.push(["tokenizer.ggml.add_eos_token", gv.bool(addEos)]);
  if (tok.chatTemplate !== null) kv.push(["tokenizer.chat_template", gv.str(tok.chatTemplate)]);
  return kv;
}

/** Whether tokenizer_config.json, special_tokens_map.json, generation_config.json or config.json names a pad token. */
function padDeclared(dir: string, cfg: Json): boolean {
  const read = (f: string): Json => {
    try {
      const v = readJson(join(dir, f));
      return isObj(v) ? v : {};
    } catch {
      return {};
    }
  };
  const tc = read("tokenizer_config.json");
  const sm = read("special_tokens_map.json");
  const gc = read("generation_config.json");
  const set = (v: unknown) => v !== undefined && v !== null;
  return set(tc.pad_token) || set(sm.pad_token) || typeof gc.pad_token_id === "number" || typeof cfg.pad_token_id === "number";
}

export interface VocabOptions {
  /** tokenizer.ggml.pre for byte-level BPE; null: detect. */
  pre?: string | null;
  /** Where `pre` comes from, for the report (default "given (--pre)"). */
  preSource?: string;
  /** tokenizer.ggml.model of the GGUF `pre` was taken from: must be the one written. */
  baseModel?: string;
}

/**
 * The tokenizer metadata for a model directory whose embedding has `size` rows. `tok` is realign's tokenizer
 * of the same directory. Throws GgufVocabError when llama.cpp could not reproduce the tokenizer.
 */
export function buildGgufVocab(dir: string, tok: ModelTokenizer, size: number, cfg: Json, opts: VocabOptions = {}): GgufVocab {
  const file = join(dir, "tokenizer.json");
  const tj = readJson(file);
  const model = tj.model as Json;
  const warnings: string[] = [];
  const added = Array.isArray(tj.added_tokens) ? (tj.added_tokens as Json[]) : [];
  const addedById = new Map<number, Json>(added.map((t) => [t.id as number, t]));

  const tokens: (string | null)[] = new Array(size).fill(null);
  const place = (id: number, text: string, what: string) => {
    if (id >= size) throw new GgufVocabError(`${file}: ${what} ${JSON.stringify(text)} has id ${id}, beyond the embedding's ${size} rows (config.json vocab_size)`);
    tokens[id] = text;
  };

  const parts = preParts(tj.pre_tokenizer);
  const byteLevel = parts.some((p) => p.type === "ByteLevel");
  const type = model.type ?? (Array.isArray(model.vocab) ? "Unigram" : "BPE");
  let kind: "gpt2" | "llama";
  if (type === "BPE" && byteLevel) kind = "gpt2";
  else if ((type === "BPE" && model.byte_fallback === true) || type === "Unigram") kind = "llama";
  else throw new GgufVocabError(`${file}: a ${String(type)} tokenizer without byte-level pre-tokenization or byte fallback has no llama.cpp equivalent realign can write`);
  if (opts.baseModel !== undefined && opts.baseModel !== kind) {
    throw new GgufVocabError(`the base model's GGUF has tokenizer.ggml.model "${opts.baseModel}", but this tokenizer is "${kind}": is it the same model family?`);
  }

  const scores = new Float32Array(size);
  if (type === "Unigram") {
    (model.vocab as [string, number][]).forEach(([piece, score], id) => {
      place(id, piece, "token");
      scores[id] = score;
    });
  } else {
    for (const [text, id] of Object.entries(model.vocab as Record<string, number>)) place(id, text, "token");
  }
  for (const t of added) place(t.id as number, t.content as string, "added token");

  const types = new Int32Array(size);
  const unkText = typeof model.unk_token === "string" ? model.unk_token : null;
  let unkId: number | null = null;
  let padded = 0;
  for (let id = 0; id < size; id++) {
    const text = tokens[id];
    if (text === null) {
      tokens[id] = `[PAD${id}]`;
      types[id] = TokenType.UNUSED;
      padded++;
      continue;
    }
    const a = addedById.get(id);
    if (kind === "llama" && text === unkText) {
      types[id] = TokenType.UNKNOWN;
      unkId = id;
    } else if (a) types[id] = a.special === true || looksSpecial(text) ? TokenType.CONTROL : TokenType.USER_DEFINED;
    else if (kind === "llama" && BYTE_TOKEN.test(text)) types[id] = TokenType.BYTE;
    else types[id] = TokenType.NORMAL;
  }
  if (padded > 0) warnings.push(`${padded} embedding rows have no token in tokenizer.json; written as unused [PAD<id>] tokens`);
  // llama.cpp maps token text → id and asserts every text is unique (GGML_ASSERT, which aborts the process).
  const seen = new Map<string, number>();
  for (let id = 0; id < size; id++) {
    const prev = seen.get(tokens[id]!);
    if (prev !== undefined) throw new GgufVocabError(`${file}: tokens ${prev} and ${id} are both ${JSON.stringify(tokens[id])}; llama.cpp needs every token text to be unique`);
    seen.set(tokens[id]!, id);
  }

  const kv: Array<[string, GgufValue]> = [];
  let pre: PreTokenizerChoice;
  const merges = Array.isArray(model.merges) ? (model.merges as (string | [string, string])[]) : [];
  // tokenizers ≥ 0.20 may store merges as pairs (parts may then hold spaces); llama.cpp splits "left right" at the
  // first space after the first character, so a space inside a part is written as U+0120, as gguf-py does.
  const mergeText = (m: string | [string, string]) => (typeof m === "string" ? m : m.map((p) => p.replace(/ /g, "\u0120")).join(" "));
  if (kind === "gpt2") {
    pre = choosePre(tj, typeof cfg.model_type === "string" ? cfg.model_type : "", opts.pre ?? null, opts.preSource);
    kv.push(["tokenizer.ggml.model", gv.str("gpt2")], ["tokenizer.ggml.pre", gv.str(pre.name)]);
    kv.push(["tokenizer.ggml.tokens", gv.strs(tokens as string[])], ["tokenizer.ggml.token_type", gv.i32s(types)]);
    kv.push(["tokenizer.ggml.merges", gv.strs(merges.map(mergeText))]);
  } else {
    if (opts.pre && opts.baseModel === undefined) throw new GgufVocabError(`--pre applies to byte-level BPE tokenizers; this one is sentencepiece-style (tokenizer.ggml.model "llama", whose pre-tokenizer is always "default")`);
    pre = { name: "default", source: "sentencepiece-style tokenizers have no pre-tokenizer choice in llama.cpp" };
    if (type === "BPE") {
      // score = −(rank of the first merge producing the token); tokens no merge produces score below every merge
      // (the score of a single character is never read: characters are where merging starts)
      scores.fill(-(merges.length + 1));
      const made = new Set<number>();
      merges.forEach((m, rank) => {
        const [l, r] = typeof m === "string" ? [m.slice(0, m.indexOf(" ")), m.slice(m.indexOf(" ") + 1)] : m;
        const id = seen.get(l + r);
        if (id !== undefined && !made.has(id)) {
          made.add(id);
          scores[id] = -rank;
        }
      });
    }
    // Spaces are "▁" in such vocabularies, and a "▁" is prepended to the text when the normalizer or the
    // Metaspace pre-tokenizer does so (llama.cpp's add_space_prefix); Gemma's does not.
    const prepends =
      normalizerParts(tj.normalizer).some((n) => n.type === "Prepend" && n.prepend === "\u2581") ||
      parts.some((p) => p.type === "Metaspace" && (p.prepend_scheme === "always" || p.prepend_scheme === "first" || (p.prepend_scheme === undefined && p.add_prefix_space !== false)));
    kv.push(["tokenizer.ggml.model", gv.str("llama")], ["tokenizer.ggml.pre", gv.str(pre.name)]);
    kv.push(["tokenizer.ggml.tokens", gv.strs(tokens as string[])], ["tokenizer.ggml.scores", gv.f32s(scores)], ["tokenizer.ggml.token_type", gv.i32s(types)]);
    kv.push(["tokenizer.ggml.add_space_prefix", gv.bool(prepends)]);
  }
  kv.push(...specialKv(tok, size, cfg, unkId, padDeclared(dir, cfg)));
  return { model: kind, pre, kv, size, warnings };
}
