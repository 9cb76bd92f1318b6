// `realign status` reads whatever a run directory holds without crashing or changing it: a gate
// without reasons, missing or mistyped fields, report.json that is not JSON or not an object, a
// broken settings.json or .done.json. The same reader feeds batch's table.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { summarizeReportJson } from "../../cli/batch.ts";
import { CLI, REPO_ROOT } from "../helpers/shared.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-status-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));
let n = 0;

function status(dir: string, json = false) {
  const r = Bun.spawnSync([process.execPath, join(REPO_ROOT, CLI), "status", "--out", dir, ...(json ? ["--json"] : [])], {
    cwd: TMP,
    env: { ...process.env, NO_COLOR: "1" },
    stdout: "pipe",
    stderr: "pipe",
  });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** A run directory whose report.json holds `report` verbatim. */
function runWith(report: string, extra: Record<string, string> = {}): string {
  const dir = join(TMP, `run-${n++}`);
  mkdirSync(join(dir, "pull"), { recursive: true });
  writeFileSync(join(dir, "report.json"), report);
  writeFileSync(join(dir, "pull", ".done.json"), JSON.stringify({ step: "pull", hash: "h", started: "", finished: "2030-01-01T00:00:00Z", seconds: 1.5, outputs: [], gate_failed: null }));
  for (const [p, body] of Object.entries(extra)) writeFileSync(join(dir, p), body);
  return dir;
}

describe("status never crashes on a report.json it did not expect", () => {
  const cases: [string, string, string[]][] = [
    ["gate without reasons", JSON.stringify({ gate: { passed: false } }), ["gate: FAILED", "published: no"]],
    ["gate without a verdict", JSON.stringify({ gate: {} }), ["gate: – (no verdict recorded)"]],
    ["reasons that are not a list", JSON.stringify({ gate: { passed: false, reasons: "too weak" } }), ["gate: FAILED"]],
    ["mistyped fields", JSON.stringify({ direction: "x", baseline: { harmful_refusal: "high" }, realigned: [], published: "yes", gate: null }), ["published: no"]],
    ["direction with missing fields", JSON.stringify({ direction: { layer: 3 }, realigned: { harmful_refusal: 0.5 } }), ["direction: layer 3, position –, α –, rank –", "harmful refusal: – → 50.0 %"]],
    ["published without url", JSON.stringify({ published: { repo: "me/x" } }), ["published: me/x"]],
    ["not JSON", "{not json", ["report: unreadable (", "report.json is not valid JSON)"]],
    ["JSON but not an object", "[1, 2]", ["report: unreadable (", "does not hold a JSON object)"]],
    ["null", "null", ["does not hold a JSON object"]],
    ["empty file", "", ["is not valid JSON"]],
  ];
  for (const [name, report, lines] of cases) {
    test(name, () => {
      const dir = runWith(report);
      const r = status(dir);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/pull\s+done/);
      for (const l of lines) expect(r.stdout).toContain(l);
      const j = status(dir, true);
      expect(j.code).toBe(0);
      expect(JSON.parse(j.stdout).out).toBe(dir);
      expect(readFileSync(join(dir, "report.json"), "utf8")).toBe(report);
    });
  }

  test("broken settings.json, malformed .done.json files and a dangling link", () => {
    const dir = runWith(JSON.stringify({ gate: { passed: true, reasons: [] } }), { "settings.json": '"just a string"' });
    mkdirSync(join(dir, "elicit"));
    writeFileSync(join(dir, "elicit", ".done.json"), '{"hash": "h", "seconds": 2, "outputs": [null]}');
    mkdirSync(join(dir, "extract"));
    writeFileSync(join(dir, "extract", ".done.json"), '{"hash": "h", "seconds": 2, "outputs": [], "finished": {"x": 1}, "gate_failed": "no"}');
    symlinkSync(join(dir, "nowhere"), join(dir, "dangling"));
    const r = status(dir);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`run: ${dir}\n`);
    expect(r.stdout).toMatch(/elicit\s+not done/);
    expect(r.stdout).toMatch(/extract\s+done\s+2\.0 s\n/);
    expect(r.stdout).toContain("gate: passed");
  });
});

test("summarizeReportJson checks each field (batch reads reports through it)", () => {
  expect(summarizeReportJson(null)).toBeNull();
  expect(summarizeReportJson("x")).toBeNull();
  expect(summarizeReportJson({ baseline: { harmful_refusal: Number.NaN }, gate: { passed: "yes", reasons: [1] } })).toEqual({
    direction: null,
    baseline: { harmful_refusal: null, harmless_refusal: null },
    realigned: null,
    gate: { passed: null, reasons: ["1"] },
    published: null,
  });
});
