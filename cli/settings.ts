// Settings resolution: where each value comes from. Precedence (highest first): CLI > environment
// (REALIGN_<UPPER_SNAKE>) > models.yaml entry for the repo > models.yaml defaults (and top-level
// gate:) > built-in defaults. The schema itself is steps/settings.ts.
import { existsSync, readdirSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join, resolve } from "node:path";
import { ConfigError, didYouMean } from "../util/errors.ts";
import { HF_REPO_RE, isLocalModel } from "../hub/repo.ts";
import { isAutoSystemPrompt } from "../evals/system-prompt.ts";
import { cliFlag, coerceValue, DEFAULTS, envName, FIELD_BY_PATH, FIELDS, getPath, NEGATED_FLAGS, OTHER_ENV, setPath, systemPromptPath, yamlKey, type Settings } from "../steps/settings.ts";
import type { ModelsFile, ModelEntry } from "./models-file.ts";

// ---- resolution --------------------------------------------------------------------------------

export interface ResolveInput {
  /** Options given on the command line, keyed by field path ("nTrain", "gate.kl"; nested {gate:{kl}} also accepted). */
  cli?: Record<string, unknown>;
  /** Environment (process.env); only REALIGN_* names are read. */
  env?: Record<string, string | undefined>;
  modelsYaml?: ModelsFile | null;
  /** The model argument: repo id or local dir. */
  repo: string;
  /** Base for relative paths given on the CLI or in env (default process.cwd()). */
  cwd?: string;
}

export interface ResolvedSettings {
  settings: Settings;
  /** Where each value came from, by field path: "cli --n-train", "env REALIGN_SEED", "models.yaml:7 (models[1])", "default". */
  sources: Record<string, string>;
  /** The models.yaml entry that matched the repo, if any. */
  entry: ModelEntry | null;
  /** Non-fatal notes (e.g. unknown REALIGN_* variables). */
  warnings: string[];
}

function flatten(obj: Record<string, unknown>, prefix = ""): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) {
    if (v === undefined) continue;
    const path = prefix ? `${prefix}.${k}` : k;
    if (v !== null && typeof v === "object" && !Array.isArray(v)) Object.assign(out, flatten(v as Record<string, unknown>, path));
    else out[path] = v;
  }
  return out;
}

const PATH_FIELDS = new Set(["systemPrompt"]);

/** "owner/name" → "owner--name"; a local dir → its basename. Safe as a folder name. */
export function modelSlug(model: string): string {
  const isRepo = HF_REPO_RE.test(model) && !existsSync(model);
  const raw = isRepo ? model.replace("/", "--") : basename(resolve(model));
  return raw.replace(/[^A-Za-z0-9._-]+/g, "_") || "model";
}

/** Find the models.yaml entry for a repo (case-insensitive, as on the Hub). */
export function findEntry(file: ModelsFile | null | undefined, repo: string): ModelEntry | null {
  if (!file) return null;
  return file.models.find((m) => m.repo === repo) ?? file.models.find((m) => m.repo.toLowerCase() === repo.toLowerCase()) ?? null;
}

