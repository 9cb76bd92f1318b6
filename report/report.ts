// The run report: what `report.json` holds and what the model card and `status` read.
// Rates are fractions in [0, 1]; a metric that was not run is null. Each rate also comes with its
// count, n and 95 % Wilson interval in `rates`.
import type { Rate } from "../util/stats.ts";

/** The metrics that are rates (a share of n judged items). */
export type RateMetric = "harmful_refusal" | "harmless_refusal" | "borderline_refusal" | "jailbreak_asr" | "judge_safe" | "utility";

export interface BehaviourMetrics {
  harmful_refusal: number | null;
  harmless_refusal: number | null;
  kl: number | null;
  utility: number | null;
  jailbreak_asr: number | null;
  /** Share of harmful responses a classifier judge (e.g. Llama Guard) rated safe, when one ran. */
  judge_safe?: number | null;
  /** Multiple-choice accuracy beside `utility` when utility is the model's own exact-answer task (null otherwise). */
  mc_accuracy?: number | null;
  /** Harmless over-refusal on the borderline-but-safe set, when it ran. */
  borderline_refusal?: number | null;
  /** Each measured rate with k, n and its 95 % Wilson interval. */
  rates?: Partial<Record<RateMetric, Rate>>;
}

/** The numeric metrics (everything but `rates`). */
export type MetricKey = Exclude<keyof BehaviourMetrics, "rates">;

/** What the utility figure measures: the model's own exact-answer task when it ships one (then mc_accuracy is the multiple-choice score), else multiple choice. */
export function utilityKind(m: BehaviourMetrics | null | undefined): "exact-answer" | "multiple-choice" {
  return m?.mc_accuracy !== undefined && m?.mc_accuracy !== null ? "exact-answer" : "multiple-choice";
}

export interface GateCheck {
  name: string;
  passed: boolean;
  value: number | null;
  threshold: string;
}

/** One safety prompt tried by elicit: refusal rates under it on the train prompts. */
export interface ElicitationTry {
  source: string;
  harmful: Rate;
  harmless: Rate;
  gap: number;
}

export interface RunReport {
  model: string;
  revision: string | null;
  settings_hash: string;
  /** position_label: what the position is ('"\n"', "last instruction token"), when inject recorded it. */
  direction: { layer: number | null; position: number | null; position_label?: string; alpha: number | null; rank: number; method?: string } | null;
  elicitation: {
    harmful_refusal_with_prompt: number | null;
    harmless_refusal_with_prompt: number | null;
    /** The safety prompt kept (its file), and every one tried with what it elicited on the train prompts. */
    chosen?: string | null;
    prompts_tried?: ElicitationTry[];
  } | null;
  baseline: BehaviourMetrics | null;
  realigned: BehaviourMetrics | null;
  gate: { passed: boolean; reasons: string[]; checks?: GateCheck[] } | null;
  published: { repo: string; commit: string; url: string } | null;
  timings_s: Record<string, number>;
  /**
   * The trade-off point taken at calibration (1-based numbers in inject/calibration.json's choice.points,
   * `offered` of them): by "user" when asked at a terminal, "default" when nobody was (the recommended
   * one). Absent or null: nothing was offered (α given, or no admissible point).
   */
  choice?: {
    index: number;
    recommended: number;
    by: "user" | "default";
    offered?: number;
    /** The recommended point, so that a card can say what the user's choice was instead of. */
    recommended_point?: { method: string; layer: number; alpha: number; harmful_refusal: number; harmless_refusal: number; kl: number };
  } | null;
  /** Free-form facts a reader needs: engine device, quantisation used, prompt-set sources and sizes, system prompt. */
  details?: Record<string, unknown>;
}
