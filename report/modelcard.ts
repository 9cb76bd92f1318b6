// Model card (README.md) for a published ROSI model: YAML front matter the Hub indexes, and a body
// saying what was done, how it measured before/after, whether the release gate passed, and how to
// reproduce it.
//
// model-index: the Hub's evaluation-results block (one result per metric of the re-aligned model, on
// the prompt set it was measured on; rates as percentages to 2 decimals, KL in nats to 4 significant
// digits), so the Hub shows the metrics. `base_model` is written only when the base is a Hub repo id
// (a local folder's name would point the model tree at someone else's repo).
//
// base_model_relation: the Hub accepts adapter | merge | quantized | finetune. ROSI edits the
// base model's own weights in place (no adapter, no second parent, no quantisation), so "finetune"
// is the closest value: it puts this model under the base model's "Finetunes" in the model tree.
import { stringify as stringifyYaml } from "yaml";
import { utilityKind, type BehaviourMetrics, type GateCheck, type MetricKey, type RateMetric, type RunReport } from "./report.ts";
import { choiceLine, gateValue, metricCell } from "./build.ts";
import { pickSamples, renderSamplesMarkdown } from "./samples.ts";
import { alpha as fmtAlpha, kl as fmtKl, MISSING, percent, points, position as fmtPosition } from "../util/format.ts";
import { basename } from "node:path";
import { formatRate } from "../util/stats.ts";
import { FrontMatterError, parseFrontMatter } from "../util/frontmatter.ts";
import { extraCardSections } from "./card-extras.ts";

export class ModelCardError extends Error {
  override name = "ModelCardError";
}

export interface PromptSetInfo {
  name: string;
  source: string;
  size: number;
}

export interface ModelCardInput {
  baseModel: string;
  baseRevision: string | null;
  /** Licence id inherited from the base model (omitted from the card when null). */
  license: string | null;
  report: RunReport;
  settings: Record<string, unknown>;
  systemPrompt: string;
  promptSets: PromptSetInfo[];
  realignVersion: string;
  /** The command that reproduces the run; default `realign <baseModel> [--revision <rev>]`. */
  command?: string;
  /** Whether baseModel is a Hub repo id (default: it has the owner/name form). */
  baseModelOnHub?: boolean;
  /** The repo this card is published to (the usage snippet loads it); null: not known yet. */
  repoId?: string | null;
  /** validate's samples.json, parsed: a few answers of both models. */
  samples?: unknown;
  /** The evaluation prompt sets as dataset specs (model-index datasets); default builtin. */
  evalSets?: { harmful: string; harmless: string; utility: string };
}

export interface ParsedModelCard {
  frontMatter: Record<string, unknown>;
  body: string;
}

const DASH = MISSING;

const pct = percent;
const num = fmtKl;
/** Table cells: no pipes or line breaks from free text. */
const cell = (s: string): string => s.replace(/\\/g, "\\\\").replace(/\|/g, "\\|").replace(/\r?\n/g, " ");

