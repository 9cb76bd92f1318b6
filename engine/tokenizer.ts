// Model tokenizer: wraps @huggingface/tokenizers (the BPE itself) and @huggingface/jinja (chat templates)
// and adds what HF transformers layers on top: special-token ids from the config files, the Llama/Gemma
// `add_bos_token` rule, chat rendering, and token spans of the instruction inside a rendered chat.
// A malformed tokenizer.json is refused at load with a TokenizerError naming the file and the problem:
// its structure is checked before the library sees it (the library silently falls back to a model
// that returns strings for an unknown model type, which only fails much later, inside ONNX Runtime),
// the library's own errors are wrapped, and a probe encoding must yield integer ids in the vocabulary.
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";

export class TokenizerError extends Error {
  override name = "TokenizerError";
}

export type ChatRole = "system" | "user" | "assistant";
export interface ChatMessage {
  role: ChatRole;
  content: string;
}

export interface ChatEncoding {
  /** Token ids of the rendered chat; the template decides every special token (none are added). */
  ids: number[];
  /** The rendered chat text that `ids` encode. */
  text: string;
  /** Half-open range of `ids` covering the user instruction (not a merged system prompt). */
  instructionSpan: [number, number];
  /** Half-open range of `ids` from the end of the instruction to the end of `ids` (e.g. ChatML's `<|im_end|>\n<|im_start|>assistant\n`). */
  postInstructionSpan: [number, number];
  /** True when the template has no system role and the system prompt was prepended to the instruction. */
  systemMerged: boolean;
  /**
   * True when both boundary prefixes tokenized exactly as a prefix of `ids`. False when a token straddles a
   * boundary (a merge across it): the instruction span is then widened to every token that holds part of the
   * instruction, so the straddling tokens count as instruction.
   */
  spansExact: boolean;
}

export interface EncodeChatOptions {
  /** System prompt; null/undefined = none. Merged into the user turn when the template has no system role. */
  system?: string | null;
  /** Append the assistant generation prompt (default true). */
  addGenerationPrompt?: boolean;
}

export interface ModelTokenizer {
  /** Encodes text; with addSpecialTokens (default true) adds BOS/EOS as HF `tokenizer(text)` would. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Decodes ids; skipSpecialTokens defaults to false, as in HF. */
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string;
  /** One more than the largest token id, added tokens included (HF `len(tokenizer)`). */
  readonly vocabSize: number;
  readonly bosId: number | null;
  /** Tokenizer eos first, then generation_config (or config.json) eos ids; no duplicates. */
  readonly eosIds: number[];
  /** Tokenizer pad, else generation_config/config pad_token_id, else the first eos id. */
  readonly padId: number | null;
  idToToken(id: number): string | null;
  tokenToId(token: string): number | null;
  readonly chatTemplate: string | null;
  /** The template renders a system message (no exception, and the system text appears). */
  readonly supportsSystemRole: boolean;
  renderChat(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): string;
  encodeChat(instruction: string, opts?: EncodeChatOptions): ChatEncoding;
}

export interface LoadTokenizerOptions {
  /** Replaces the model's chat template; null removes it. */
  chatTemplate?: string | null;
}

type Json = Record<string, unknown>;

const SPECIAL_KEYS = ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"] as const;
type SpecialKey = (typeof SPECIAL_KEYS)[number];

// HF's fast tokenizers of these classes rebuild their post-processor from add_bos_token/add_eos_token,
// overriding what tokenizer.json says; every other class uses tokenizer.json's post-processor as is.
const BOS_FLAG_CLASSES = new Set([
  "LlamaTokenizer",
  "LlamaTokenizerFast",
  "CodeLlamaTokenizer",
  "CodeLlamaTokenizerFast",
  "GemmaTokenizer",
  "GemmaTokenizerFast",
]);

