// `realign demo` end to end on the built-in demo model (offline, CPU), as the README's first command runs it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createHash } from "node:crypto";
import type { RunReport } from "../../report/report.ts";
import { SafetensorsFile } from "../../engine/safetensors.ts";
import { REPO_ROOT, CLI } from "../helpers/shared.ts";

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
  }, 600_000);
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  test("completes offline and reports a rise in harmful refusal without the safety prompt", () => {
    // 0 when the gate passes, 3 when it fails: both are completed runs with a full report.
    expect([0, 3]).toContain(exitCode);
    const report = JSON.parse(readFileSync(join(work, "run", "report.json"), "utf8")) as RunReport;
    expect(report.baseline?.harmful_refusal).not.toBeNull();
    expect(report.realigned!.harmful_refusal!).toBeGreaterThan(report.baseline!.harmful_refusal!);
    expect(report.direction?.alpha).toBeNumber();
    expect(report.elicitation?.harmful_refusal_with_prompt!).toBeGreaterThan(0.3);
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
});
