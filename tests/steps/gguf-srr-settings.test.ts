// The gguf and srr settings (issues 15, 16) in the settings table: models.yaml keys, REALIGN_* names and
// CLI values resolve with the usual precedence; defaults keep runs fast (no GGUF, no SRR); a k-quant or
// unknown type is refused naming the accepted ones; each setting is an input of its own step only, so
// changing it re-runs that step and publish (which depends on it), nothing upstream.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveSettings } from "../../cli/settings.ts";
import { parseModelsFile } from "../../cli/models-file.ts";
import { DEFAULTS, settingsHash, type Settings } from "../../steps/settings.ts";
import { getSteps } from "../../steps/index.ts";
import { stepHash } from "../../pipeline/runner.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-gguf-settings-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

/** Every step's hash for these settings, in run order (dependants see their upstream hashes). */
function hashes(s: Settings): Record<string, string> {
  const h: Record<string, string> = {};
  for (const step of getSteps()) h[step.name] = stepHash(step, s, h);
  return h;
}
const changed = (a: Record<string, string>, b: Record<string, string>) => Object.keys(a).filter((k) => a[k] !== b[k]);

describe("gguf and srr settings", () => {
  test("defaults: no GGUF, no SRR, 8 candidates", () => {
    expect([DEFAULTS.gguf, DEFAULTS.srr, DEFAULTS.srrCandidates]).toEqual(["none", false, 8]);
  });

  test("models.yaml < REALIGN_* < CLI, with yaml keys gguf, srr, srr_candidates", () => {
    const file = parseModelsFile("models:\n  - repo: org/m\n    gguf: q8_0\n    srr: true\n    srr_candidates: 4\n", join(TMP, "models.yaml"), "models.yaml");
    const yaml = resolveSettings({ repo: "org/m", env: {}, modelsYaml: file }).settings;
    expect([yaml.gguf, yaml.srr, yaml.srrCandidates]).toEqual(["q8_0", true, 4]);
    const env = resolveSettings({ repo: "org/m", env: { REALIGN_GGUF: "f16", REALIGN_SRR: "false" }, modelsYaml: file });
    expect([env.settings.gguf, env.settings.srr]).toEqual(["f16", false]);
    expect(env.sources.gguf).toBe("env REALIGN_GGUF");
    const cli = resolveSettings({ repo: "org/m", env: { REALIGN_GGUF: "f16" }, cli: { gguf: "bf16" }, modelsYaml: file });
    expect(cli.settings.gguf).toBe("bf16");
  });

  test("a k-quant or unknown type is refused, naming the accepted types", () => {
    expect(() => resolveSettings({ repo: "org/m", env: {}, cli: { gguf: "q4_k_m" } })).toThrow(/none, f32, f16, bf16, q8_0/);
    expect(() => resolveSettings({ repo: "org/m", env: { REALIGN_SRR_CANDIDATES: "1" } })).toThrow(/≥ 2/);
  });

  test("gguf moves the export and publish steps only; srr the srr and publish steps only; both change the settings hash", () => {
    const base = resolveSettings({ repo: "org/m", env: {} }).settings;
    const h0 = hashes(base);
    expect(changed(h0, hashes({ ...base, gguf: "q8_0" }))).toEqual(["export", "publish"]);
    expect(changed(h0, hashes({ ...base, srr: true }))).toEqual(["srr", "publish"]);
    // Off, the srr step's hash ignores its candidate count (it samples nothing).
    expect(hashes({ ...base, srrCandidates: 3 }).srr).toBe(h0.srr);
    expect(hashes({ ...base, srr: true, srrCandidates: 3 }).srr).not.toBe(hashes({ ...base, srr: true }).srr);
    expect(settingsHash({ ...base, gguf: "q8_0" })).not.toBe(settingsHash(base));
    expect(settingsHash({ ...base, srr: true })).not.toBe(settingsHash(base));
  });
});
