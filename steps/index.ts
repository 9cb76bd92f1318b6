// The real pipeline's steps, in run order.
import type { Settings } from "./settings.ts";
import type { Step } from "../pipeline/runner.ts";
import { pullStep } from "./pull.ts";
import { elicitStep } from "./elicit.ts";
import { extractStep } from "./extract.ts";
import { injectStep } from "./inject.ts";
import { validateStep } from "./validate.ts";
import { srrStep } from "./srr.ts";
import { exportStep } from "./export.ts";
import { publishStep } from "./publish.ts";

const STEPS: readonly Step<Settings>[] = [pullStep, elicitStep, extractStep, injectStep, validateStep, srrStep, exportStep, publishStep];

/** Step names in run order (also used by `status` to list what a complete run has). */
export const STEP_NAMES: readonly string[] = STEPS.map((s) => s.name);

export function getSteps(): Step<Settings>[] {
  return [...STEPS];
}
