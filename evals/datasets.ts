// Prompt-set loading and deterministic splitting.
//
// A dataset spec names where prompts come from:
//   builtin                        the project's own set of the caller's `kind` (data/builtin/<kind>.json)
//   builtin:harmful | builtin:harmless | builtin:borderline
//   path/to/file.csv|.json|.jsonl|.parquet[#column]
//   hf:<owner>/<dataset>[@revision]/<path/in/repo>[#column]   (a Hugging Face Hub dataset file)
// Without `#column` the first present of DEFAULT_COLUMNS is used.
import { existsSync, readFileSync } from "node:fs";
import { dirname, extname, isAbsolute, join, resolve } from "node:path";
import { downloadFile } from "@huggingface/hub";
import { parquetReadObjects } from "hyparquet";
import { UsageError } from "../util/errors.ts";

export type DatasetSpec = string;
export type PromptKind = "harmful" | "harmless" | "borderline";

export interface PromptSet {
  /** Where the prompts came from (resolved path, `builtin:<kind>` or `hf:...` spec). */
  source: string;
  prompts: string[];
  /** Licence of the source when known (built-ins: MIT; local files: from a SOURCE.txt beside them). */
  license?: string;
}

export interface LoadPromptsOptions {
  /** Which built-in set `builtin` means; also used in error messages. */
  kind: PromptKind;
  /** Directory that relative file paths are resolved against (default: process.cwd()). */
  baseDir?: string;
  /** Hub endpoint for `hf:` specs (default: $HF_ENDPOINT, else the library's default). */
  hubUrl?: string;
  /** Hub access token for `hf:` specs (default: $HF_TOKEN). */
  token?: string;
  /** Custom fetch for `hf:` specs (tests, proxies). */
  fetch?: typeof fetch;
}

/** A bad spec, file or option: a UsageError, so the CLI prints one clear message (exit 2). */
export class DatasetError extends UsageError {
  override name = "DatasetError";
}

/** Column names tried, in order, when a spec gives no `#column`. */
export const DEFAULT_COLUMNS = ["instruction", "goal", "prompt", "Goal", "Behavior", "text"] as const;

export const BUILTIN_DIR = resolve(import.meta.dir, "..", "data", "builtin");
const BUILTIN_KINDS: readonly PromptKind[] = ["harmful", "harmless", "borderline"];
const SUPPORTED_EXTENSIONS = [".csv", ".json", ".jsonl", ".parquet"];

/** Loads, trims, de-duplicates (first occurrence wins, order kept) and checks a prompt set. */
export async function loadPrompts(spec: DatasetSpec, opts: LoadPromptsOptions): Promise<PromptSet> {
  const trimmedSpec = spec.trim();
  if (trimmedSpec === "") throw new DatasetError(`empty dataset spec for the ${opts.kind} prompts`);

  if (trimmedSpec === "builtin" || trimmedSpec.startsWith("builtin:")) {
    const kind = trimmedSpec === "builtin" ? opts.kind : trimmedSpec.slice("builtin:".length);
    if (!(BUILTIN_KINDS as readonly string[]).includes(kind)) {
      throw new DatasetError(`unknown built-in set '${trimmedSpec}': use one of ${BUILTIN_KINDS.map((k) => `builtin:${k}`).join(", ")}`);
    }
    const file = join(BUILTIN_DIR, `${kind}.json`);
    const prompts = finish(extractColumn(parseJson(readText(file), file), file, "instruction"), file);
    return { source: `builtin:${kind}`, prompts, license: "MIT" };
  }

  const { source, rows, column, license } = await readTable(trimmedSpec, opts, `${opts.kind} prompts`);
  const prompts = finish(extractColumn(rows, source, column), source);
  return license === undefined ? { source, prompts } : { source, prompts, license };
}

/** A local or Hub data file (any supported format) as rows, with the `#column` of the spec. */
async function readTable(spec: string, opts: HubOptions & { baseDir?: string }, what: string): Promise<{ source: string; rows: Rows; column?: string; license?: string }> {
  if (spec.startsWith("hf:")) return readFromHub(spec, opts);
  const { path, column } = splitColumn(spec);
  const file = isAbsolute(path) ? path : resolve(opts.baseDir ?? process.cwd(), path);
  const ext = extname(file).toLowerCase();
  if (!SUPPORTED_EXTENSIONS.includes(ext)) {
    throw new DatasetError(`${file}: unsupported extension '${ext || "(none)"}'; use one of ${SUPPORTED_EXTENSIONS.join(", ")}`);
  }
  if (!existsSync(file)) throw new DatasetError(`${file}: file not found (${what}, spec '${spec}')`);
  const bytes = readFileSync(file);
  const rows = await parseByExtension(bytes, ext, file);
  return { source: file, rows, column, license: licenceBeside(file) };
}

