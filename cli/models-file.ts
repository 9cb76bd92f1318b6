// models.yaml: the list of models `realign batch` maintains, plus shared defaults and a schedule.
//
//   defaults:            # any setting, snake_case (n_train, max_new_tokens, gate: {kl: ...})
//   gate:                # optional, same as defaults.gate
//   schedule: "0 3 * * 1"
//   models:
//     - repo: owner/name
//       enabled: true
//       push_to: me/name-realigned
//       alpha: 4.0
//
// Validation walks the YAML syntax tree so every problem is reported with its file and line:
//   models.yaml:12: models[2].alpah: unknown key (did you mean alpha?)
import { existsSync, readFileSync } from "node:fs";
import { dirname, isAbsolute, relative, resolve } from "node:path";
import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node, type YAMLMap } from "yaml";
import { coerceValue, FIELDS, yamlKey, type FieldSpec } from "../steps/settings.ts";
import { HF_REPO_RE } from "../hub/repo.ts";
import { isAutoSystemPrompt } from "../evals/system-prompt.ts";
import { CronError, parseCron } from "./cron.ts";
import { ConfigError, didYouMean } from "../util/errors.ts";

/** A validated value and the line it came from. */
export interface Located<T = unknown> {
  value: T;
  line: number;
}

export interface ModelEntry {
  repo: string;
  enabled: boolean;
  /** Position in the models: list (0-based). */
  index: number;
  line: number;
  /** Overrides for this model, by setting path ("alpha", "pushTo", "gate.kl"). */
  settings: Record<string, Located>;
}

export interface ModelsFile {
  /** Absolute path. */
  path: string;
  /** How the file is named in messages (relative to cwd when possible). */
  label: string;
  defaults: Record<string, Located>;
  schedule: string | null;
  models: ModelEntry[];
}

const TOP_KEYS = ["defaults", "gate", "schedule", "models"];
const GATE_FIELDS = FIELDS.filter((s) => s.path.startsWith("gate."));
/** Settings that may appear directly in a model entry or in defaults (gate.* goes under gate:). */
const FLAT_FIELDS = FIELDS.filter((s) => s.path !== "model" && !s.path.startsWith("gate."));
const BY_YAML = new Map(FLAT_FIELDS.map((s) => [yamlKey(s.path), s]));
const GATE_BY_YAML = new Map(GATE_FIELDS.map((s) => [yamlKey(s.path).slice("gate.".length), s]));
const ENTRY_KEYS = ["repo", "enabled", "gate", ...BY_YAML.keys()];
const DEFAULT_KEYS = ["gate", ...[...BY_YAML].filter(([, s]) => s.inDefaults).map(([k]) => k)];

/** A mapping entry's key as text. */
const keyOf = (pair: { key: unknown }): string => String(isScalar(pair.key) ? pair.key.value : pair.key);

export function displayPath(path: string, cwd = process.cwd()): string {
  const rel = relative(cwd, path);
  return rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : path;
}