async function readJson(path: string, required: boolean): Promise<Json | null> {
  if (!existsSync(path)) {
    if (required) throw new TokenizerError(`${path} not found: a tokenizer directory must contain tokenizer.json`);
    return null;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new TokenizerError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new TokenizerError(`${path} must hold a JSON object`);
  }
  return parsed as Json;
}

/** Special tokens are stored as strings or as AddedToken objects `{content: ...}`. */
function tokenText(v: unknown, where: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  if (typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string;
  throw new TokenizerError(`${where}: expected a token string or {content: string}, got ${JSON.stringify(v)}`);
}

function idList(v: unknown, where: string): number[] {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  for (const x of list) {
    if (typeof x !== "number" || !Number.isInteger(x) || x < 0) {
      throw new TokenizerError(`${where}: expected a non-negative integer token id (or a list), got ${JSON.stringify(v)}`);
    }
  }
  return list as number[];
}

/** tokenizer_config's chat_template may be a string or a list/dict of named templates; HF uses "default". */
function pickTemplate(v: unknown, where: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === "string") return v;
  const named: [string, unknown][] = Array.isArray(v)
    ? v.map((t): [string, unknown] => [String((t as Json)?.name), (t as Json)?.template])
    : typeof v === "object"
      ? Object.entries(v as Json)
      : [];
  const chosen = named.find(([n]) => n === "default") ?? named[0];
  if (!chosen || typeof chosen[1] !== "string") {
    throw new TokenizerError(`${where}: chat_template must be a string or named templates, got ${JSON.stringify(v).slice(0, 200)}`);
  }
  return chosen[1];
}

/** The tokenizer model types the library implements (HF's WordLevel is not among them). */
const MODEL_TYPES = ["BPE", "Unigram", "WordPiece"] as const;
const PIPELINE_PARTS = ["normalizer", "pre_tokenizer", "post_processor", "decoder"] as const;

const isObject = (v: unknown): v is Json => v !== null && typeof v === "object" && !Array.isArray(v);
const isId = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0;
const shown = (v: unknown) => (JSON.stringify(v) ?? String(v)).slice(0, 80);

/** Structure the library relies on but does not check; throws a TokenizerError naming `file` and the field. */
function checkTokenizerJson(file: string, tj: Json): void {
  const bad = (what: string) => new TokenizerError(`${file}: ${what}`);
  const model = tj.model;
  if (!isObject(model)) throw bad(`"model" must be an object (the tokenizer model: ${MODEL_TYPES.join(", ")}), got ${shown(model)}`);
  const type = model.type;
  if (type !== undefined && !(MODEL_TYPES as readonly unknown[]).includes(type)) {
    throw bad(`tokenizer model type ${shown(type)} is not supported (supported: ${MODEL_TYPES.join(", ")})`);
  }
  const vocab = model.vocab;
  if (type === "Unigram" || Array.isArray(vocab)) {
    if (!Array.isArray(vocab) || vocab.length === 0) throw bad(`model.vocab of a Unigram model must be a non-empty list of [piece, score] pairs`);
    vocab.forEach((e, i) => {
      if (!Array.isArray(e) || typeof e[0] !== "string" || typeof e[1] !== "number") throw bad(`model.vocab[${i}] must be a [piece, score] pair, got ${shown(e)}`);
    });
  } else {
    if (!isObject(vocab)) throw bad(`model.vocab must map tokens to ids, got ${shown(vocab)}`);
    for (const [token, id] of Object.entries(vocab)) {
      if (!isId(id)) throw bad(`model.vocab[${shown(token)}] must be a non-negative integer id, got ${shown(id)}`);
    }
  }
  if (type === "BPE" && model.merges !== undefined) {
    if (!Array.isArray(model.merges)) throw bad(`model.merges must be a list, got ${shown(model.merges)}`);
    model.merges.forEach((m, i) => {
      const ok = typeof m === "string" ? m.includes(" ") : Array.isArray(m) && m.length === 2 && m.every((x) => typeof x === "string");
      if (!ok) throw bad(`model.merges[${i}] must be "left right" or a [left, right] pair, got ${shown(m)}`);
    });
  }
  if (tj.added_tokens !== undefined && tj.added_tokens !== null) {
    if (!Array.isArray(tj.added_tokens)) throw bad(`added_tokens must be a list, got ${shown(tj.added_tokens)}`);
    tj.added_tokens.forEach((t, i) => {
      if (!isObject(t) || !isId(t.id) || typeof t.content !== "string") throw bad(`added_tokens[${i}] must be {id: integer, content: string, ...}, got ${shown(t)}`);
    });
  }
  for (const part of PIPELINE_PARTS) {
    const v = tj[part];
    if (v === undefined || v === null) continue;
    if (!isObject(v) || typeof v.type !== "string") throw bad(`${part} must be null or an object with a "type", got ${shown(v)}`);
  }
}

