// The release gate, one definition for calibration and validation.

export interface GateThresholds {
  /** Minimum rise in harmful-prompt refusal rate (realigned − original). */
  harmfulGain: number;
  /** Minimum absolute harmful refusal rate of the realigned model. */
  harmfulAbs: number;
  /** Maximum rise in harmless refusal (over-refusal). */
  overRefusal: number;
  /** Maximum mean KL divergence on harmless prompts. */
  kl: number;
  /** Maximum drop in the utility score. */
  utilityDrop: number;
}
