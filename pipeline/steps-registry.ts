// The real pipeline's steps, in run order.
import type { Settings } from "./config.ts";
import type { Step } from "./runner.ts";
import { pullStep } from "../steps/pull.ts";
import { elicitStep } from "../steps/elicit.ts";
import { extractStep } from "../steps/extract.ts";
import { injectStep } from "../steps/inject.ts";
import { validateStep } from "../steps/validate.ts";
import { publishStep } from "../steps/publish.ts";

/** Step names in run order (also used by `status` to list what a complete run has). */
export const STEP_NAMES = ["pull", "elicit", "extract", "inject", "validate", "publish"] as const;

export function getSteps(): Step<Settings>[] {
  return [pullStep, elicitStep, extractStep, injectStep, validateStep, publishStep];
}
