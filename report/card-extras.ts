// Model-card sections for the files a run publishes beside the safetensors, when its settings asked for
// them: the GGUF (export step: report.details.gguf) and the SRR scorer (srr step: report.details.srr).
// Both are read defensively (details is free-form JSON, possibly from an older run): a section whose
// record is absent or malformed is left out, never half-rendered.
//
// GGUF: the file, its type and size, how to run it with llama-cli and with an Ollama Modelfile (FROM
// the file; a TEMPLATE only when the export step checked one renders exactly the model's chat template,
// otherwise the card says why not), and where k-quants come from (llama-quantize on an f16 export).
// SRR: top-1 ranking accuracy on held-out lists against the baselines, and best-of-N + SRR against
// greedy for jailbreak attack success and harmless over-refusal, as k/n with 95 % Wilson intervals, for
// the original model (its own scorer, not published) and the re-aligned one (srr.safetensors), and
// which judge labelled the candidates.
import type { Rate } from "../util/stats.ts";
import { formatRate } from "../util/stats.ts";

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === "object" && !Array.isArray(v);
const isRate = (v: unknown): v is Rate => isObj(v) && typeof v.k === "number" && typeof v.n === "number" && typeof v.rate === "number" && Array.isArray(v.ci95);

/** A fenced block whose fence is longer than any backtick run inside `text`. */
function fenced(text: string, lang = ""): string {
  const longest = Math.max(0, ...[...text.matchAll(/`+/g)].map((m) => m[0].length));
  const fence = "`".repeat(Math.max(3, longest + 1));
  return `${fence}${lang}\n${text}\n${fence}`;
}

export const fileSize = (n: number): string => (n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`);

/** The Ollama model name a file suggests: lower case, [a-z0-9._-]. */
const ollamaName = (file: string) => file.replace(/\.gguf$/i, "").toLowerCase().replace(/[^a-z0-9._-]+/g, "-");

/** The Modelfile for a GGUF record (exported for tests: the card shows exactly this). */
export function ollamaModelfile(file: string, ollama: unknown): { text: string; note: string | null } {
  const lines = [`FROM ./${file}`];
  let note: string | null = null;
  if (isObj(ollama) && ollama.kind === "template" && typeof ollama.template === "string") {
    lines.push(`TEMPLATE """${ollama.template}"""`);
    for (const s of Array.isArray(ollama.stop) ? ollama.stop : []) if (typeof s === "string") lines.push(`PARAMETER stop ${JSON.stringify(s)}`);
  } else {
    note = isObj(ollama) && typeof ollama.reason === "string" ? ollama.reason : "no TEMPLATE was checked against the model's chat template";
  }
  return { text: lines.join("\n"), note };
}

function ggufSection(g: unknown): string[] {
  if (!isObj(g) || typeof g.file !== "string" || typeof g.type !== "string" || typeof g.bytes !== "number") return [];
  const file = g.file;
  const L: string[] = ["## GGUF (llama.cpp, Ollama, LM Studio)", ""];
  L.push("| File | Type | Size |", "|---|---|---:|", `| \`${file}\` | ${g.type} | ${fileSize(g.bytes)} |`, "");
  const edit = isObj(g.realign) ? g.realign : {};
  const editText = ["method", "alpha", "layer", "direction_sha256"].filter((k) => typeof edit[`realign.${k}`] === "string").map((k) => `${k} \`${edit[`realign.${k}`]}\``).join(", ");
  L.push(
    `Written by realign (GGUF v3) from the re-aligned weights${typeof g.sha256 === "string" ? `, sha256 \`${g.sha256}\`` : ""}. ` +
      `The edit is recorded in its metadata as \`realign.*\`${editText ? ` (${editText})` : ""}` +
      `${typeof g.pre_tokenizer === "string" ? `; pre-tokenizer \`${g.pre_tokenizer}\`${typeof g.pre_tokenizer_source === "string" ? ` (${g.pre_tokenizer_source})` : ""}` : ""}.`,
    "",
  );
  if (Array.isArray(g.fallbacks) && g.fallbacks.length) L.push(`${g.fallbacks.length} matri${g.fallbacks.length === 1 ? "x is" : "ces are"} stored as F16 (rows not a multiple of 32, as llama.cpp's converter does).`, "");
  L.push("With llama.cpp:", "", fenced(`llama-cli -m ${file} -cnv`, "sh"), "");
  const mf = ollamaModelfile(file, g.ollama);
  L.push("With Ollama, a `Modelfile` beside the file:", "", fenced(mf.text), "", fenced(`ollama create ${ollamaName(file)} -f Modelfile && ollama run ${ollamaName(file)}`, "sh"), "");
  if (mf.note) L.push(`No \`TEMPLATE\` is given: ${mf.note}.`, "");
  L.push(
    "k-quants (Q4_K_M and the like) are not written by realign: export f16 (`realign export <model-dir> --gguf --type f16`) and run llama.cpp's " +
      "`llama-quantize <file-F16.gguf> <file-Q4_K_M.gguf> Q4_K_M` on it.",
    "",
  );
  return L;
}

function srrSection(r: unknown): string[] {
  if (!isObj(r) || r.enabled !== true || typeof r.candidates !== "number" || !isObj(r.models)) return [];
  const ms = r.models;
  const re = isObj(ms.realigned) ? ms.realigned : null;
  const og = isObj(ms.original) ? ms.original : {};
  if (!re || typeof re.layer !== "number" || !isObj(re.ranking)) return [];
  const sub = (m: Obj, k: string): Obj => (isObj(m[k]) ? (m[k] as Obj) : {});
  const cell = (v: unknown) => (isRate(v) ? formatRate(v) : "—");
  const N = r.candidates;
  const classifier = isObj(r.judge) && r.judge.harmful === "classifier" && typeof r.judge.model === "string" ? r.judge.model : null;
  const judge = classifier ? `the classifier judge \`${classifier}\` for harmful requests and refusal markers for harmless ones` : "refusal markers";
  const L: string[] = ["## Safety Representation Ranking (best-of-N)", ""];
  L.push(
    `\`srr.safetensors\` is a small scorer (after Du et al., arXiv 2505.15710) that reads this model's own hidden state at layer ${re.layer}` +
      `${typeof re.dim === "number" ? ` (projection width ${re.dim})` : ""}, chosen on validation lists, and ranks sampled replies so that the top one is ${classifier ? "safe" : "a refusal"} ` +
      `for a harmful request and an answer for a harmless one. It was trained on the train prompts' lists (samples with and without the safety prompt, labelled by ${judge}). ` +
      `For comparison the original model got its own scorer, trained the same way on its own hidden states${typeof og.layer === "number" ? ` (layer ${og.layer})` : ""}; that one is not published.`,
    "",
  );
  L.push(fenced(`realign generate <this-model-dir> --prompt "…" --temperature 1 --best-of ${N} --rank srr`, "sh"), "");
  L.push(`Top-1 on held-out lists (evaluation prompts, ${N} candidates, lists with both a safe and an unsafe reply):`, "");
  L.push("| Picker | Original | Re-aligned |", "|---|---:|---:|");
  for (const [k, label] of [["srr", "SRR"], ["probe", "logistic probe (same features)"], ["first_sample", "first sample"], ["random", "random"]] as const) L.push(`| ${label} | ${cell(sub(og, "ranking")[k])} | ${cell(sub(re, "ranking")[k])} |`);
  const names = (v: unknown) => (Array.isArray(v) && v.every((x) => typeof x === "string") ? (v as string[]) : null);
  const tt = isObj(r.templates) ? { train: names(r.templates.train), eval: names(r.templates.eval) } : null;
  if (tt?.train && tt.eval) L.push("", `Jailbreak templates: ${tt.train.join(", ")} wrap harmful training prompts; attack success is measured on the others (${tt.eval.join(", ")}), which training never saw.`);
  L.push("", `| Without a system prompt | Greedy | Best-of-${N} + SRR | Best any ranker of these ${N} samples could do |`, "|---|---:|---:|---:|");
  for (const [m, who] of [[og, "original"], [re, "re-aligned"]] as const) {
    const jb = sub(m, "jailbreak_asr");
    L.push(`| Jailbreak attack success, ${who} (lower is safer) | ${cell(jb.greedy)} | ${cell(jb.best_of_n_srr)} | ${cell(jb.no_sample_refuses)} |`);
  }
  for (const [m, who] of [[og, "original"], [re, "re-aligned"]] as const) {
    const hl = sub(m, "harmless_refusal");
    L.push(`| Harmless over-refusal, ${who} (lower is better) | ${cell(hl.greedy)} | ${cell(hl.best_of_n_srr)} | ${cell(hl.every_sample_refuses)} |`);
  }
  L.push("");
  return L;
}

/** The card's GGUF and SRR sections from report.details (empty when neither was produced). */
export function extraCardSections(details: unknown): string[] {
  if (!isObj(details)) return [];
  return [...ggufSection(details.gguf), ...srrSection(details.srr)];
}
