// Choosing the trade-off after calibration (steps/tradeoff.ts): which points are offered, their k/n and
// intervals, the table with the recommended point marked, the choice typed at a (fake) terminal through
// cli/ask.ts's stdin reader, the default when nobody can be asked, and a resumed run that does not ask
// again. The card and report.md name a choice other than the recommended one. Unit-level: no model.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { chooseTradeoff, formatTradeoffTable, parseChoice, recordPoints, tradeoffPoints, type SweptPoint } from "../../steps/tradeoff.ts";
import { lineAsker, runAsker } from "../../cli/ask.ts";
import { choiceLine, renderReportMarkdown } from "../../report/build.ts";
import type { RunReport } from "../../report/report.ts";

const dir = mkdtempSync(join(tmpdir(), "realign-tradeoff-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pt = (family: string, alpha: number, harmful: number, harmless: number, kl: number, utility: number | null = 0.8): SweptPoint<string> => ({
  family,
  method: family,
  layer: 3,
  position: 5,
  alpha,
  harmful_refusal: harmful,
  harmless_refusal: harmless,
  kl,
  utility,
});
// Admissible points of a sweep; the original refuses 1/32 harmful prompts.
const A = pt("gated", 40, 6 / 32, 0, 0.02); // best harmful: the recommended one
const B = pt("rosi-mv", 20, 4 / 32, 0, 0.01); // less refusal, less KL: on the front
const C = pt("rosi", 10, 4 / 32, 1 / 32, 0.03); // dominated by B (same refusal, more over-refusal and KL)
const D = pt("rosi", 5, 1 / 32, 0, 0.001); // no gain over the original: not offered
const SIZES = { harmful: 32, harmless: 32, utility: 64 };

describe("the offer", () => {
  test("admissible points that raise harmful refusal, undominated, once each, best first", () => {
    const { offer, recommended } = tradeoffPoints([C, B, A, D, { ...B }], A, 1 / 32);
    expect(offer.map((p) => p.family)).toEqual(["gated", "rosi-mv"]);
    expect(recommended).toBe(0);
  });
  test("the recommended point is offered even when another dominates it", () => {
    const E = pt("gated", 41, 6 / 32, 0, 0.01);
    const { offer, recommended } = tradeoffPoints([A, E], A, 0);
    expect(offer.length).toBe(2);
    expect(offer[recommended]).toBe(A);
  });
  test("rates carry k/n and the 95 % Wilson interval", () => {
    const [p] = recordPoints([pt("rosi", 1, 4 / 32, 0, 0.1, null)], SIZES);
    expect(p.harmful_refusal.k).toBe(4);
    expect(p.harmful_refusal.n).toBe(32);
    // 4/32 by hand: centre (0.125 + 1.96²/64) / (1 + 1.96²/32) = 0.16519, half-width 0.11549.
    expect(p.harmful_refusal.ci95[0]).toBeCloseTo(0.0497, 3);
    expect(p.harmful_refusal.ci95[1]).toBeCloseTo(0.2807, 3);
    expect(p.utility).toBeNull();
  });
  test("the table numbers the points, marks the recommended one and shows the original for reference", () => {
    const points = recordPoints([A, B], SIZES);
    const lines = formatTradeoffTable(points, 0, { harmful: points[0].harmful_refusal, harmless: points[0].harmless_refusal, utility: null });
    const row = (n: string) => lines.find((l) => l.trim().split(/\s+/).includes(n) && /gated|rosi/.test(l))!;
    expect(row("1").startsWith("*")).toBe(true);
    expect(row("2").startsWith("*")).toBe(false);
    expect(row("1")).toContain("18.8 % 6/32");
    expect(row("1")).toContain("0.020");
    expect(row("2")).toContain("12.5 % 4/32 [5.0–28.1]");
    expect(lines.some((l) => l.includes("original"))).toBe(true);
  });
  test("answers: Enter is the recommended point, numbers in range, nothing else", () => {
    expect(parseChoice("", 3, 1)).toBe(1);
    expect(parseChoice(" 3 ", 3, 1)).toBe(2);
    expect(parseChoice("4", 3, 1)).toBeNull();
    expect(parseChoice("0", 3, 1)).toBeNull();
    expect(parseChoice("two", 3, 1)).toBeNull();
  });
});

