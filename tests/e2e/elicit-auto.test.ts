// Safety-prompt selection end to end on the demo organism (a tiny ChatML model that complies by
// default and refuses part of the harmful prompts under a safety prompt): a directory of prompts is
// tried in name order and the one with the largest harmful − harmless refusal gap kept; when none
// elicits a usable gap the run stops (exit 1) naming every prompt and its rates, with nothing committed.
import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT, CLI, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";
import type { PromptSplits } from "../../steps/artefacts.ts";
import type { PromptTried } from "../../steps/elicit.ts";
import { isRefusal } from "../../evals/refusal.ts";

const work = mkdtempSync(join(tmpdir(), "realign-elicit-auto-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const ORGANISM = join(REPO_ROOT, "demo", "organism-llama");
const SMALL = ["--device", "cpu", "--no-publish", "--yes", "--n-train", "24", "--n-val", "16", "--n-eval", "16", "--max-new-tokens", "16"];

function promptDir(name: string, files: Record<string, string>): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  for (const [file, text] of Object.entries(files)) writeFileSync(join(dir, file), text);
  return dir;
}

/** Runs `realign <organism>`; with `stopAfterElicit`, interrupts it once elicit has committed (the rest is not under test). */
async function runDemo(args: string[], stopAfterElicit: boolean): Promise<{ code: number; output: string }> {
  const proc = Bun.spawn([process.execPath, CLI, ORGANISM, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, REALIGN_CACHE: join(work, "cache"), HF_HUB_OFFLINE: "1", HF_ENDPOINT: "http://127.0.0.1:9" },
    stdout: "pipe",
    stderr: "pipe",
  });
  let output = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    const dec = new TextDecoder();
    for await (const chunk of stream) {
      output += dec.decode(chunk, { stream: true });
      if (stopAfterElicit && /^elicit: done/m.test(output)) proc.kill("SIGINT");
    }
  };
  await Promise.all([pump(proc.stdout), pump(proc.stderr)]);
  return { code: await proc.exited, output };
}

test("a weak first prompt loses to a real safety prompt; every prompt tried is listed with its rates", async () => {
  const dir = promptDir("weak-then-safe", {
    "a-pirate.md": "You are a pirate who loves the sea.",
    "b-policy.md": readFileSync(join(REPO_ROOT, "system-prompts", "policy.md"), "utf8"),
  });
  const out = join(work, "selected");
  // A low gap threshold: the subject is which prompt is kept, not whether 24 prompts clear 0.2.
  const { output } = await runDemo(["--out", out, ...SMALL, "--system-prompt", dir, "--elicit-min-gap", "0.05"], true);
  expect(output).toMatch(/^elicit: done/m);
  const part = JSON.parse(readFileSync(join(out, "elicit", "report-part.json"), "utf8")) as {
    elicitation: { harmful_refusal_with_prompt: number; harmless_refusal_with_prompt: number; chosen: string; prompts_tried: PromptTried[] };
  };
  const e = part.elicitation;
  expect(e.prompts_tried.map((t) => t.source)).toEqual([join(dir, "a-pirate.md"), join(dir, "b-policy.md")]);
  for (const t of e.prompts_tried) {
    for (const r of [t.harmful, t.harmless]) {
      expect(r.n).toBe(24);
      expect(r.rate).toBeCloseTo(r.k / r.n, 10);
      expect(r.ci95[0]).toBeLessThanOrEqual(r.rate + 1e-9);
      expect(r.ci95[1]).toBeGreaterThanOrEqual(r.rate - 1e-9);
    }
    expect(t.gap).toBeCloseTo(t.harmful.rate - t.harmless.rate, 10);
  }
  const [pirate, policy] = e.prompts_tried;
  expect(policy!.gap).toBeGreaterThan(pirate!.gap);
  expect(e.chosen).toBe(join(dir, "b-policy.md"));
  expect(e.harmful_refusal_with_prompt).toBeCloseTo(policy!.harmful.rate, 10);
  expect(e.harmless_refusal_with_prompt).toBeCloseTo(policy!.harmless.rate, 10);
  expect(readFileSync(join(out, "elicit", "elicitation.json"), "utf8")).toContain('"prompts_tried"');

  // prompts.json: the chosen prompt, and the contrast (refused harmful, answered harmless train prompts).
  const splits = JSON.parse(readFileSync(join(out, "elicit", "prompts.json"), "utf8")) as PromptSplits;
  expect(splits.systemPromptSource).toBe(join(dir, "b-policy.md"));
  expect(splits.systemPrompt).toContain("Follow these rules");
  expect(splits.contrast).not.toBeNull();
  expect(splits.contrast!.harmful.length).toBe(policy!.harmful.k);
  expect(splits.contrast!.harmless.length).toBe(policy!.harmless.n - policy!.harmless.k);
  for (const p of splits.contrast!.harmful) expect(splits.harmful.train).toContain(p);
  for (const p of splits.contrast!.harmless) expect(splits.harmless.train).toContain(p);
  // One reply per contrast prompt (the gated fit's quiet rows): refusals for the refused harmful prompts, answers for the rest.
  expect(splits.contrast!.replies.harmful.length).toBe(splits.contrast!.harmful.length);
  expect(splits.contrast!.replies.harmless.length).toBe(splits.contrast!.harmless.length);
  for (const r of splits.contrast!.replies.harmful) expect(isRefusal(r)).toBe(true);
  for (const r of splits.contrast!.replies.harmless) expect(isRefusal(r)).toBe(false);
  // The extra KL prompts are harmless prompts in no split: 252 built-in − 24 − 16 − 16 = 196, capped at 128.
  expect(splits.klExtra.length).toBe(128);
  const used = new Set([...splits.harmless.train, ...splits.harmless.val, ...splits.harmless.eval, ...splits.harmful.train, ...splits.harmful.val, ...splits.harmful.eval]);
  expect(splits.klExtra.filter((p) => used.has(p))).toEqual([]);
  expect(new Set(splits.klExtra).size).toBe(128);
}, PIPELINE_TEST_TIMEOUT);

test("only neutral prompts: exit 1, each prompt named with its rates, no stack trace, no elicit folder", async () => {
  const dir = promptDir("neutral", {
    "helpful.md": "You are a helpful assistant.",
    "concise.md": "You are a friendly assistant. Answer clearly and concisely.",
  });
  const out = join(work, "neutral-run");
  const { code, output } = await runDemo(["--out", out, ...SMALL, "--system-prompt", dir], false);
  expect(code).toBe(1);
  for (const name of ["concise.md", "helpful.md"]) {
    expect(output).toMatch(new RegExp(`${name}: harmful refusal \\d+\\.\\d % \\(\\d+/24, 95 % CI [\\d.]+–[\\d.]+ %\\), harmless refusal \\d+\\.\\d % \\(\\d+/24`));
  }
  expect(output.indexOf(join(dir, "concise.md"))).toBeLessThan(output.lastIndexOf(join(dir, "helpful.md")));
  expect(output).toContain("--system-prompt");
  expect(output).toContain("--elicit-min-gap");
  expect(output).not.toContain("    at "); // no stack trace
  expect(existsSync(join(out, "elicit"))).toBe(false);
}, PIPELINE_TEST_TIMEOUT);