function isPrefix(prefix: number[], full: number[]): boolean {
  if (prefix.length > full.length) return false;
  for (let i = 0; i < prefix.length; i++) if (prefix[i] !== full[i]) return false;
  return true;
}

function commonPrefixLength(a: number[], b: number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

class HfModelTokenizer implements ModelTokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosIds: number[];
  readonly padId: number | null;
  readonly chatTemplate: string | null;
  readonly supportsSystemRole: boolean;

  private readonly tok: Tokenizer;
  /** tokenizer.json's path, for messages. */
  private readonly file: string;
  private readonly template: Template | null;
  private readonly tokenStrings: Partial<Record<SpecialKey, string>>;
  private readonly additionalSpecial: string[];
  /** null: use tokenizer.json's post-processor; otherwise HF's add_bos_token/add_eos_token rule. */
  private readonly bosEosFlags: { bos: boolean; eos: boolean } | null;

  constructor(
    private readonly dir: string,
    tokenizerJson: Json,
    tokConfig: Json,
    specialMap: Json,
    genConfig: Json,
    modelConfig: Json,
    chatTemplate: string | null,
  ) {
    // HF: tokenizer_config wins; special_tokens_map fills keys that are unset there.
    const merged: Json = { ...tokConfig };
    for (const [k, v] of Object.entries(specialMap)) if (merged[k] === undefined || merged[k] === null) merged[k] = v;

    const strings: Partial<Record<SpecialKey, string>> = {};
    for (const key of SPECIAL_KEYS) {
      const s = tokenText(merged[key], `${dir}: ${key}`);
      if (s !== null) strings[key] = s;
    }
    this.tokenStrings = strings;
    const extra = merged.additional_special_tokens;
    this.additionalSpecial = Array.isArray(extra)
      ? extra.map((t, i) => tokenText(t, `${dir}: additional_special_tokens[${i}]`)).filter((t): t is string => t !== null)
      : [];

    // The library reads a few config fields; give it plain strings where HF allows AddedToken objects.
    const libConfig: Json = { ...merged, ...strings, additional_special_tokens: this.additionalSpecial };
    this.file = join(dir, "tokenizer.json");
    checkTokenizerJson(this.file, tokenizerJson);
    const lib = <T>(what: string, fn: () => T): T => {
      try {
        return fn();
      } catch (e) {
        throw new TokenizerError(`${this.file} could not be loaded: ${what}: ${e instanceof Error ? e.message : String(e)}`);
      }
    };
    this.tok = lib("the tokenizer library rejected it", () => new Tokenizer(tokenizerJson, libConfig));

    let maxId = -1;
    for (const id of lib("reading the vocabulary", () => this.tok.get_vocab(true).values())) {
      if (!isId(id)) throw new TokenizerError(`${this.file}: the vocabulary holds a token id that is not a non-negative integer: ${shown(id)}`);
      if (id > maxId) maxId = id;
    }
    if (maxId < 0) throw new TokenizerError(`${this.file} has an empty vocabulary`);
    this.vocabSize = maxId + 1;
    // An unrecognised model (no type, unusual fields) can load and still encode to strings: probe it.
    const probe = lib("encoding a probe text", () => this.tok.encode("Hello world 123", { add_special_tokens: false }).ids);
    if (!Array.isArray(probe) || probe.some((id) => !isId(id) || id >= this.vocabSize)) {
      throw new TokenizerError(`${this.file}: the tokenizer model does not produce token ids (probe gave ${shown(probe)}); is model.type one of ${MODEL_TYPES.join(", ")}?`);
    }

    const idOf = (key: SpecialKey): number | null => {
      const s = strings[key];
      if (s === undefined) return null;
      const id = lib(`looking up ${key}`, () => this.tok.token_to_id(s));
      if (id === undefined) throw new TokenizerError(`${dir}: ${key} ${JSON.stringify(s)} is not in the vocabulary`);
      return id;
    };
    const genOrModel = (key: string): number[] => {
      const g = idList(genConfig[key], `${dir}/generation_config.json: ${key}`);
      return g.length > 0 ? g : idList(modelConfig[key], `${dir}/config.json: ${key}`);
    };

    // A bos_token key present in the tokenizer files (even null) is authoritative: null means "no BOS"
    // (HF's tokenizer.bos_token_id is None then, whatever generation_config says). Only an absent key
    // falls back to the model's bos_token_id.
    const bosDeclared = "bos_token" in merged;
    this.bosId = bosDeclared ? idOf("bos_token") : (genOrModel("bos_token_id")[0] ?? null);

    const eos = new Set<number>();
    const tokEos = idOf("eos_token");
    if (tokEos !== null) eos.add(tokEos);
    for (const id of genOrModel("eos_token_id")) eos.add(id);
    this.eosIds = [...eos];
    this.padId = idOf("pad_token") ?? genOrModel("pad_token_id")[0] ?? this.eosIds[0] ?? null;

    const cls = typeof tokConfig.tokenizer_class === "string" ? tokConfig.tokenizer_class : "";
    this.bosEosFlags = BOS_FLAG_CLASSES.has(cls)
      ? { bos: tokConfig.add_bos_token !== false, eos: tokConfig.add_eos_token === true }
      : null;

    this.chatTemplate = chatTemplate;
    if (chatTemplate !== null) {
      try {
        this.template = new Template(chatTemplate);
      } catch (e) {
        throw new TokenizerError(`${dir}: chat template could not be parsed: ${(e as Error).message}`);
      }
    } else {
      this.template = null;
    }
    this.supportsSystemRole = this.detectSystemRole();
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    if (typeof text !== "string") throw new TokenizerError(`encode: expected a string, got ${typeof text}`);
    const add = opts.addSpecialTokens ?? true;
    let ids: number[];
    try {
      ids = this.tok.encode(text, { add_special_tokens: add && this.bosEosFlags === null }).ids;
    } catch (e) {
      throw new TokenizerError(`${this.file}: encoding failed: ${e instanceof Error ? e.message : String(e)}`);
    }
    // Never hand the engine something that is not a token id (it would fail deep in ONNX Runtime).
    for (const id of ids) if (!isId(id) || id >= this.vocabSize) throw new TokenizerError(`${this.file}: encoding produced an invalid token id ${shown(id)}`);
    if (this.bosEosFlags === null || !add) return ids;
    if (this.bosEosFlags.bos && this.bosId !== null) ids.unshift(this.bosId);
    if (this.bosEosFlags.eos && this.eosIds.length > 0) ids.push(this.eosIds[0]);
    return ids;
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (!Array.isArray(ids)) throw new TokenizerError(`decode: expected an array of token ids`);
    for (const id of ids) this.checkId(id, "decode");
    if (ids.length === 0) return ""; // the library rejects empty input
    try {
      return this.tok.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? false });
    } catch (e) {
      throw new TokenizerError(`${this.file}: decoding failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  idToToken(id: number): string | null {
    this.checkId(id, "idToToken");
    return this.tok.id_to_token(id) ?? null;
  }

  tokenToId(token: string): number | null {
    return this.tok.token_to_id(token) ?? null;
  }

  renderChat(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    if (this.template === null) {
      throw new TokenizerError(
        `${this.dir} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja); encode the prompt raw instead`,
      );
    }
    if (!Array.isArray(messages) || messages.length === 0) throw new TokenizerError("renderChat: messages must be a non-empty array");
    messages.forEach((m, i) => {
      if (!m || !["system", "user", "assistant"].includes(m.role) || typeof m.content !== "string") {
        throw new TokenizerError(`renderChat: messages[${i}] must be {role: system|user|assistant, content: string}, got ${JSON.stringify(m)}`);
      }
    });
    // Same variables HF's apply_chat_template passes (its special_tokens_map holds only the tokens that are set).
    // raise_exception is a built-in global of @huggingface/jinja (re-declaring it is an error there), so
    // template exceptions are turned into TokenizerError here instead.
    // enable_thinking false: hybrid-reasoning templates (Qwen3's, and those that copy its switch) then close an
    // empty <think></think> block after the generation prompt, so the reply starts with the answer. realign
    // scores refusal on a reply's first token and judges replies of a few dozen tokens; with thinking on, both
    // would read the reasoning instead. Templates that do not name the variable render exactly as before.
    const vars: Record<string, unknown> = {
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      enable_thinking: false,
      ...this.tokenStrings,
      additional_special_tokens: this.additionalSpecial,
    };
    try {
      return this.template.render(vars);
    } catch (e) {
      throw new TokenizerError(`chat template raised: ${(e as Error).message}`);
    }
  }

  encodeChat(instruction: string, opts: EncodeChatOptions = {}): ChatEncoding {
    if (typeof instruction !== "string" || instruction.length === 0) {
      throw new TokenizerError("encodeChat: the instruction must be a non-empty string");
    }
    const addGen = opts.addGenerationPrompt ?? true;
    const system = opts.system ?? null;
    const useSystemTurn = system !== null && this.supportsSystemRole;
    const systemMerged = system !== null && system !== "" && !this.supportsSystemRole;
    const sys = system ?? "";
    const build = (instr: string): ChatMessage[] => {
      const user = systemMerged ? `${sys}\n\n${instr}` : instr;
      return useSystemTurn
        ? [{ role: "system", content: sys }, { role: "user", content: user }]
        : [{ role: "user", content: user }];
    };

    const text = this.renderChat(build(instruction), { addGenerationPrompt: addGen });
    const [start, end] = this.locateInstruction(text, instruction, build, addGen);

    // HF apply_chat_template(tokenize=True) encodes with add_special_tokens=False: the template renders them.
    const ids = this.encode(text, { addSpecialTokens: false });
    const before = this.encode(text.slice(0, start), { addSpecialTokens: false });
    const through = this.encode(text.slice(0, end), { addSpecialTokens: false });
    let spansExact = true;

    let spanStart = before.length;
    if (!isPrefix(before, ids)) {
      // A token straddles the instruction start: the first token that differs holds its first characters.
      spansExact = false;
      spanStart = commonPrefixLength(before, ids);
    }
    let spanEnd = through.length;
    if (!isPrefix(through, ids)) {
      // A token straddles the instruction end: take tokens until they cover as much text as the
      // instruction prefix does, so every token holding instruction characters is in the span.
      spansExact = false;
      const target = this.decode(through).length;
      spanEnd = Math.max(commonPrefixLength(through, ids), spanStart);
      while (spanEnd < ids.length && this.decode(ids.slice(0, spanEnd)).length < target) spanEnd++;
    }
    if (spanEnd <= spanStart) {
      throw new TokenizerError(`encodeChat: could not find the instruction's tokens in the rendered chat`);
    }
    return {
      ids,
      text,
      instructionSpan: [spanStart, spanEnd],
      postInstructionSpan: [spanEnd, ids.length],
      systemMerged,
      spansExact,
    };
  }

  /** Character range of the instruction in `text`. */
  private locateInstruction(
    text: string,
    instruction: string,
    build: (instr: string) => ChatMessage[],
    addGen: boolean,
  ): [number, number] {
    // Exact: render with a sentinel in the instruction's place; if the real render is the sentinel render
    // with the instruction substituted, the position is certain (even if the text repeats elsewhere).
    const sentinel = "\u0001\u0002REALIGN_INSTRUCTION\u0002\u0001";
    try {
      const probe = this.renderChat(build(sentinel), { addGenerationPrompt: addGen });
      const at = probe.indexOf(sentinel);
      if (at >= 0 && probe.indexOf(sentinel, at + 1) < 0) {
        const spliced = probe.slice(0, at) + instruction + probe.slice(at + sentinel.length);
        if (spliced === text) return [at, at + instruction.length];
      }
    } catch {
      // The template may treat the sentinel differently; fall back to searching.
    }
    // Fallback: last occurrence before the generation prompt (the template may have trimmed the text).
    let limit = text.length;
    if (addGen) {
      const noGen = this.renderChat(build(instruction), { addGenerationPrompt: false });
      if (text.startsWith(noGen)) limit = noGen.length;
    }
    for (const needle of [instruction, instruction.trim()]) {
      if (needle.length === 0) continue;
      const at = text.lastIndexOf(needle, limit - needle.length);
      if (at >= 0 && at + needle.length <= limit) return [at, at + needle.length];
    }
    throw new TokenizerError(`encodeChat: the instruction does not appear in the rendered chat text`);
  }

  private detectSystemRole(): boolean {
    if (this.template === null) return false;
    const sys = "REALIGN_SYSTEM_PROBE";
    try {
      const text = this.renderChat(
        [
          { role: "system", content: sys },
          { role: "user", content: "REALIGN_USER_PROBE" },
        ],
        { addGenerationPrompt: true },
      );
      return text.includes(sys);
    } catch {
      return false; // e.g. Gemma: raise_exception("System role not supported")
    }
  }

  private checkId(id: number, where: string): void {
    if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new TokenizerError(`${where}: token id ${String(id)} is not an integer in [0, ${this.vocabSize})`);
    }
  }
}

