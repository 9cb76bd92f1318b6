// The publish gate end to end: an absurd α breaks the model, the gate fails (exit 3) and nothing is published.
import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { RunReport } from "../../report/report.ts";
import { REPO_ROOT, CLI, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";

const work = mkdtempSync(join(tmpdir(), "realign-gate-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

// The elicitation check is not under test here: any refusal gap the safety prompt elicits on 16 prompts will do.
const ARGS = ["--device", "cpu", "--alpha=-50000", "--n-train", "16", "--n-val", "16", "--n-eval", "16", "--max-new-tokens", "16"];
const ENV = { ...process.env, REALIGN_CACHE: join(work, "cache"), REALIGN_ELICIT_MIN_GAP: "0" };
test("an absurd α fails the gate, exits 3 and is not published", async () => {
  const out = join(work, "run");
  const proc = Bun.spawn(
    [process.execPath, CLI, "demo", "--out", out, ...ARGS],
    { cwd: REPO_ROOT, env: ENV, stdout: "pipe", stderr: "pipe" },
  );
  const text = (await new Response(proc.stdout).text()) + (await new Response(proc.stderr).text());
  expect(await proc.exited).toBe(3);
  const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as RunReport;
  expect(report.direction?.alpha).toBe(-50000);
  expect(report.gate?.passed).toBe(false);
  expect(report.gate?.reasons.some((r) => r.includes("KL"))).toBe(true);
  expect(report.published).toBeNull();
  expect(existsSync(join(out, "published"))).toBe(false);
  expect(existsSync(join(out, "publish"))).toBe(false);
  expect(text).toContain("gate");
}, PIPELINE_TEST_TIMEOUT);

test("realign publish on that run without --force: exit 3, the gate's reasons, nothing written", async () => {
  const out = join(work, "run");
  const proc = Bun.spawn([process.execPath, CLI, "publish", out, "--yes"], { cwd: REPO_ROOT, env: ENV, stdout: "pipe", stderr: "pipe" });
  const stderr = await new Response(proc.stderr).text();
  await new Response(proc.stdout).text();
  expect(await proc.exited).toBe(3);
  expect(stderr).toContain(`realign: the gate failed for ${out} (`);
  expect(stderr).toContain("pass --force to publish it anyway");
  expect(existsSync(join(out, "published"))).toBe(false);
  expect(existsSync(join(out, "srr"))).toBe(false);
});

// The user's next move after a failed gate: `realign publish <run> --force`. Nothing up to the gate is
// recomputed; the steps the run stopped before (srr, export) run, then publish.
test("realign publish --force publishes that run as it is, and the model card says the gate failed", async () => {
  const out = join(work, "run");
  const proc = Bun.spawn([process.execPath, CLI, "publish", out, "--force", "--yes"], { cwd: REPO_ROOT, env: ENV, stdout: "pipe", stderr: "pipe" });
  const text = (await new Response(proc.stdout).text()) + (await new Response(proc.stderr).text());
  if ((await proc.exited) !== 0) console.error(text);
  expect(await proc.exited).toBe(0);
  expect(text).not.toMatch(/(elicit|extract|inject|validate): running/);
  expect(text).toContain("--force: running the steps the failed gate stopped the run before: srr, export");
  const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as RunReport;
  expect(report.direction?.alpha).toBe(-50000);
  expect(report.gate?.passed).toBe(false);
  expect(report.published).not.toBeNull();
  const card = readFileSync(join(out, "published", "README.md"), "utf8");
  expect(card).toMatch(/## Release gate\s+\*\*Failed\.\*\*/);
}, PIPELINE_TEST_TIMEOUT);