export function resolveSettings(input: ResolveInput): ResolvedSettings {
  const cwd = input.cwd ?? process.cwd();
  const problems: string[] = [];
  const warnings: string[] = [];
  const merged: Record<string, unknown> = structuredClone(DEFAULTS) as unknown as Record<string, unknown>;
  const sources: Record<string, string> = {};
  for (const spec of FIELDS) sources[spec.path] = "default";

  const apply = (path: string, value: unknown, source: string) => {
    setPath(merged, path, value);
    sources[path] = source;
  };

  // Lowest to highest: models.yaml defaults, models.yaml entry, env, CLI.
  const file = input.modelsYaml ?? null;
  if (file) {
    for (const [path, v] of Object.entries(file.defaults)) apply(path, v.value, `${file.label}:${v.line} (defaults)`);
  }
  const entry = findEntry(file, input.repo);
  if (entry && file) {
    for (const [path, v] of Object.entries(entry.settings)) apply(path, v.value, `${file.label}:${v.line} (models[${entry.index}])`);
  }

  const env = input.env ?? {};
  const envNames = new Map(FIELDS.filter((s) => s.path !== "model").map((s) => [envName(s.path), s]));
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith("REALIGN_") || raw === undefined) continue;
    const spec = envNames.get(name);
    if (!spec) {
      if (!OTHER_ENV.has(name)) {
        const hint = didYouMean(name, [...envNames.keys(), ...OTHER_ENV]);
        warnings.push(`ignoring unknown environment variable ${name}${hint ? ` (did you mean ${hint}?)` : ""}`);
      }
      continue;
    }
    try {
      let v = coerceValue(spec, raw);
      if (PATH_FIELDS.has(spec.path) && typeof v === "string" && !isAutoSystemPrompt(v)) v = resolve(cwd, v);
      apply(spec.path, v, `env ${name}`);
    } catch (msg) {
      problems.push(`${name}: ${String(msg)}`);
    }
  }

  for (const [path, raw] of Object.entries(flatten(input.cli ?? {}))) {
    const spec = FIELD_BY_PATH.get(path);
    if (!spec) {
      problems.push(`unknown setting "${path}"`);
      continue;
    }
    try {
      let v = coerceValue(spec, raw);
      if (PATH_FIELDS.has(path) && typeof v === "string" && !isAutoSystemPrompt(v)) v = resolve(cwd, v);
      apply(path, v, `cli ${v === false && NEGATED_FLAGS[path] ? NEGATED_FLAGS[path] : cliFlag(path)}`);
    } catch (msg) {
      problems.push(`${cliFlag(path)}: ${String(msg)}`);
    }
  }

  // The positional argument names the model; it always wins.
  if (!input.repo || !input.repo.trim()) problems.push("no model given: pass a Hugging Face repo id (owner/name) or a local model directory");
  apply("model", input.repo, "argument");
  if (getPath(merged, "out") === undefined) {
    setPath(merged, "out", join("runs", modelSlug(input.repo || "model")));
    sources.out = "default (runs/<model-slug>)";
  }

  const s = merged as unknown as Settings;
  if (s.pushTo !== null && !HF_REPO_RE.test(s.pushTo) && !s.pushTo.startsWith("file:")) problems.push(`pushTo (${sources.pushTo}): expected owner/name (or file:<dir> for a local folder), got "${s.pushTo}"`);
  if (!/^https?:\/\/[^\s]+$/.test(s.hubUrl)) problems.push(`hubUrl (${sources.hubUrl}): expected an http(s) URL, got "${s.hubUrl}"`);
  if (problems.length) throw new ConfigError(problems);
  return { settings: s, sources, entry, warnings };
}

// ---- printing, checks -------------------------------------------------------------------------

/** Aligned "key  value  (source)" lines for printing. */
export function formatSettings(settings: Settings, sources: Record<string, string>): string[] {
  const rows = FIELDS.map((spec) => [yamlKey(spec.path), JSON.stringify(getPath(settings as unknown as Record<string, unknown>, spec.path)) ?? "null", sources[spec.path] ?? "default"] as const);
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.min(48, Math.max(...rows.map((r) => r[1].length)));
  return rows.map(([k, v, src]) => `  ${k.padEnd(w0)}  ${v.padEnd(w1)}  ${src === "default" ? "" : `(${src})`}`.trimEnd());
}

/**
 * Checks that need the filesystem, done before anything is written: a local model dir exists and
 * holds *.safetensors; the system prompt file exists. Throws ConfigError naming every problem.
 */
export function checkSettingsPaths(settings: Settings, sources: Record<string, string> = {}, cwd = process.cwd()): void {
  const problems: string[] = [];
  const m = settings.model;
  if (isLocalModel(m, cwd)) {
    const dir = resolve(cwd, m.startsWith("~") ? join(homedir(), m.slice(1)) : m);
    if (!existsSync(dir)) {
      problems.push(
        HF_REPO_RE.test(m) || m.includes("/") || m.startsWith(".")
          ? `model directory not found: ${dir}`
          : `"${m}" is neither a local directory nor a Hugging Face repo id (owner/name)`,
      );
    } else if (!statSync(dir).isDirectory()) problems.push(`model path is not a directory: ${dir}`);
    else if (!readdirSync(dir).some((n) => n.endsWith(".safetensors"))) problems.push(`model directory has no *.safetensors files: ${dir}`);
  }
  const sp = systemPromptPath(settings);
  if (sp !== null && settings.systemPrompt !== null && !existsSync(sp)) {
    problems.push(`system prompt file not found: ${sp}${sources.systemPrompt ? ` (from ${sources.systemPrompt})` : ""}`);
  }
  if (problems.length) throw new ConfigError(problems);
}
