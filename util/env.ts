// Environment knobs read as numbers or switches: unset or blank means "not set" (null); anything else must
// be a positive whole number (or 0 / 1), or the caller's usage error names the variable and the value as typed.

/** The positive whole number in `env[name]`, or null when unset or blank; `invalid(message)` builds the error otherwise. */
export function positiveIntFromEnv(env: Record<string, string | undefined>, name: string, unit: string, invalid: (message: string) => Error): number | null {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return null;
  const n = Number(raw.trim());
  if (!Number.isInteger(n) || n < 1) throw invalid(`${name} must be a positive whole number of ${unit}, got "${raw}"`);
  return n;
}

/** The switch in `env[name]`: true for 1, false for 0, null when unset or blank; `invalid(message)` builds the error otherwise. */
export function switchFromEnv(env: Record<string, string | undefined>, name: string, meaning: { off: string; on: string }, invalid: (message: string) => Error): boolean | null {
  const raw = env[name];
  if (raw === undefined || raw.trim() === "") return null;
  if (raw.trim() === "0" || raw.trim() === "1") return raw.trim() === "1";
  throw invalid(`${name} must be 0 (${meaning.off}) or 1 (${meaning.on}), got "${raw}"`);
}
