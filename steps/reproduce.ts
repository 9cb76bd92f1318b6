// The model card's "Reproduce": the command line that repeats a run, from anywhere. Contract:
//   - every setting that affects results (hashed in FIELDS) and differs from the default is a flag;
//   - no absolute local path: a local model or dataset file is named by its file name (the card says
//     it is local), a Hub model by its repo id and the commit that was pulled;
//   - the demo model is `realign demo`, whose own sizes (DEMO_SETTINGS) are then not repeated.
import { basename, resolve } from "node:path";
import { cliFlag, DEFAULTS, FIELDS, NEGATED_FLAGS, yamlKey, type Settings } from "./settings.ts";

/** The demo's sizes (cli/cli.ts `realign demo` applies them under the user's flags). */
// Evaluation on 64 prompts a class: on 32 the 95 % half-width of a refusal rate reaches 17 points and a
// single prompt decided the demo's gate (+10 points); validation on the default 32.
export const DEMO_SETTINGS = { nTrain: 40, nVal: 32, nEval: 64, maxNewTokens: 48 } as const;

export const DEMO_MODEL_DIR = resolve(import.meta.dir, "..", "demo", "organism-llama");

const get = (o: unknown, path: string): unknown => path.split(".").reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], o);

/** A dataset spec or prompt file as the card may show it: Hub specs and builtin as they are, local files by name. */
function portable(value: unknown): unknown {
  if (typeof value !== "string") return value;
  if (value === "builtin" || value === "auto" || value.startsWith("hf:")) return value;
  if (value.includes("/") || value.includes("\\")) return basename(value.split("#")[0]!) + (value.includes("#") ? `#${value.split("#").pop()}` : "");
  return value;
}

/** Settings that affect results and differ from the defaults (the demo's own sizes count as its defaults), with yaml keys. */
export function nonDefaultSettings(s: Settings, demo: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const base = demo ? { ...DEFAULTS, ...DEMO_SETTINGS } : DEFAULTS;
  for (const f of FIELDS) {
    if (!f.hashed || f.path === "model" || f.path === "revision") continue;
    const v = get(s, f.path);
    if (JSON.stringify(v) === JSON.stringify(get(base, f.path))) continue;
    out[yamlKey(f.path)] = portable(v);
  }
  return out;
}

const quote = (v: string) => (/^[\w@%+=:,./-]+$/.test(v) ? v : `'${v.replace(/'/g, `'\\''`)}'`);

/** The command that repeats the run: `realign <repo> --revision <commit> <flags>` or `realign demo <flags>`. */
export function reproduceCommand(s: Settings, source: { repo: string | null; commit: string | null }): { command: string; settings: Record<string, unknown> } {
  const demo = source.repo === null && resolve(s.model) === DEMO_MODEL_DIR;
  const settings = nonDefaultSettings(s, demo);
  const words: string[] = ["realign"];
  if (demo) words.push("demo");
  else if (source.repo) words.push(source.repo, ...(source.commit ? ["--revision", source.commit] : []));
  else words.push(`./${basename(resolve(s.model))}`);
  for (const f of FIELDS) {
    if (!(yamlKey(f.path) in settings)) continue;
    const v = settings[yamlKey(f.path)];
    if (typeof v === "boolean") words.push(v ? cliFlag(f.path) : (NEGATED_FLAGS[f.path] ?? `${cliFlag(f.path)}=false`));
    else if (v === null) continue; // a nullable setting back at "not set": the default does it
    // Negative numbers are attached with = (the parser would read "-1" as a flag).
    else words.push(typeof v === "number" && v < 0 ? `${cliFlag(f.path)}=${v}` : `${cliFlag(f.path)} ${quote(String(v))}`);
  }
  return { command: words.join(" "), settings };
}
