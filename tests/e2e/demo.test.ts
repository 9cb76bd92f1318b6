// `realign demo` end to end on the built-in demo model (offline, CPU), as the README's first command runs it.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { RunReport } from "../../report/report.ts";
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
});