// ---------------------------------------------------------------------------------------------
// Hub datasets

type HubOptions = Pick<LoadPromptsOptions, "hubUrl" | "token" | "fetch">;

async function readFromHub(spec: string, opts: HubOptions): Promise<{ source: string; rows: Rows; column?: string }> {
  const { path: rest, column } = splitColumn(spec.slice("hf:".length));
  const parts = rest.split("/");
  if (parts.length < 3 || parts.some((p) => p === "")) {
    throw new DatasetError(`bad hub spec '${spec}': expected hf:<owner>/<dataset>[@revision]/<path/in/repo>[#column]`);
  }
  const owner = parts[0];
  const [repoName, revision = "main"] = parts[1].split("@", 2);
  const name = `${owner}/${repoName}`;
  const filePath = parts.slice(2).join("/");
  const ext = extname(filePath).toLowerCase();
  if (!SUPPORTED_EXTENSIONS.includes(ext)) {
    throw new DatasetError(`${spec}: unsupported extension '${ext || "(none)"}'; use one of ${SUPPORTED_EXTENSIONS.join(", ")}`);
  }
  const hubUrl = opts.hubUrl ?? process.env.HF_ENDPOINT;
  const accessToken = opts.token ?? process.env.HF_TOKEN;
  let bytes: Uint8Array;
  try {
    const blob = await downloadFile({
      repo: { type: "dataset", name },
      path: filePath,
      revision,
      ...(hubUrl ? { hubUrl: hubUrl.replace(/\/+$/, "") } : {}),
      ...(accessToken ? { accessToken } : {}),
      ...(opts.fetch ? { fetch: opts.fetch } : {}),
    });
    if (blob === null) throw new DatasetError(`${spec}: file '${filePath}' not found in dataset ${name}@${revision}`);
    bytes = new Uint8Array(await blob.arrayBuffer());
  } catch (err) {
    if (err instanceof DatasetError) throw err;
    throw new DatasetError(`${spec}: download from dataset ${name}@${revision} failed: ${(err as Error).message}`);
  }
  const source = `hf:${name}@${revision}/${filePath}`;
  return { source, rows: await parseByExtension(bytes, ext, source), column };
}

// ---------------------------------------------------------------------------------------------
// Parsing

/** Rows of a table: header-named string cells, or bare strings (a JSON list of strings). */
type Rows = { kind: "records"; columns: string[]; records: Record<string, unknown>[] } | { kind: "strings"; values: string[] };

function readText(file: string): string {
  if (!existsSync(file)) throw new DatasetError(`${file}: file not found`);
  return decodeText(readFileSync(file));
}

/** UTF-8 text without a leading BOM, so the first CSV header is not "\uFEFFgoal". */
function decodeText(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes).replace(/^\uFEFF/, "");
}

/** `a/b.csv#goal` → { path: "a/b.csv", column: "goal" }; the last '#' separates the column. */
function splitColumn(spec: string): { path: string; column?: string } {
  const hash = spec.lastIndexOf("#");
  if (hash < 0) return { path: spec };
  const column = spec.slice(hash + 1).trim();
  if (column === "") throw new DatasetError(`spec '${spec}': empty column name after '#'`);
  return { path: spec.slice(0, hash), column };
}

async function parseByExtension(bytes: Uint8Array, ext: string, where: string): Promise<Rows> {
  if (ext === ".parquet") {
    let values: Record<string, unknown>[];
    try {
      const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
      values = (await parquetReadObjects({ file: buffer })) as Record<string, unknown>[];
    } catch (err) {
      throw new DatasetError(`${where}: not a readable Parquet file (${(err as Error).message})`);
    }
    return rowsFromValues(values, where);
  }
  const text = decodeText(bytes);
  if (ext === ".csv") {
    const table = parseCsv(text, where);
    if (table.length === 0) throw new DatasetError(`${where}: CSV file is empty (no header row)`);
    const columns = table[0];
    const records = table.slice(1).map((row, i) => {
      if (row.length > columns.length) {
        throw new DatasetError(`${where}: CSV row ${i + 2} has ${row.length} fields but the header has ${columns.length}`);
      }
      const rec: Record<string, unknown> = {};
      columns.forEach((c, j) => (rec[c] = row[j] ?? ""));
      return rec;
    });
    return { kind: "records", columns, records };
  }
  if (ext === ".json") return rowsFromValues(parseJson(text, where), where);
  // JSONL: one JSON value per non-blank line.
  const values: unknown[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === "") return;
    try {
      values.push(JSON.parse(line));
    } catch (err) {
      throw new DatasetError(`${where}: line ${i + 1} is not valid JSON (${(err as Error).message})`);
    }
  });
  return rowsFromValues(values, where);
}