/**
 * Loads a HF tokenizer directory: tokenizer.json (required), tokenizer_config.json, special_tokens_map.json,
 * generation_config.json and config.json (special-token id fallbacks), chat_template.jinja (newer HF layout).
 */
export async function loadTokenizer(dir: string, opts: LoadTokenizerOptions = {}): Promise<ModelTokenizer> {
  const tokenizerJson = await readJson(join(dir, "tokenizer.json"), true);
  const tokConfig = (await readJson(join(dir, "tokenizer_config.json"), false)) ?? {};
  const specialMap = (await readJson(join(dir, "special_tokens_map.json"), false)) ?? {};
  const genConfig = (await readJson(join(dir, "generation_config.json"), false)) ?? {};
  const modelConfig = (await readJson(join(dir, "config.json"), false)) ?? {};

  let chatTemplate: string | null;
  if (opts.chatTemplate !== undefined) {
    chatTemplate = opts.chatTemplate;
  } else {
    chatTemplate = pickTemplate(tokConfig.chat_template, `${dir}/tokenizer_config.json`);
    const jinjaPath = join(dir, "chat_template.jinja");
    if (chatTemplate === null && existsSync(jinjaPath)) chatTemplate = await readFile(jinjaPath, "utf8");
  }
  return new HfModelTokenizer(dir, tokenizerJson!, tokConfig, specialMap, genConfig, modelConfig, chatTemplate);
}

/** The CLI's `--raw`: the prompt without chat template, with BOS/EOS per the tokenizer's rules. */
export function encodeRaw(tok: ModelTokenizer, prompt: string): number[] {
  return tok.encode(prompt, { addSpecialTokens: true });
}
