// `realign demo` end to end on the built-in demo model (offline, CPU), as the README's first command runs it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createHash } from "node:crypto";
import type { RunReport } from "../../report/report.ts";
import type { Calibration } from "../../steps/artefacts.ts";
import { SafetensorsFile } from "../../engine/safetensors.ts";
import { REPO_ROOT, CLI, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";
import { DEFAULTS } from "../../steps/settings.ts";
import { DEMO_SETTINGS } from "../../steps/reproduce.ts";

const ROOT = REPO_ROOT;

describe("realign demo", () => {
  let work = "";
  let exitCode = -1;
  let output = "";
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "realign-demo-"));
    const proc = Bun.spawn([process.execPath, CLI, "demo", "--out", join(work, "run"), "--device", "cpu"], {
      cwd: ROOT,
      env: { ...process.env, REALIGN_CACHE: join(work, "cache"), HF_HUB_OFFLINE: "1", HF_ENDPOINT: "http://127.0.0.1:9" },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    exitCode = await proc.exited;
    output = out + err;
  }, PIPELINE_TEST_TIMEOUT);
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  test("completes offline with a full, self-consistent report (the behaviour claim is organism-rosi's, on 100 prompts)", () => {
    // 0 when the gate passes, 3 when it fails: both are completed runs with a full report. On the demo's
    // 32 evaluation prompts a gain of a few points is noise, so the gain is not asserted here.
    expect([0, 3]).toContain(exitCode);
    const report = JSON.parse(readFileSync(join(work, "run", "report.json"), "utf8")) as RunReport;
    expect(report.baseline?.harmful_refusal).not.toBeNull();
    expect(report.realigned?.harmful_refusal).not.toBeNull();
    // The gate's harmful check is the numbers in the report.
    const harmful = report.gate!.checks!.find((c) => c.name === "harmful refusal")!;
    expect(harmful.value).toBeCloseTo(report.realigned!.harmful_refusal!, 12);
    expect(report.realigned!.rates!.harmful_refusal!.n).toBe(DEMO_SETTINGS.nEval);
    expect(report.direction?.alpha).toBeNumber();
    // Elicitation passed its own check: the chosen prompt's refusal gap is at least the default minimum.
    expect(report.elicitation!.harmful_refusal_with_prompt! - report.elicitation!.harmless_refusal_with_prompt!).toBeGreaterThanOrEqual(DEFAULTS.elicitMinGap);
    expect(report.gate?.passed).toBe(exitCode === 0);
    // Every step left its artefacts.
    for (const f of ["extract/direction.safetensors", "extract/selection.json", "inject/model/model.safetensors", "inject/calibration.json", "validate/validation.json", "report.md"]) {
      expect(existsSync(join(work, "run", f))).toBe(true);
    }
    if (exitCode === 0) expect(existsSync(join(work, "run", "published", "README.md"))).toBe(true);
    expect(output).not.toContain("    at "); // no stack traces
  });

  test("what is published is what was injected: one direction, one sha256 in the file, the weights and calibration.json", () => {
    const run = join(work, "run");
    const published = join(run, "published", "rosi-direction.safetensors");
    const directionFile = existsSync(published) ? published : join(run, "inject", "edit.safetensors");
    const dir = SafetensorsFile.open(directionFile);
    const bytes = dir.readBytes("direction");
    dir.close();
    const sha = createHash("sha256").update(bytes).digest("hex");
    const weights = SafetensorsFile.open(join(run, "inject", "model", "model.safetensors"));
    const meta = weights.metadata;
    weights.close();
    const calibration = JSON.parse(readFileSync(join(run, "inject", "calibration.json"), "utf8")) as { layer: number; direction_sha256: string };
    expect(meta.realign_direction_sha256).toBe(sha);
    expect(calibration.direction_sha256).toBe(sha);
    const report = JSON.parse(readFileSync(join(run, "report.json"), "utf8")) as RunReport;
    expect(report.direction?.layer).toBe(calibration.layer);
    expect(meta.realign_layer).toBe(String(calibration.layer));
  });

  test("without a terminal the recommended trade-off point is taken, and recorded as such (nobody asked)", () => {
    const run = join(work, "run");
    const calibration = JSON.parse(readFileSync(join(run, "inject", "calibration.json"), "utf8")) as Calibration;
    const report = JSON.parse(readFileSync(join(run, "report.json"), "utf8")) as RunReport;
    const choice = calibration.choice!;
    expect(choice.by).toBe("default");
    expect(choice.chosen).toBe(choice.recommended);
    // The recommended point is the edit injected, and the highest harmful refusal on offer.
    const point = choice.points[choice.chosen - 1];
    expect(point.alpha).toBe(calibration.alpha);
    expect(point.harmful_refusal.rate).toBe(Math.max(...choice.points.map((p) => p.harmful_refusal.rate)));
    expect(report.choice).toMatchObject({ index: choice.chosen, recommended: choice.recommended, by: "default", offered: choice.points.length });
    expect(output).toContain("taking the recommended point");
    expect(existsSync(join(run, ".inject-choice.json"))).toBe(false);
  });

  test("calibration.json: a point past the KL bound keeps its KL alone and is never admissible; the rest are measured in full", () => {
    const calibration = JSON.parse(readFileSync(join(work, "run", "inject", "calibration.json"), "utf8")) as Calibration;
    const swept = calibration.sweep.filter((p) => p.method !== "none");
    expect(swept.length).toBeGreaterThan(0);
    for (const p of swept) {
      if ("skipped" in p) {
        expect(p.skipped).toBe("past the KL bound");
        expect(p.kl).toBeGreaterThan(calibration.bounds.kl);
        expect(p.ok).toBe(false);
        expect(Object.keys(p)).not.toContain("harmful_refusal");
      } else {
        expect(p.kl).toBeLessThanOrEqual(calibration.bounds.kl + 1e-9);
        expect(p.harmful_refusal).toBeNumber();
        expect(p.harmless_refusal).toBeNumber();
      }
    }
  });

  test("every edited matrix is W + α·wₘ·ŝ·kᵀ, with k the key shipped in edit.safetensors (gated) or the mean of W's rows", () => {
    const run = join(work, "run");
    const calibration = JSON.parse(readFileSync(join(run, "inject", "calibration.json"), "utf8")) as Calibration;
    const edit = SafetensorsFile.open(join(run, "inject", "edit.safetensors"));
    const src = SafetensorsFile.open(join(ROOT, "demo", "organism-llama", "model.safetensors"));
    const out = SafetensorsFile.open(join(run, "inject", "model", "model.safetensors"));
    try {
      const s = edit.readF32("direction");
      const keyNames = edit.names().filter((n) => n.startsWith("key."));
      expect(keyNames.length > 0).toBe(calibration.method === "gated");
      const layers = calibration.weights.length / 2;
      let edited = 0;
      for (let l = 0; l < layers; l++) {
        for (const [k, name] of [`model.layers.${l}.self_attn.o_proj.weight`, `model.layers.${l}.mlp.down_proj.weight`].entries()) {
          const w = calibration.weights[2 * l + k];
          const W = src.readF32(name);
          const got = out.readF32(name);
          const [rows, cols] = src.info(name).shape;
          if (w === 0) {
            expect(Buffer.from(out.readBytes(name)).equals(Buffer.from(src.readBytes(name)))).toBe(true);
            continue;
          }
          edited++;
          const key = keyNames.includes(`key.${name}`) ? Float64Array.from(edit.readF32(`key.${name}`)) : new Float64Array(cols).map((_, c) => { let m = 0; for (let r = 0; r < rows; r++) m += W[r * cols + c]; return m / rows; });
          let worst = 0;
          for (let r = 0; r < rows; r++) {
            const v = Math.fround(calibration.alpha * w * s[r]);
            for (let c = 0; c < cols; c++) worst = Math.max(worst, Math.abs(got[r * cols + c] - (W[r * cols + c] + v * key[c])));
          }
          expect(worst).toBeLessThan(1e-5);
        }
      }
      expect(edited).toBeGreaterThan(0);
    } finally {
      edit.close();
      src.close();
      out.close();
    }
  });
});
