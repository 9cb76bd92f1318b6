// Loads the safety system prompt used to elicit the latent refusal behaviour (and for the
// "with system prompt" evaluation condition).
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { UsageError } from "../util/errors.ts";

/** A bad spec, file or option: a UsageError, so the CLI prints one clear message (exit 2). */
export class SystemPromptError extends UsageError {
  override name = "SystemPromptError";
}

/** The built-in safety prompts (system-prompts/*.md), which `--system-prompt auto` tries in turn. */
export const BUILTIN_SYSTEM_PROMPTS_DIR = resolve(import.meta.dir, "..", "system-prompts");

/** The project's default safety prompt (system-prompts/default.md). */
export const DEFAULT_SYSTEM_PROMPT_PATH = join(BUILTIN_SYSTEM_PROMPTS_DIR, "default.md");

/** The `systemPrompt` setting value that means "try every built-in prompt and keep the best". */
export const AUTO_SYSTEM_PROMPT = "auto";

/**
 * Does this `systemPrompt` setting mean auto? null (the historical default) or the bare word "auto"
 * (any case). The settings resolvers leave that word unresolved; a file named auto is `./auto`.
 */
export function isAutoSystemPrompt(spec: string | null): boolean {
  return spec === null || spec.trim().toLowerCase() === AUTO_SYSTEM_PROMPT;
}

/**
 * The prompt files a `systemPrompt` setting stands for: auto → every built-in prompt
 * (system-prompts/*.md, sorted by name, so default.md first); a directory → every *.md in it, sorted
 * by name; a file → just that file. Errors on a missing path or a directory without *.md files.
 */
export function systemPromptFiles(spec: string | null): string[] {
  const path = isAutoSystemPrompt(spec) ? BUILTIN_SYSTEM_PROMPTS_DIR : resolve(spec!);
  if (!existsSync(path)) throw new SystemPromptError(`${path}: system prompt file or directory not found`);
  if (!statSync(path).isDirectory()) return [path];
  const files = readdirSync(path)
    .filter((n) => n.toLowerCase().endsWith(".md") && statSync(join(path, n)).isFile())
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
    .map((n) => join(path, n));
  if (files.length === 0) throw new SystemPromptError(`${path}: the directory holds no *.md system prompts`);
  return files;
}

/**
 * Reads a system prompt file (null → the default), strips one leading HTML comment
 * (`<!-- … -->`, a note for humans that must not reach the model), trims it and replaces every
 * `{model}` with `modelName`. Errors on a missing file, an unclosed comment or an empty prompt.
 */
export function loadSystemPrompt(pathOrNull: string | null, modelName: string): { text: string; source: string } {
  const source = pathOrNull === null ? DEFAULT_SYSTEM_PROMPT_PATH : resolve(pathOrNull);
  if (!existsSync(source)) throw new SystemPromptError(`${source}: system prompt file not found`);
  if (modelName.trim() === "") throw new SystemPromptError(`${source}: model name for {model} is empty`);
  let text = readFileSync(source, "utf8").replace(/^\uFEFF/, "").trimStart();
  if (text.startsWith("<!--")) {
    const end = text.indexOf("-->");
    if (end < 0) throw new SystemPromptError(`${source}: leading HTML comment '<!--' is never closed with '-->'`);
    text = text.slice(end + 3);
  }
  text = text.trim();
  if (text === "") throw new SystemPromptError(`${source}: system prompt is empty (after removing the leading comment)`);
  // split/join rather than replace(): a model name containing "$&" must be inserted literally.
  return { text: text.split("{model}").join(modelName.trim()), source };
}