/** Parse and validate models.yaml text. Throws ConfigError listing every problem as "file:line: key: message". */
export function parseModelsFile(text: string, path: string, label = displayPath(path)): ModelsFile {
  const abs = resolve(path);
  const lc = new LineCounter();
  // Duplicate keys are found below instead of by the parser, which reports them at the map's first line.
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: false });
  const problems: string[] = [];
  const lineOf = (node: Node | null | undefined, fallback = 1): number => (node?.range ? lc.linePos(node.range[0]).line : fallback);
  const problem = (line: number, where: string, msg: string) => problems.push(`${label}:${line}: ${where ? `${where}: ` : ""}${msg}`);

  for (const e of doc.errors) problem(e.linePos?.[0]?.line ?? 1, "", `YAML syntax error: ${e.message.split("\n")[0]}`);
  if (problems.length) throw new ConfigError(problems);

  const result: ModelsFile = { path: abs, label, defaults: {}, schedule: null, models: [] };
  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null)) return result; // empty file: nothing configured
  if (!isMap(root)) throw new ConfigError(`${label}:${lineOf(root)}: the top level must be a mapping with defaults:, schedule:, models:`);

  /** Later duplicates of a key are errors (YAML would silently keep the last one). */
  const checkDuplicates = (map: YAMLMap, where: string) => {
    const first = new Map<string, number>();
    for (const pair of map.items) {
      const key = keyOf(pair);
      const line = lineOf(pair.key as Node);
      const prev = first.get(key);
      if (prev !== undefined) problem(line, where ? `${where}.${key}` : key, `duplicate key (first set at line ${prev})`);
      else first.set(key, line);
    }
  };
  checkDuplicates(root, "");

  const rawOf = (node: unknown): unknown => {
    if (node === null || node === undefined) return null;
    if (isScalar(node)) return node.value;
    if (isMap(node)) return {};
    if (isSeq(node)) return [];
    return String(node);
  };

  const readValue = (spec: FieldSpec, node: unknown, line: number, where: string, into: Record<string, Located>) => {
    try {
      let v = coerceValue(spec, rawOf(node));
      // Relative paths in the file are relative to the file, not to wherever realign runs.
      if (spec.path === "systemPrompt" && typeof v === "string" && !isAutoSystemPrompt(v)) v = resolve(dirname(abs), v);
      into[spec.path] = { value: v, line };
    } catch (msg) {
      problem(line, where, String(msg));
    }
  };

  const readGate = (node: unknown, where: string, into: Record<string, Located>) => {
    if (!isMap(node)) {
      problem(lineOf(node as Node), where, "expected a mapping of gate thresholds");
      return;
    }
    checkDuplicates(node, where);
    for (const pair of node.items) {
      const key = keyOf(pair);
      const line = lineOf(pair.key as Node);
      const spec = GATE_BY_YAML.get(key);
      if (!spec) {
        const hint = didYouMean(key, [...GATE_BY_YAML.keys()]);
        problem(line, `${where}.${key}`, `unknown key${hint ? ` (did you mean ${hint}?)` : ` (allowed: ${[...GATE_BY_YAML.keys()].join(", ")})`}`);
        continue;
      }
      readValue(spec, pair.value, line, `${where}.${key}`, into);
    }
  };

  /** Settings block shared by defaults: and model entries; `allowed` limits keys. */
  const readSettings = (pair: { key: unknown; value: unknown }, where: string, allowed: readonly string[], into: Record<string, Located>, inDefaults: boolean): string | null => {
    const key = keyOf(pair);
    const line = lineOf(pair.key as Node);
    if (key === "gate") {
      readGate(pair.value, `${where}.gate`, into);
      return key;
    }
    const spec = BY_YAML.get(key);
    if (spec && inDefaults && !spec.inDefaults) {
      problem(line, `${where}.${key}`, "cannot be set in defaults (set it per model)");
      return null;
    }
    if (!spec || !allowed.includes(key)) {
      if (key === "model") problem(line, `${where}.${key}`, "unknown key (a model entry names its model with repo:)");
      else {
        const camel = FIELDS.find((s) => s.path === key);
        const hint = camel ? yamlKey(camel.path) : didYouMean(key, allowed);
        problem(line, `${where}.${key}`, `unknown key${hint ? ` (did you mean ${hint}?)` : ""}`);
      }
      return null;
    }
    readValue(spec, pair.value, line, `${where}.${key}`, into);
    return key;
  };

  let topGate: Record<string, Located> | null = null;
  for (const pair of root.items) {
    const key = keyOf(pair);
    const line = lineOf(pair.key as Node);
    const value = pair.value as Node | null;
    if (key === "defaults") {
      if (value === null) continue;
      if (!isMap(value)) {
        problem(line, "defaults", "expected a mapping of settings");
        continue;
      }
      checkDuplicates(value, "defaults");
      for (const p of value.items) readSettings(p, "defaults", DEFAULT_KEYS, result.defaults, true);
    } else if (key === "gate") {
      topGate = {};
      readGate(value, "gate", topGate);
    } else if (key === "schedule") {
      const raw = rawOf(value);
      if (raw === null) continue;
      if (typeof raw !== "string") {
        problem(line, "schedule", `expected a cron expression string, got ${JSON.stringify(raw)}`);
        continue;
      }
      try {
        parseCron(raw);
        result.schedule = raw;
      } catch (err) {
        problem(lineOf(value, line), "schedule", err instanceof CronError ? `invalid cron expression: ${err.message}` : String(err));
      }
    } else if (key === "models") {
      if (value === null) continue;
      if (!isSeq(value)) {
        problem(line, "models", "expected a list of model entries");
        continue;
      }
      const seen = new Map<string, number>();
      value.items.forEach((item, index) => {
        const where = `models[${index}]`;
        const itemLine = lineOf(item as Node, line);
        if (!isMap(item)) {
          problem(itemLine, where, "expected a mapping with at least repo:");
          return;
        }
        checkDuplicates(item, where);
        const entry: ModelEntry = { repo: "", enabled: true, index, line: itemLine, settings: {} };
        for (const p of item.items) {
          const k = keyOf(p);
          const kLine = lineOf(p.key as Node, itemLine);
          if (k === "repo") {
            const r = rawOf(p.value);
            if (typeof r !== "string" || !r.trim()) problem(kLine, `${where}.repo`, "expected a repo id (owner/name) or a local directory");
            else if (!HF_REPO_RE.test(r) && !/^(\/|\.{1,2}\/|~)/.test(r)) problem(kLine, `${where}.repo`, `"${r}" is not a repo id (owner/name); local directories start with ./ or /`);
            else entry.repo = r;
          } else if (k === "enabled") {
            const r = rawOf(p.value);
            if (typeof r !== "boolean") problem(kLine, `${where}.enabled`, `expected true or false, got ${JSON.stringify(r)}`);
            else entry.enabled = r;
          } else readSettings(p, where, ENTRY_KEYS, entry.settings, false);
        }
        if (!item.items.some((p) => isScalar(p.key) && p.key.value === "repo")) problem(itemLine, where, "missing required key repo");
        if (entry.repo) {
          const prev = seen.get(entry.repo.toLowerCase());
          if (prev !== undefined) problem(itemLine, `${where}.repo`, `duplicate of models[${prev}] (${entry.repo})`);
          seen.set(entry.repo.toLowerCase(), index);
        }
        result.models.push(entry);
      });
    } else {
      const hint = didYouMean(key, TOP_KEYS);
      problem(line, key, `unknown top-level key${hint ? ` (did you mean ${hint}?)` : ` (allowed: ${TOP_KEYS.join(", ")})`}`);
    }
  }
  if (topGate) {
    for (const [path, v] of Object.entries(topGate)) {
      const inDefaults = result.defaults[path];
      if (inDefaults) problem(v.line, yamlKey(path), `also set in defaults.gate at line ${inDefaults.line}; keep one`);
      else result.defaults[path] = v;
    }
  }
  if (problems.length) throw new ConfigError(problems);
  return result;
}

/** Read and validate a models.yaml file; a missing file is a ConfigError. */
export function loadModelsFile(path: string): ModelsFile {
  const abs = resolve(path);
  if (!existsSync(abs)) throw new ConfigError(`${displayPath(abs)}: file not found`);
  return parseModelsFile(readFileSync(abs, "utf8"), abs, displayPath(abs));
}
