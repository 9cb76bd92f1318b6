// Loads the safety system prompt used to elicit the latent refusal behaviour (and for the
// "with system prompt" evaluation condition).
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { UsageError } from "../util/errors.ts";

/** A bad spec, file or option: a UsageError, so the CLI prints one clear message (exit 2). */
export class SystemPromptError extends UsageError {
  override name = "SystemPromptError";
}

/** The project's default safety prompt (system-prompts/default.md). */
export const DEFAULT_SYSTEM_PROMPT_PATH = resolve(import.meta.dir, "..", "system-prompts", "default.md");

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