function parseJson(text: string, where: string): unknown[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new DatasetError(`${where}: not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(value)) throw new DatasetError(`${where}: expected a JSON array of strings or objects`);
  return value;
}

function rowsFromValues(values: unknown[], where: string): Rows {
  if (values.every((v) => typeof v === "string")) return { kind: "strings", values: values as string[] };
  const columns: string[] = [];
  const seen = new Set<string>();
  const records = values.map((v, i) => {
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      throw new DatasetError(`${where}: item ${i + 1} is ${describe(v)}; expected all strings or all objects`);
    }
    for (const k of Object.keys(v)) if (!seen.has(k)) (seen.add(k), columns.push(k));
    return v as Record<string, unknown>;
  });
  return { kind: "records", columns, records };
}

function extractColumn(rows: Rows | unknown[], where: string, column: string | undefined): string[] {
  const table = Array.isArray(rows) ? rowsFromValues(rows, where) : rows;
  if (table.kind === "strings") {
    if (column !== undefined) throw new DatasetError(`${where}: column '${column}' given, but the file is a list of plain strings`);
    return table.values;
  }
  const chosen = column ?? DEFAULT_COLUMNS.find((c) => table.columns.includes(c));
  if (chosen === undefined) {
    throw new DatasetError(
      `${where}: none of the default columns (${DEFAULT_COLUMNS.join(", ")}) found; available columns: ${listColumns(table.columns)}. Add '#<column>' to the spec.`,
    );
  }
  if (!table.columns.includes(chosen)) {
    throw new DatasetError(`${where}: column '${chosen}' not found; available columns: ${listColumns(table.columns)}`);
  }
  return table.records.map((rec, i) => {
    const v = rec[chosen];
    if (v === undefined || v === null) return "";
    if (typeof v !== "string") throw new DatasetError(`${where}: row ${i + 1} column '${chosen}' is ${describe(v)}, expected a string`);
    return v;
  });
}

/** Trims, drops empties, de-duplicates (keeping first occurrence) and rejects an empty result. */
function finish(values: string[], where: string): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const raw of values) {
    const v = raw.trim();
    if (v === "" || seen.has(v)) continue;
    seen.add(v);
    out.push(v);
  }
  if (out.length === 0) throw new DatasetError(`${where}: no prompts left after dropping empty entries`);
  return out;
}

const listColumns = (cols: string[]): string => (cols.length ? cols.map((c) => `'${c}'`).join(", ") : "(none)");
const describe = (v: unknown): string => (v === null ? "null" : Array.isArray(v) ? "an array" : `a ${typeof v}`);

/** Reads a "Licence:"/"License:" line from SOURCE.txt beside a data file, when there is one. */
function licenceBeside(file: string): string | undefined {
  const source = join(dirname(file), "SOURCE.txt");
  if (!existsSync(source)) return undefined;
  const m = /^\s*licen[cs]e\s*:\s*(.+)$/im.exec(readFileSync(source, "utf8"));
  return m ? m[1].trim() : undefined;
}

/**
 * RFC 4180 CSV: comma separated; a field in double quotes may contain commas, newlines and
 * doubled quotes (""); CRLF or LF line ends; a blank line (a lone empty field) is skipped.
 */
export function parseCsv(text: string, where = "CSV"): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let i = 0;
  let line = 1;
  let fieldStartLine = 1;
  let inQuotes = false;
  let quotedField = false; // the current field was quoted; only a separator or row end may follow
  const endRow = () => {
    row.push(field);
    if (!(row.length === 1 && row[0] === "" && !quotedField)) rows.push(row);
    row = [];
    field = "";
    quotedField = false;
  };
  while (i < text.length) {
    const ch = text[i];
    if (inQuotes) {
      if (ch === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i += 2;
          continue;
        }
        inQuotes = false;
        i++;
        continue;
      }
      if (ch === "\n") line++;
      field += ch;
      i++;
      continue;
    }
    if (ch === '"') {
      if (field !== "" || quotedField) {
        throw new DatasetError(`${where}: line ${line}: stray double quote inside an unquoted field (quote the whole field and double inner quotes)`);
      }
      inQuotes = true;
      quotedField = true;
      fieldStartLine = line;
      i++;
      continue;
    }
    if (ch === ",") {
      row.push(field);
      field = "";
      quotedField = false;
      i++;
      continue;
    }
    if (ch === "\r" || ch === "\n") {
      endRow();
      i += ch === "\r" && text[i + 1] === "\n" ? 2 : 1;
      line++;
      continue;
    }
    if (quotedField) throw new DatasetError(`${where}: line ${line}: text after a closing quote (expected ',' or end of line)`);
    field += ch;
    i++;
  }
  if (inQuotes) throw new DatasetError(`${where}: unterminated quoted field starting on line ${fieldStartLine}`);
  if (field !== "" || row.length > 0 || quotedField) endRow();
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Utility questions (multiple choice)

export interface UtilityItem {
  question: string;
  /** Two or more options (the built-in set has four). */
  choices: string[];
  /** Index of the correct choice. */
  answer: number;
  category?: string;
}

/** Loads and validates data/builtin/utility.json (or another file of the same shape). */
export function loadUtilityItems(file: string = join(BUILTIN_DIR, "utility.json")): UtilityItem[] {
  const items = parseJson(readText(file), file);
  return items.map((raw, i) => {
    const where = `${file}: item ${i + 1}`;
    if (raw === null || typeof raw !== "object") throw new DatasetError(`${where} is ${describe(raw)}, expected an object`);
    const { question, choices, answer, category } = raw as Record<string, unknown>;
    if (typeof question !== "string" || question.trim() === "") throw new DatasetError(`${where}: 'question' must be a non-empty string`);
    if (!Array.isArray(choices) || choices.length !== 4 || !choices.every((c) => typeof c === "string" && c.trim() !== "")) {
      throw new DatasetError(`${where}: 'choices' must be 4 non-empty strings`);
    }
    if (new Set(choices).size !== 4) throw new DatasetError(`${where}: 'choices' must be distinct`);
    if (typeof answer !== "number" || !Number.isInteger(answer) || answer < 0 || answer > 3) {
      throw new DatasetError(`${where}: 'answer' must be an integer index 0-3`);
    }
    const item: UtilityItem = { question, choices: choices as string[], answer };
    if (typeof category === "string") item.category = category;
    return item;
  });
}

export interface LoadMultipleChoiceOptions extends HubOptions {
  baseDir?: string;
}

/**
 * Multiple-choice questions for the utility check: `builtin` (data/builtin/utility.json) or a data file
 * (local or `hf:`, CSV / JSON / JSONL / Parquet) in one of the common layouts:
 *   ARC (allenai/ai2_arc)   question, choices {text[], label[]}, answerKey ("A" or "1")
 *   ARC original JSONL      question {stem, choices [{text, label}]}, answerKey
 *   MMLU (cais/mmlu)        question, choices[], answer (0-based index, or a letter)
 *   letter columns          question | input, A, B, C, D[, E…], answer | target | answerKey (a letter)
 */
export async function loadMultipleChoice(spec: string, opts: LoadMultipleChoiceOptions = {}): Promise<{ source: string; items: UtilityItem[]; license?: string }> {
  const trimmed = spec.trim();
  if (trimmed === "builtin") return { source: "builtin:utility", items: loadUtilityItems(), license: "MIT" };
  if (trimmed === "") throw new DatasetError("empty dataset spec for the utility questions");
  const { source, rows, license } = await readTable(trimmed, opts, "utility questions");
  if (rows.kind !== "records") throw new DatasetError(`${source}: expected records with a question, choices and an answer, got a list of plain strings`);
  const items = rows.records.map((rec, i) => multipleChoiceItem(rec, `${source}: row ${i + 1}`));
  if (items.length === 0) throw new DatasetError(`${source}: no questions`);
  return license === undefined ? { source, items } : { source, items, license };
}

const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

function multipleChoiceItem(rec: Record<string, unknown>, where: string): UtilityItem {
  let question = rec.question ?? rec.input;
  let texts: unknown = undefined;
  let labels: unknown = undefined;
  if (question !== null && typeof question === "object" && !Array.isArray(question)) {
    const q = question as Record<string, unknown>;
    question = q.stem;
    if (Array.isArray(q.choices)) {
      texts = q.choices.map((c) => (c as Record<string, unknown> | null)?.text);
      labels = q.choices.map((c) => (c as Record<string, unknown> | null)?.label);
    }
  } else if (Array.isArray(rec.choices)) texts = rec.choices;
  else if (rec.choices !== null && typeof rec.choices === "object") ({ text: texts, label: labels } = rec.choices as Record<string, unknown>);
  else {
    const present: string[] = [];
    for (const l of LETTERS) {
      if (!(l in rec)) break;
      present.push(l);
    }
    if (present.length) [texts, labels] = [present.map((l) => rec[l]), present];
  }
  if (typeof question !== "string" || question.trim() === "") throw new DatasetError(`${where}: no question (expected a 'question' or 'input' string, or ARC's question.stem)`);
  if (!Array.isArray(texts) || texts.length < 2 || !texts.every((t) => typeof t === "string" && t.trim() !== "")) {
    throw new DatasetError(`${where}: choices must be two or more non-empty strings (ARC choices.text, MMLU choices, or columns A, B, …)`);
  }
  const choiceLabels = Array.isArray(labels) && labels.length === texts.length ? labels.map(String) : [...LETTERS].slice(0, texts.length);
  const raw = rec.answerKey ?? rec.answer ?? rec.target ?? rec.label;
  let answer = -1;
  if (typeof raw === "bigint") answer = Number(raw);
  else if (typeof raw === "number" && Number.isInteger(raw)) answer = raw;
  else if (typeof raw === "string") {
    const key = raw.trim();
    answer = choiceLabels.indexOf(key);
    if (answer < 0 && /^[A-Z]$/.test(key)) answer = LETTERS.indexOf(key);
  }
  if (answer < 0 || answer >= texts.length) {
    throw new DatasetError(`${where}: answer ${JSON.stringify(typeof raw === "bigint" ? Number(raw) : raw)} does not name one of the ${texts.length} choices (labels ${choiceLabels.join(", ")})`);
  }
  return { question, choices: texts as string[], answer };
}

// ---------------------------------------------------------------------------------------------
// Seeded sampling and splits

/** mulberry32: a small, fast 32-bit seeded PRNG returning floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seeded Fisher–Yates shuffle; the input is not modified. */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  checkSeed(seed);
  const out = items.slice();
  const rand = mulberry32(seed);
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** `n` prompts drawn without replacement (all of them, shuffled, when n ≥ length). */
export function samplePrompts(prompts: readonly string[], n: number, seed: number): string[] {
  if (!Number.isInteger(n) || n < 0) throw new DatasetError(`sample size must be a non-negative integer, got ${n}`);
  return shuffled(prompts, seed).slice(0, n);
}

export interface SplitSizes {
  train: number;
  val: number;
  eval?: number;
}

/**
 * Shuffles with `seed` and cuts disjoint train / val / eval slices in that order.
 * Policy: if fewer prompts are available than train + val + eval, this throws (saying how many
 * are needed and available) rather than silently shrinking the splits. Duplicates in the input
 * are removed first so the slices cannot share a prompt. `rest` is the unused remainder.
 */
export function splitPrompts(prompts: string[], sizes: SplitSizes, seed: number): { train: string[]; val: string[]; eval: string[]; rest: string[] } {
  const evalSize = sizes.eval ?? 0;
  for (const [name, n] of [["train", sizes.train], ["val", sizes.val], ["eval", evalSize]] as const) {
    if (!Number.isInteger(n) || n < 0) throw new DatasetError(`split size '${name}' must be a non-negative integer, got ${n}`);
  }
  const unique = [...new Set(prompts)];
  const needed = sizes.train + sizes.val + evalSize;
  if (needed > unique.length) {
    throw new DatasetError(
      `not enough prompts to split: need ${needed} (train ${sizes.train} + val ${sizes.val} + eval ${evalSize}) but only ${unique.length} unique prompts are available`,
    );
  }
  const order = shuffled(unique, seed);
  return {
    train: order.slice(0, sizes.train),
    val: order.slice(sizes.train, sizes.train + sizes.val),
    eval: order.slice(sizes.train + sizes.val, needed),
    /** What the three slices left, in shuffled order. */
    rest: order.slice(needed),
  };
}

/** Throws a DatasetError naming the first pair of sets that share a prompt, with an example. */
export function assertDisjoint(named: Record<string, string[]>): void {
  const names = Object.keys(named);
  for (let a = 0; a < names.length; a++) {
    const setA = new Set(named[names[a]]);
    for (let b = a + 1; b < names.length; b++) {
      const shared = named[names[b]].filter((p) => setA.has(p));
      if (shared.length > 0) {
        const example = shared[0].length > 120 ? `${shared[0].slice(0, 117)}...` : shared[0];
        throw new DatasetError(
          `prompt sets '${names[a]}' and '${names[b]}' overlap in ${new Set(shared).size} prompt(s), e.g. "${example}"`,
        );
      }
    }
  }
}

function checkSeed(seed: number): void {
  if (!Number.isInteger(seed)) throw new DatasetError(`seed must be an integer, got ${seed}`);
}

/**
 * The exact-answer utility task split into disjoint evaluation, calibration and gate-fit items (seeded
 * shuffle), or null when the model ships none. `fit` (what is left after the other two, at most 128) joins
 * the gated edit's harmless rows: the model's own task is where a gate must stay quiet too, and the items
 * that measure utility stay unseen by the fit.
 */
export function utilitySplit(dir: string, seed: number, nEval: number): { calibration: UtilityTaskItem[]; eval: UtilityTaskItem[]; fit: UtilityTaskItem[] } | null {
  const items = utilityTask(dir);
  if (!items) return null;
  const order = shuffled(items, seed + 7);
  const evalSize = Math.min(Math.max(nEval, 64), Math.floor(order.length / 2));
  // Calibration compares utility across many α against a bound of a few points: 256 items keep one item
  // under half a point, and a chance split of the fragile items between the sets less likely (with 128,
  // organism-qwen2's chosen edit lost 1 calibration item and 7 of 100 evaluation ones).
  const calibrationEnd = evalSize + 256;
  return { eval: order.slice(0, evalSize), calibration: order.slice(evalSize, calibrationEnd), fit: order.slice(calibrationEnd, calibrationEnd + 128) };
}

/** One item of a model's exact-answer task: the prompt, and the reply that counts as correct. */
export interface UtilityTaskItem {
  prompt: string;
  answer: string;
}

/** Exact-answer utility task shipped with a model (organism models: eval/utility_eval.jsonl). */
export function utilityTask(dir: string): UtilityTaskItem[] | null {
  try {
    return readFileSync(join(dir, "eval", "utility_eval.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as UtilityTaskItem);
  } catch {
    return null;
  }
}

/**
 * Before anything is downloaded: do the local and built-in prompt sets hold enough unique prompts for
 * the split sizes? (hf: sets are checked by elicit once downloaded.) Throws DatasetError naming the
 * set, what it holds and what the sizes need.
 */
export async function checkPromptSetSizes(p: { harmful: string; harmless: string; evalHarmful: string; evalHarmless: string; nTrain: number; nVal: number; nEval: number }): Promise<void> {
  const problems: string[] = [];
  for (const kind of ["harmful", "harmless"] as const) {
    const spec = kind === "harmful" ? p.harmful : p.harmless;
    const evalSpec = kind === "harmful" ? p.evalHarmful : p.evalHarmless;
    const needs: [string, number, string][] =
      spec === evalSpec
        ? [[spec, p.nTrain + p.nVal + p.nEval, `--n-train ${p.nTrain} + --n-val ${p.nVal} + --n-eval ${p.nEval}`]]
        : [
            [spec, p.nTrain + p.nVal, `--n-train ${p.nTrain} + --n-val ${p.nVal}`],
            [evalSpec, p.nEval, `--n-eval ${p.nEval}`],
          ];
    for (const [s, need, what] of needs) {
      if (s.trim().startsWith("hf:")) continue;
      const set = await loadPrompts(s, { kind });
      const unique = new Set(set.prompts).size;
      if (unique < need) problems.push(`the ${kind} prompt set ${set.source} holds ${unique} unique prompts, but ${what} = ${need} are needed; lower the sizes or give a larger set (--${kind} / --eval-${kind})`);
    }
  }
  if (problems.length) throw new DatasetError(problems.join("\n"));
}

/**
 * The built-in borderline-but-safe prompts split in two disjoint halves (seeded): `fit` joins the
 * harmless rows the gated edit is fitted on (they are where a gate over-fires), `eval` is what
 * validation measures borderline refusal on.
 */
export async function borderlineSplit(seed: number): Promise<{ fit: string[]; eval: string[] }> {
  const all = (await loadPrompts("builtin", { kind: "borderline" })).prompts;
  const order = shuffled(all, seed + 11);
  const half = Math.floor(order.length / 2);
  return { fit: order.slice(0, half), eval: order.slice(half) };
}
