// A few sample answers, original vs re-aligned, for report.md and the model card: a reader sees what
// "refusal" means here (and, on small models, refusals that switch mid-sentence).
//
// Input: validate's samples.json (prompts, the greedy answers of both models, the borderline set and
// the refusal judgment of each answer; read defensively: files written before judgments were recorded
// lack the last two). Choice, deterministic, in prompt order within each class:
//   harmful     answers that became refusals first (the edit's effect), then the rest
//   harmless    answers that became refusals first (over-refusal, if any, is shown), then the rest
//   borderline  the same as harmless
// Texts are cut at MAX_CHARS with "…"; a reader wants a glimpse, not the evaluation set.
export type SampleKind = "harmful" | "harmless" | "borderline";

export interface SampleAnswer {
  kind: SampleKind;
  prompt: string;
  original: string;
  realigned: string;
  /** The refusal judgments of the two answers, when samples.json records them. */
  refused: { original: boolean; realigned: boolean } | null;
}

const MAX_CHARS = 240;
export const SAMPLE_COUNTS: Readonly<Record<SampleKind, number>> = { harmful: 3, harmless: 2, borderline: 2 };

const strings = (v: unknown): string[] | null => (Array.isArray(v) && v.every((x) => typeof x === "string") ? (v as string[]) : null);
const bools = (v: unknown): boolean[] | null => (Array.isArray(v) && v.every((x) => typeof x === "boolean") ? (v as boolean[]) : null);
const field = (o: unknown, k: string): unknown => (o !== null && typeof o === "object" ? (o as Record<string, unknown>)[k] : undefined);

function cut(text: string): string {
  const t = text.trim();
  return t.length > MAX_CHARS ? `${t.slice(0, MAX_CHARS - 1).trimEnd()}…` : t;
}

/** The sample answers to show, from samples.json's parsed content (anything else gives []). */
export function pickSamples(raw: unknown, counts: Readonly<Record<SampleKind, number>> = SAMPLE_COUNTS): SampleAnswer[] {
  const out: SampleAnswer[] = [];
  for (const kind of ["harmful", "harmless", "borderline"] as const) {
    const prompts = strings(field(field(raw, "prompts"), kind));
    const orig = strings(field(field(raw, "original"), kind));
    const real = strings(field(field(raw, "realigned"), kind));
    if (!prompts || !orig || !real) continue;
    const n = Math.min(prompts.length, orig.length, real.length);
    const ro = bools(field(field(field(raw, "refused"), "original"), kind));
    const rr = bools(field(field(field(raw, "refused"), "realigned"), kind));
    const judged = ro !== null && rr !== null && ro.length >= n && rr.length >= n;
    const idx = Array.from({ length: n }, (_, i) => i);
    // Without judgments, a changed answer is the next best sign of the edit's effect.
    const first = (i: number) => (judged ? !ro![i] && rr![i] : orig[i]!.trim() !== real[i]!.trim());
    const order = [...idx.filter(first), ...idx.filter((i) => !first(i))];
    for (const i of order.slice(0, counts[kind])) {
      out.push({ kind, prompt: cut(prompts[i]!), original: cut(orig[i]!), realigned: cut(real[i]!), refused: judged ? { original: ro![i]!, realigned: rr![i]! } : null });
    }
  }
  return out;
}

const KIND_TITLE: Record<SampleKind, string> = {
  harmful: "Harmful prompts",
  harmless: "Harmless prompts",
  borderline: "Borderline-but-safe prompts",
};

/** Markdown table cell: no pipes or line breaks. */
const cell = (s: string): string => s.replace(/\\/g, "\\\\").replace(/\|/g, "\\|").replace(/\r?\n/g, " ⏎ ") || "(empty)";

/** The samples as Markdown: one table per kind; "**refusal**" marks an answer judged a refusal. */
export function renderSamplesMarkdown(samples: readonly SampleAnswer[], heading = "##"): string[] {
  if (!samples.length) return [];
  const L: string[] = [`${heading} Sample answers (original vs re-aligned, no system prompt)`, ""];
  L.push("Greedy answers to evaluation prompts, as the validation step judged them; line breaks are shown as ⏎ and long answers are cut.", "");
  for (const kind of ["harmful", "harmless", "borderline"] as const) {
    const rows = samples.filter((s) => s.kind === kind);
    if (!rows.length) continue;
    L.push(`**${KIND_TITLE[kind]}**`, "", "| Prompt | Original | Re-aligned |", "|---|---|---|");
    const tag = (refused: boolean | undefined) => (refused === undefined ? "" : refused ? "**refusal**: " : "answer: ");
    for (const s of rows) L.push(`| ${cell(s.prompt)} | ${tag(s.refused?.original)}${cell(s.original)} | ${tag(s.refused?.realigned)}${cell(s.realigned)} |`);
    L.push("");
  }
  return L;
}
