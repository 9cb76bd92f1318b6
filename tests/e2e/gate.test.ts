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
test("an absurd α fails the gate, exits 3 and is not published", async () => {
  const out = join(work, "run");
  const proc = Bun.spawn(
    [process.execPath, CLI, "demo", "--out", out, "--device", "cpu", "--alpha=-50000", "--n-train", "16", "--n-val", "16", "--n-eval", "16", "--max-new-tokens", "16"],
    { cwd: REPO_ROOT, env: { ...process.env, REALIGN_CACHE: join(work, "cache"), REALIGN_ELICIT_MIN_GAP: "0" }, stdout: "pipe", stderr: "pipe" },
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

test("--force publishes a failed-gate run, and the model card says the gate failed", async () => {
  const out = join(work, "forced");
  const proc = Bun.spawn(
    [process.execPath, CLI, "demo", "--out", out, "--device", "cpu", "--alpha=-50000", "--force", "--n-train", "16", "--n-val", "16", "--n-eval", "16", "--max-new-tokens", "16"],
    { cwd: REPO_ROOT, env: { ...process.env, REALIGN_CACHE: join(work, "cache"), REALIGN_ELICIT_MIN_GAP: "0" }, stdout: "pipe", stderr: "pipe" },
  );
  await new Response(proc.stdout).text();
  await new Response(proc.stderr).text();
  expect(await proc.exited).toBe(0);
  const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as RunReport;
  expect(report.gate?.passed).toBe(false);
  expect(report.published).not.toBeNull();
  const card = readFileSync(join(out, "published", "README.md"), "utf8");
  expect(card).toMatch(/## Release gate\s+\*\*Failed\.\*\*/);
}, PIPELINE_TEST_TIMEOUT);
