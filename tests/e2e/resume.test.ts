// A real pipeline run killed with SIGKILL during extract, and again during inject, completes on
// re-invocation with the same report and byte-identical patched weights as an uninterrupted run.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { REPO_ROOT, CLI, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";

const ROOT = REPO_ROOT;
const work = mkdtempSync(join(tmpdir(), "realign-resume-"));
// One method keeps the sweep short; resuming inside it (the memo) is what is under test, not the choice.
const SIZES = ["--n-train", "12", "--n-val", "8", "--n-eval", "8", "--max-new-tokens", "12", "--device", "cpu", "--method", "rosi"];
const ENV = { ...process.env, REALIGN_CACHE: join(work, "cache"), REALIGN_ELICIT_MIN_GAP: "0" };

/** Runs the demo into `out`; with `killOn`, SIGKILLs it shortly after a line containing that text appears. */
async function run(out: string, killOn?: string): Promise<{ code: number; killed: boolean; output: string }> {
  const proc = Bun.spawn([process.execPath, CLI, "demo", "--out", out, ...SIZES], { cwd: ROOT, env: ENV, stdout: "pipe", stderr: "pipe" });
  let output = "";
  let killed = false;
  const watch = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      output += decoder.decode(chunk);
      if (killOn && !killed && output.includes(killOn)) {
        killed = true;
        // Mid-step: the step has started computing (and writing into its tmp folder).
        setTimeout(() => proc.kill("SIGKILL"), 400);
      }
    }
  };
  await Promise.all([watch(proc.stdout), watch(proc.stderr)]);
  return { code: await proc.exited, killed, output };
}

/** report.json without wall-clock fields. */
function stableReport(out: string): unknown {
  const r = JSON.parse(readFileSync(join(out, "report.json"), "utf8"));
  delete r.timings_s;
  if (r.details) delete r.details.generation_tokens_per_s;
  // Where the demo "publishes" is inside each run's own folder; the commit (content hash) must agree.
  if (r.published) {
    delete r.published.repo;
    delete r.published.url;
  }
  return r;
}

describe("resume after SIGKILL", () => {
  const A = join(work, "uninterrupted");
  const B = join(work, "killed");
  let codeA = -1;
  beforeAll(async () => {
    codeA = (await run(A)).code;
  }, PIPELINE_TEST_TIMEOUT);
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  test("killed during extract, then during inject: the third invocation completes with the same results", async () => {
    expect([0, 3]).toContain(codeA);
    const first = await run(B, "[extract]");
    expect(first.killed).toBe(true);
    expect(first.code).not.toBe(0);
    expect(existsSync(join(B, "extract", ".done.json"))).toBe(false);
    const second = await run(B, "[inject]");
    expect(second.killed).toBe(true);
    expect(second.output).toMatch(/extract: (running|done)/);
    expect(existsSync(join(B, "inject", ".done.json"))).toBe(false);
    const third = await run(B);
    expect(third.code).toBe(codeA);
    // Steps finished before a kill were not recomputed.
    expect(third.output).toMatch(/elicit: (cached|up to date|skipped)/);

    expect(stableReport(B)).toEqual(stableReport(A));
    const model = (dir: string) => join(dir, "inject", "model");
    const files = readdirSync(model(A)).sort();
    expect(readdirSync(model(B)).sort()).toEqual(files);
    for (const f of files) expect(Buffer.compare(readFileSync(join(model(A), f)), readFileSync(join(model(B), f)))).toBe(0);
    for (const step of ["pull", "elicit", "extract", "inject", "validate"]) {
      const done = (dir: string) => JSON.parse(readFileSync(join(dir, step, ".done.json"), "utf8")).hash;
      expect(done(B)).toBe(done(A));
    }
    expect(readdirSync(B).filter((f) => f.startsWith(".tmp-"))).toEqual([]);
  }, PIPELINE_TEST_TIMEOUT);
});
