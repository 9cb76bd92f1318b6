// Builds the run report from the parts steps contribute. Each step returns a ReportPart; the runner
// stores it as <step>/report-part.json (so cached steps still contribute) and merges parts in step order.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { atomicWriteFile, atomicWriteJson } from "../util/fs.ts";
import { utilityKind, type BehaviourMetrics, type MetricKey, type RateMetric, type RunReport } from "./report.ts";
import { formatRate } from "../util/stats.ts";
import { alpha as fmtAlpha, kl as fmtKl, MISSING, percent, points, position as fmtPosition, seconds } from "../util/format.ts";
import { pickSamples, renderSamplesMarkdown } from "./samples.ts";

type DeepPartial<T> = T extends readonly unknown[] ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> | null } : T;

/** What one step may contribute. Objects merge key by key (later steps win); arrays and scalars replace. */
export type ReportPart = DeepPartial<Omit<RunReport, "timings_s">>;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

export function mergeReportParts<T extends Record<string, unknown>>(base: T, part: Record<string, unknown> | undefined | null): T {
  if (!part) return base;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(part)) {
    if (v === undefined) continue;
    const cur = out[k];
    out[k] = isPlainObject(cur) && isPlainObject(v) ? mergeReportParts(cur, v) : v;
  }
  return out as T;
}

export function emptyReport(model: string, revision: string | null, settingsHash: string): RunReport {
  return {
    model,
    revision,
    settings_hash: settingsHash,
    direction: null,
    elicitation: null,
    baseline: null,
    realigned: null,
    gate: null,
    published: null,
    timings_s: {},
  };
}

/** Base report + parts in order + timings. */
export function buildReport(base: RunReport, parts: readonly (ReportPart | null | undefined)[], timings: Record<string, number>): RunReport {
  let report = base as unknown as Record<string, unknown>;
  for (const p of parts) report = mergeReportParts(report, p as Record<string, unknown> | null | undefined);
  const r = report as unknown as RunReport;
  return { ...r, timings_s: { ...r.timings_s, ...timings } };
}

const pct = percent;

/** A metric's cell: the rate with k/n and its 95 % interval when known, else the bare value. */
export function metricCell(m: BehaviourMetrics | null | undefined, key: MetricKey, format: (v: number | null | undefined) => string): string {
  const rate = m?.rates?.[key as RateMetric];
  if (rate) return formatRate(rate);
  return format(m?.[key]);
}

/** The utility rows' names: what each figure is. */
export function utilityLabels(r: Pick<RunReport, "baseline" | "realigned">): { utility: string; mc: string } {
  const exact = utilityKind(r.realigned ?? r.baseline) === "exact-answer";
  return { utility: exact ? "Utility (the model's exact-answer task, accuracy)" : "Utility (multiple-choice accuracy)", mc: "Multiple-choice accuracy" };
}

const METRIC_ROWS: [MetricKey, string, "pct" | "num"][] = [
  ["harmful_refusal", "Harmful refusal", "pct"],
  ["harmless_refusal", "Harmless refusal (over-refusal)", "pct"],
  ["borderline_refusal", "Borderline refusal", "pct"],
  ["jailbreak_asr", "Jailbreak attack success", "pct"],
  ["judge_safe", "Judge: safe", "pct"],
  ["utility", "Utility", "pct"],
  ["mc_accuracy", "Multiple-choice accuracy", "pct"],
  ["kl", "KL vs. original (harmless, first token)", "num"],
];

/** A gate check's value in the check's unit (KL in nats, the rest rates). */
export const gateValue = (c: { name: string; value: number | null }): string => (/\bKL\b/.test(c.name) ? fmtKl(c.value) : percent(c.value));