describe("the choice", () => {
  const points = recordPoints([A, B], SIZES);
  const logged: string[] = [];
  const log = (l: string) => void logged.push(l);

  test("typed at the terminal (stdin): a wrong answer is asked again, then the number counts and is recorded", async () => {
    const input = new PassThrough();
    const output = new PassThrough();
    let shown = "";
    output.on("data", (b: Buffer) => {
      shown += b.toString();
      // Answer each question once it is shown, as a person would.
      if (shown.endsWith(": ")) input.write(shown.includes("is not a point") ? "2\n" : "7\n");
    });
    const recordPath = join(dir, "typed.json");
    const got = await chooseTradeoff({ points, recommended: 0, ask: lineAsker(input, output), log, recordPath });
    expect(got).toEqual({ index: 1, by: "user" });
    expect(shown).toContain("choose a point [1–2, Enter: 1]");
    expect(shown).toContain('"7" is not a point');
    expect(existsSync(recordPath)).toBe(true);
    // Resumed: the same offer takes the recorded choice without asking.
    const again = await chooseTradeoff({ points, recommended: 0, ask: () => Promise.reject(new Error("asked again")), log, recordPath });
    expect(again).toEqual({ index: 1, by: "user" });
    // Another offer (a changed sweep) is asked anew.
    const other = recordPoints([A, B, pt("rosi", 9, 3 / 32, 0, 0.005)], SIZES);
    expect(await chooseTradeoff({ points: other, recommended: 0, ask: async () => "3", log, recordPath })).toEqual({ index: 2, by: "user" });
  });
  test("Enter takes the recommended point; end of input takes it too", async () => {
    expect(await chooseTradeoff({ points, recommended: 0, ask: async () => "", log, recordPath: join(dir, "enter.json") })).toEqual({ index: 0, by: "user" });
    const input = new PassThrough();
    input.end();
    expect(await chooseTradeoff({ points, recommended: 0, ask: lineAsker(input, new PassThrough()), log, recordPath: join(dir, "eof.json") })).toEqual({ index: 0, by: "default" });
    expect(existsSync(join(dir, "eof.json"))).toBe(false);
  });
  test("nobody to ask (not a TTY, --yes, batch, fleet): the recommended point, the table logged, nothing recorded", async () => {
    logged.length = 0;
    const got = await chooseTradeoff({ points, recommended: 0, log, recordPath: join(dir, "none.json") });
    expect(got).toEqual({ index: 0, by: "default" });
    expect(logged.some((l) => l.startsWith("*"))).toBe(true);
    expect(logged.at(-1)).toContain("recommended point 1");
    expect(existsSync(join(dir, "none.json"))).toBe(false);
  });
});

test("the CLI's asker on a real process stdin: questions in a row read a line each, end of input is null", async () => {
  const script = `import { runAsker } from ${JSON.stringify(join(import.meta.dir, "..", "..", "cli", "ask.ts"))};
const ask = runAsker({ yes: false, interactive: true });
const a = await ask("first? ");
const b = await ask("second? ");
const c = await ask("third? ");
console.log(JSON.stringify([a, b, c]));
process.exit(0);`;
  const file = join(dir, "asker.ts");
  await Bun.write(file, script);
  const p = Bun.spawn([process.execPath, file], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  p.stdin.write("x\n2\n");
  p.stdin.end();
  const out = await new Response(p.stdout).text();
  expect(await p.exited).toBe(0);
  // The questions as written (no newline of their own), then the three answers.
  expect(out).toBe(`first? second? third? ${JSON.stringify(["x", "2", null])}\n`);
  expect(runAsker({ yes: true, interactive: true })).toBeUndefined();
  expect(runAsker({ yes: false, interactive: false })).toBeUndefined();
});

describe("report and card", () => {
  const base: RunReport = { model: "m", revision: null, settings_hash: "h", direction: null, elicitation: null, baseline: null, realigned: null, gate: null, published: null, timings_s: {} };
  const recommended_point = { method: "gated", layer: 3, alpha: 40, harmful_refusal: 6 / 32, harmless_refusal: 0, kl: 0.02 };
  test("a choice other than the recommended one is said, with the recommended point", () => {
    const line = choiceLine({ index: 2, recommended: 1, by: "user", offered: 2, recommended_point });
    expect(line).toContain("point 2 of 2 admissible instead of the recommended point 1");
    expect(line).toContain("harmful refusal 18.8 %");
    expect(renderReportMarkdown({ ...base, choice: { index: 2, recommended: 1, by: "user", offered: 2, recommended_point } })).toContain("- Trade-off: the user chose");
  });
  test("the recommended point, or no choice, says nothing", () => {
    expect(choiceLine({ index: 1, recommended: 1, by: "user" })).toBeNull();
    expect(choiceLine({ index: 1, recommended: 1, by: "default" })).toBeNull();
    expect(choiceLine(null)).toBeNull();
    expect(renderReportMarkdown(base)).not.toContain("Trade-off");
  });
});
