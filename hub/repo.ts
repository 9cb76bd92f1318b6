// Repo ids, local-vs-Hub model arguments and the token: one grammar and one token policy.
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";

export const HF_REPO_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;

/** True when the model argument is meant as a local directory rather than a Hub repo id. */
export function isLocalModel(model: string, cwd = process.cwd()): boolean {
  if (isAbsolute(model) || /^\.{1,2}([\\/]|$)/.test(model) || model.startsWith("~")) return true;
  return existsSync(resolve(cwd, model)) || !HF_REPO_RE.test(model);
}

/** HF token from --token, HF_TOKEN, or the huggingface-cli token file; never part of settings. */
export function resolveToken(cliToken: string | null | undefined, env: Record<string, string | undefined>): string | null {
  if (cliToken) return cliToken;
  if (env.HF_TOKEN) return env.HF_TOKEN;
  if (env.HUGGING_FACE_HUB_TOKEN) return env.HUGGING_FACE_HUB_TOKEN;
  const file = env.HF_TOKEN_PATH ?? join(env.HF_HOME ?? join(homedir(), ".cache", "huggingface"), "token");
  try {
    const t = readFileSync(file, "utf8").trim();
    return t || null;
  } catch {
    return null;
  }
}