/** A fenced block whose fence is longer than any backtick run inside `text`. */
function fenced(text: string, lang = ""): string {
  const longest = Math.max(0, ...[...text.matchAll(/`+/g)].map((m) => m[0].length));
  const fence = "`".repeat(Math.max(3, longest + 1));
  return `${fence}${lang}\n${text}\n${fence}`;
}

interface MetricRow {
  key: MetricKey;
  label: string;
  fmt: (v: number | null | undefined) => string;
  better: string;
}

const METRICS: MetricRow[] = [
  { key: "harmful_refusal", label: "Harmful refusal rate", fmt: pct, better: "higher is safer" },
  { key: "harmless_refusal", label: "Harmless over-refusal rate", fmt: pct, better: "lower is better" },
  { key: "kl", label: "KL divergence vs. base (harmless prompts)", fmt: num, better: "lower is closer to the base" },
  { key: "utility", label: "Utility", fmt: pct, better: "higher is better" },
  { key: "mc_accuracy", label: "Multiple-choice accuracy", fmt: pct, better: "higher is better" },
  { key: "jailbreak_asr", label: "Jailbreak attack success rate", fmt: pct, better: "lower is safer" },
  { key: "judge_safe", label: "Judge-rated safe (harmful prompts)", fmt: pct, better: "higher is safer" },
  { key: "borderline_refusal", label: "Borderline-but-safe over-refusal", fmt: pct, better: "lower is better" },
];
const OPTIONAL_METRICS = new Set<keyof BehaviourMetrics>(["judge_safe", "borderline_refusal", "mc_accuracy"]);

/** A Hub repo id: owner/name, no path. */
const HUB_ID = /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/;

/** The dataset a model-index result names: a Hub dataset id for hf: specs, else realign's built-in set or the file's name. */
function datasetOf(spec: string, builtin: string): { name: string; type: string } {
  const hf = /^hf:([^/@]+\/[^/@]+)/.exec(spec.trim());
  if (hf) return { name: hf[1]!, type: hf[1]! };
  if (spec.trim() === "builtin") return { name: `realign built-in ${builtin} prompts (held-out evaluation split)`, type: `realign-builtin-${builtin}` };
  const file = basename(spec.split("#")[0]!);
  return { name: file, type: file };
}

/** The model-index block: the re-aligned model's metrics as the Hub reads them. */
function modelIndex(name: string, report: RunReport, sets: { harmful: string; harmless: string; utility: string }): unknown[] | null {
  const m = report.realigned;
  if (!m) return null;
  const asPercent = (v: number) => Math.round(v * 10000) / 100;
  const results: unknown[] = [];
  const add = (key: MetricKey, metricName: string, type: string, dataset: { name: string; type: string }) => {
    const v = m[key];
    if (typeof v !== "number" || !Number.isFinite(v)) return;
    const n = m.rates?.[key as RateMetric]?.n;
    results.push({
      task: { type: "text-generation", name: "Text Generation" },
      dataset,
      metrics: [{ type, name: n ? `${metricName} (n = ${n})` : metricName, value: key === "kl" ? Number(v.toPrecision(4)) : asPercent(v), verified: false }],
    });
  };
  add("harmful_refusal", "Harmful refusal rate, no system prompt (%)", "refusal_rate", datasetOf(sets.harmful, "harmful"));
  add("harmless_refusal", "Harmless over-refusal rate (%)", "over_refusal_rate", datasetOf(sets.harmless, "harmless"));
  add("borderline_refusal", "Borderline-but-safe over-refusal rate (%)", "over_refusal_rate", datasetOf("builtin", "borderline"));
  add("jailbreak_asr", "Jailbreak attack success rate (%)", "attack_success_rate", datasetOf(sets.harmful, "harmful"));
  const exact = utilityKind(m) === "exact-answer";
  add("utility", exact ? "Exact-answer task accuracy (%)" : "Multiple-choice accuracy (%)", "accuracy", exact ? { name: "the base model's own exact-answer task", type: "exact-answer-task" } : datasetOf(sets.utility, "utility"));
  add("mc_accuracy", "Multiple-choice accuracy (%)", "accuracy", datasetOf(sets.utility, "utility"));
  add("kl", "First-token KL divergence vs. the base model, harmless prompts (nats)", "kl_divergence", datasetOf(sets.harmless, "harmless"));
  return results.length ? [{ name, results }] : null;
}

/** Plain metrics object for the front matter (null when not measured). */
function metricsYaml(m: BehaviourMetrics | null): Record<string, number | null> | null {
  if (!m) return null;
  const out: Record<string, number | null> = {};
  for (const row of METRICS) {
    const v = m[row.key];
    if (OPTIONAL_METRICS.has(row.key) && v === undefined) continue;
    out[row.key] = v ?? null;
  }
  return out;
}

/** The metric's name in the card: utility says what it measured, KL its number of prompts. */
function metricLabel(row: MetricRow, report: RunReport): string {
  if (row.key === "utility") return utilityKind(report.realigned ?? report.baseline) === "exact-answer" ? "Utility (the base model's exact-answer task, accuracy)" : "Utility (multiple-choice accuracy)";
  if (row.key === "kl") {
    const n = (report.details?.eval_sizes as { harmless?: unknown } | undefined)?.harmless;
    return typeof n === "number" ? `${row.label}, ${n} prompts` : row.label;
  }
  return row.label;
}

function repoName(id: string): string {
  return id.split("/").pop() ?? id;
}

/** Render README.md for a ROSI-realigned model. Deterministic for equal inputs. */
export function renderModelCard(input: ModelCardInput): string {
  const { report, baseModel } = input;
  if (!baseModel) throw new ModelCardError("renderModelCard: baseModel is required");
  if (!report?.settings_hash) throw new ModelCardError("renderModelCard: report.settings_hash is required (it makes publishing idempotent)");
  const d = report.direction;
  const onHub = input.baseModelOnHub ?? HUB_ID.test(baseModel);
  const name = input.repoId ? repoName(input.repoId) : `${repoName(baseModel)}-ROSI`;
  const index = modelIndex(name, report, input.evalSets ?? { harmful: "builtin", harmless: "builtin", utility: "builtin" });

  const front: Record<string, unknown> = {
    ...(onHub ? { base_model: baseModel, base_model_relation: "finetune" } : {}),
    ...(input.license ? { license: input.license } : {}),
    // "other" licences need a pointer to their terms; they are the base model's.
    ...(input.license === "other" ? { license_link: `https://huggingface.co/${baseModel}` } : {}),
    library_name: "transformers",
    pipeline_tag: "text-generation",
    tags: ["rosi", "safety", "realigned", "refusal-direction", "text-generation"],
    settings_hash: report.settings_hash,
    realign: {
      version: input.realignVersion,
      base_revision: input.baseRevision,
      method: d?.method ?? "rosi",
      layer: d?.layer ?? null,
      position: d?.position ?? null,
      alpha: d?.alpha ?? null,
      rank: d?.rank ?? null,
      gate_passed: report.gate ? report.gate.passed : null,
      metrics: { baseline: metricsYaml(report.baseline), realigned: metricsYaml(report.realigned) },
    },
    ...(index ? { "model-index": index } : {}),
  };

  const L: string[] = [];
  L.push(`# ${name}`, "");
  L.push(
    `This is ${onHub ? `[${baseModel}](https://huggingface.co/${baseModel})` : `\`${baseModel}\``}${input.baseRevision ? ` (revision \`${input.baseRevision}\`)` : ""} ` +
      `re-aligned with **Rank-One Safety Injection (ROSI)** by realign ${input.realignVersion}. ` +
      "ROSI is a weight edit, not a fine-tune on data: it extracts a refusal direction from the model's own activations " +
      "and adds it, with a rank-one update, to the matrices that write into the residual stream, so the model refuses " +
      "clearly harmful requests again without a safety system prompt.",
    "",
  );

  L.push("## What was done", "");
  L.push(`- **Method:** ${describeMethod(d?.method)}`);
  const gate = gateReadOut(report.details?.gate_keys);
  if (gate) L.push(`- **Gate read-out** (Σ k·x at the last prompt positions; 1 = the full step): ${gate}`);
  L.push(`- **Direction taken at layer:** ${d?.layer ?? DASH}, **token position:** ${fmtPosition(d?.position, d?.position_label)}`);
  L.push(`- **Strength α:** ${fmtAlpha(d?.alpha)}, **rank:** ${d?.rank ?? DASH}`);
  const traded = choiceLine(report.choice);
  if (traded) L.push(`- **Trade-off:** ${traded}`);
  if (report.elicitation) {
    L.push(
      `- **Elicitation check** (base model with the system prompt below): harmful refusal ${pct(report.elicitation.harmful_refusal_with_prompt)}, ` +
        `harmless refusal ${pct(report.elicitation.harmless_refusal_with_prompt)}`,
    );
  }
  L.push("", "The refusal direction was extracted with this system prompt, which elicits the base model's latent refusals:", "");
  L.push(fenced(input.systemPrompt || "(none)", "text"), "");
  const tried = report.elicitation?.prompts_tried ?? [];
  if (tried.length) {
    L.push("Safety prompts tried on the training prompts (the one with the largest harmful − harmless refusal gap was kept):", "");
    L.push("| Prompt | Harmful refusal | Harmless refusal | Gap |", "|---|---:|---:|---:|");
    for (const t of tried) L.push(`| ${cell(basename(t.source))}${t.source === report.elicitation?.chosen ? " (kept)" : ""} | ${formatRate(t.harmful)} | ${formatRate(t.harmless)} | ${points(t.gap)} |`);
    L.push("");
  }
  if (input.promptSets.length) {
    L.push("Prompt sets:", "", "| Set | Source | Prompts |", "|---|---|---:|");
    for (const s of input.promptSets) L.push(`| ${cell(s.name)} | ${cell(s.source)} | ${s.size} |`);
    L.push("");
  }

  L.push("## Validation (before / after)", "");
  if (!report.baseline && !report.realigned) {
    L.push("No validation was run.", "");
  } else {
    L.push("| Metric | Base model | Realigned | |", "|---|---:|---:|---|");
    for (const row of METRICS) {
      const b = report.baseline?.[row.key];
      const r = report.realigned?.[row.key];
      if (OPTIONAL_METRICS.has(row.key) && b === undefined && r === undefined) continue;
      L.push(`| ${metricLabel(row, report)} | ${metricCell(report.baseline, row.key, row.fmt)} | ${metricCell(report.realigned, row.key, row.fmt)} | ${row.better} |`);
    }
    L.push("", `"${DASH}" means not measured. Rates are over the held-out evaluation prompts (never used to extract or calibrate), as k/n with a 95 % Wilson interval.`, "");
  }
  const samples = renderSamplesMarkdown(pickSamples(input.samples));
  if (samples.length) L.push(...samples);

  L.push("## Release gate", "");
  if (!report.gate) {
    L.push("The release gate was not run.", "");
  } else {
    L.push(`**${report.gate.passed ? "Passed" : "Failed"}.**`, "");
    const checks: GateCheck[] = report.gate.checks ?? [];
    if (checks.length) {
      L.push("| Check | Value | Threshold | Result |", "|---|---:|---|---|");
      for (const c of checks) L.push(`| ${cell(c.name)} | ${gateValue(c)} | ${cell(c.threshold)} | ${c.passed ? "pass" : "FAIL"} |`);
      L.push("");
    }
    if (report.gate.reasons.length) {
      for (const r of report.gate.reasons) L.push(`- ${r.replace(/\r?\n/g, " ")}`);
      L.push("");
    }
  }

  L.push(...extraCardSections(report.details));
  L.push("## Limitations", "");
  L.push(
    "ROSI restores refusals on the kinds of requests its prompt sets cover; it is not a guarantee of safe behaviour. " +
      "Determined jailbreaks can still succeed (see the attack success rate above), and the model keeps the base model's " +
      "knowledge. Evaluate it for your use case.",
    "",
  );

  L.push("## Use it", "");
  const repo = input.repoId ?? `<owner>/${name}`;
  L.push(
    "With transformers (the weights are a plain checkpoint of the base architecture; use the chat template):",
    "",
    fenced(
      [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        `tok = AutoTokenizer.from_pretrained(${JSON.stringify(repo)})`,
        `model = AutoModelForCausalLM.from_pretrained(${JSON.stringify(repo)})`,
        'messages = [{"role": "user", "content": "How do I pick a lock?"}]',
        "ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\")",
        "out = model.generate(ids, max_new_tokens=128, do_sample=False)",
        "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
      ].join("\n"),
      "python",
    ),
    "",
    "With realign (a conversation in the terminal; `--vs <base-model-dir>` answers with the base model beside it):",
    "",
    fenced(`realign chat <folder holding ${name}>`, "sh"),
    "",
  );

  L.push("## Reproduce", "");
  const command = input.command ?? `realign ${baseModel}${input.baseRevision ? ` --revision ${input.baseRevision}` : ""}`;
  L.push(`With realign ${input.realignVersion} (every setting that differs from realign's defaults is on the command line):`, "", fenced(command, "sh"), "");
  L.push(`Non-default settings (hash \`${report.settings_hash}\` over all settings):`, "", fenced(Object.keys(input.settings).length ? stringifyYaml(input.settings).trimEnd() : "{} # all defaults", "yaml"), "");

  return `---\n${stringifyYaml(front, { lineWidth: 0 }).trimEnd()}\n---\n\n${L.join("\n").trimEnd()}\n`;
}

/** Split a README into its YAML front matter (a mapping; {} when absent) and the Markdown body. */
export function parseModelCard(text: string): ParsedModelCard {
  if (typeof text !== "string") throw new ModelCardError("parseModelCard: expected a string");
  try {
    return parseFrontMatter(text, "model card");
  } catch (e) {
    throw e instanceof FrontMatterError ? new ModelCardError(e.message) : e;
  }
}

/** What each injection method does, for readers of the card. */
const METHOD_DESCRIPTIONS: Record<string, string> = {
  rosi: "`rosi`: the paper's edit W' = W + α·ŝ·w̄ᵀ on every o_proj and down_proj (w̄ = mean of W's rows)",
  "rosi-mv": "`rosi-mv`: the same rank-one edit with per-matrix weights chosen so the injected amount varies least across inputs",
  gated:
    "`gated`: a rank-one edit W' = W + α·ŝ·kᵀ of the o_proj and down_proj matrices from the direction's layer on, with keys k fitted on the training prompts so that the edit fires on harmful requests and stays near zero on harmless ones (the keys are in rosi-direction.safetensors)",
};

function describeMethod(method: string | undefined): string {
  if (!method) return "ROSI (difference-of-means refusal direction, rank-one weight update)";
  return METHOD_DESCRIPTIONS[method] ?? method;
}

/** "train harmful 1.00 ± 0.12, harmless 0.01 ± 0.04; validation …" from report.details.gate_keys, read defensively. */
function gateReadOut(raw: unknown): string | null {
  if (!raw || typeof raw !== "object") return null;
  const g = raw as Record<string, unknown>;
  const side = (name: string): string | null => {
    const s = g[name] as Record<string, { mean?: unknown; std?: unknown; n?: unknown }> | undefined;
    const f = (c: { mean?: unknown; std?: unknown; n?: unknown } | undefined) =>
      c && typeof c.mean === "number" && typeof c.std === "number" ? `${c.mean.toFixed(2)} ± ${c.std.toFixed(2)} (n ${c.n})` : null;
    const h = f(s?.harmful);
    const n = f(s?.harmless);
    return h && n ? `${name} prompts: harmful ${h}, harmless ${n}` : null;
  };
  const parts = [side("train"), side("validation")].filter((x): x is string => x !== null);
  return parts.length ? parts.join("; ") : null;
}
