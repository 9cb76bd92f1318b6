// The real pipeline's steps, in run order.
import type { Settings } from "./config.ts";
import type { Step } from "./runner.ts";
import { pullStep } from "../steps/pull.ts";
import { elicitStep } from "../steps/elicit.ts";
import { extractStep } from "../steps/extract.ts";
import { injectStep } from "../steps/inject.ts";
import { validateStep } from "../steps/validate.ts";
import { publishStep } from "../steps/publish.ts";

const STEPS: readonly Step<Settings>[] = [pullStep, elicitStep, extractStep, injectStep, validateStep, publishStep];

/** Step names in run order (also used by `status` to list what a complete run has). */
export const STEP_NAMES: readonly string[] = STEPS.map((s) => s.name);

export function getSteps(): Step<Settings>[] {
  return [...STEPS];
}