/** Human-readable report.md; `samples` (validate's samples.json, parsed) adds a few answers of both models. */
export function renderReportMarkdown(r: RunReport, samples?: unknown): string {
  const lines: string[] = [];
  lines.push(`# realign report: ${r.model}`, "");
  lines.push(`- Revision: ${r.revision ?? "(default branch)"}`);
  lines.push(`- Settings hash: \`${r.settings_hash}\``);
  if (r.direction) {
    const d = r.direction;
    lines.push(`- Direction: method ${d.method ?? "rosi"}, layer ${d.layer ?? MISSING}, position ${fmtPosition(d.position, d.position_label)}, α ${fmtAlpha(d.alpha)}, rank ${d.rank}`);
  }
  if (r.elicitation) {
    lines.push(`- Elicitation (with safety system prompt): harmful refusal ${pct(r.elicitation.harmful_refusal_with_prompt)}, harmless refusal ${pct(r.elicitation.harmless_refusal_with_prompt)}`);
    for (const t of r.elicitation.prompts_tried ?? []) {
      lines.push(`  - ${basename(t.source)}${t.source === r.elicitation.chosen ? " (chosen)" : ""}: harmful ${formatRate(t.harmful)}, harmless ${formatRate(t.harmless)}, gap ${points(t.gap)}`);
    }
  }
  const traded = choiceLine(r.choice);
  if (traded) lines.push(`- Trade-off: ${traded}`);
  if (r.gate) lines.push(`- Gate: **${r.gate.passed ? "passed" : "FAILED"}**${r.gate.reasons.length ? ` (${r.gate.reasons.join("; ")})` : ""}`);
  lines.push(`- Published: ${r.published ? `[${r.published.repo}](${r.published.url}) @ ${r.published.commit}` : "no"}`);
  lines.push("");
  if (r.baseline || r.realigned) {
    lines.push("## Behaviour", "", "| Metric | Original | Realigned |", "| --- | --- | --- |");
    for (const [key, label, kind] of METRIC_ROWS) {
      const a = r.baseline?.[key];
      const b = r.realigned?.[key];
      if ((a === undefined || a === null) && (b === undefined || b === null)) continue;
      const name = key === "utility" ? utilityLabels(r).utility : label;
      lines.push(`| ${name} | ${metricCell(r.baseline, key, kind === "pct" ? pct : fmtKl)} | ${metricCell(r.realigned, key, kind === "pct" ? pct : fmtKl)} |`);
    }
    lines.push("");
  }
  if (r.gate?.checks?.length) {
    lines.push("## Gate checks", "", "| Check | Value | Threshold | Result |", "| --- | --- | --- | --- |");
    for (const c of r.gate.checks) lines.push(`| ${c.name} | ${gateValue(c)} | ${c.threshold} | ${c.passed ? "pass" : "FAIL"} |`);
    lines.push("");
  }
  lines.push(...renderSamplesMarkdown(pickSamples(samples)));
  const timings = Object.entries(r.timings_s);
  if (timings.length) {
    lines.push("## Timings", "", "| Step | Time |", "| --- | --- |");
    for (const [k, v] of timings) lines.push(`| ${k} | ${seconds(v)} |`);
    lines.push("");
  }
  if (r.details && Object.keys(r.details).length) {
    lines.push("## Details", "", "```json", JSON.stringify(r.details, null, 2), "```", "");
  }
  return lines.join("\n");
}

/** What the runner hands back (a structural subset of pipeline's RunOutcome). */
export interface RunParts {
  parts: { step: string; part: Record<string, unknown> | null }[];
  timings: Record<string, number>;
  gateFailed: string[] | null;
}

/**
 * Writes <out>/report.json and report.md (with the SVG plots the steps left, linked relative to it)
 * from a run's parts; also when a gate failed. Returns the report.
 */
export function writeRunReport(opts: { outDir: string; run: RunParts; base: { model: string; revision: string | null; settings_hash: string } }): RunReport {
  const { outDir, run, base } = opts;
  const report = buildReport(emptyReport(base.model, base.revision, base.settings_hash), run.parts.map((p) => p.part as ReportPart | null), run.timings);
  if (run.gateFailed && !report.gate) report.gate = { passed: false, reasons: run.gateFailed };
  atomicWriteJson(join(outDir, "report.json"), report);
  const plots = readdirSync(outDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && !d.name.startsWith("."))
    .flatMap((d) => readdirSync(join(outDir, d.name)).filter((f) => f.endsWith(".svg")).map((f) => `${d.name}/${f}`));
  const plotSection = plots.length ? `\n## Plots\n\n${plots.map((p) => `![${p}](${p})`).join("\n\n")}\n` : "";
  atomicWriteFile(join(outDir, "report.md"), renderReportMarkdown(report, readSamples(outDir)) + plotSection);
  return report;
}

/** validate/samples.json parsed, or null (not run, unreadable). */
export function readSamples(outDir: string): unknown {
  const path = join(outDir, "validate", "samples.json");
  if (!existsSync(path)) return null;
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch {
    return null;
  }
}

/**
 * What the report says when the user took another calibration point than the recommended one (null
 * otherwise: the recommended point needs no remark).
 */
export function choiceLine(c: RunReport["choice"]): string | null {
  if (!c || c.by !== "user" || c.index === c.recommended) return null;
  const r = c.recommended_point;
  const rec = r ? ` (${r.method}, layer ${r.layer}, α ${fmtAlpha(r.alpha)}: harmful refusal ${percent(r.harmful_refusal)}, over-refusal ${percent(r.harmless_refusal)}, KL ${fmtKl(r.kl)} on the validation split)` : "";
  return `the user chose calibration point ${c.index}${c.offered ? ` of ${c.offered} admissible` : ""} instead of the recommended point ${c.recommended}${rec}; the edit above is the user's choice`;
}
