// pipeline/progress.ts: a bar never shows more done than its total, and a finished bar is complete.
import { expect, test } from "bun:test";
import { consoleUI } from "../../pipeline/progress.ts";

function plain() {
  const lines: string[] = [];
  let t = 0;
  const stream = { write: (s: string) => (lines.push(s.trimEnd()), true), isTTY: false } as unknown as NodeJS.WriteStream;
  return { lines, ui: consoleUI({ stream, throttleMs: 1000, now: () => (t += 600) }) };
}

const counts = (lines: string[]) => lines.map((l) => /(\d+)\/(\d+) \((\d+)%\)/.exec(l)).filter((m) => m !== null).map((m) => [Number(m![1]), Number(m![2]), Number(m![3])]);

test("an estimate that was too low grows with the work: never 120/80, never over 100 %", () => {
  const { lines, ui } = plain();
  const bar = ui.progress("inject", "calibrate α", 80);
  for (let i = 0; i < 120; i++) bar.tick();
  bar.done();
  const seen = counts(lines);
  expect(seen.length).toBeGreaterThan(5);
  for (const [v, total, pct] of seen) {
    expect(v).toBeLessThanOrEqual(total!);
    expect(pct).toBeLessThanOrEqual(100);
  }
  expect(lines.at(-1)).toMatch(/calibrate α 120\/120 \(100%\)/);
});

test("an estimate that was too high ends complete (35/35, not 35/50), and the final record is not printed twice", () => {
  const { lines, ui } = plain();
  const bar = ui.progress("inject", "calibrate α", 50);
  for (let i = 0; i < 35; i++) bar.tick();
  bar.done();
  expect(lines.at(-1)).toMatch(/calibrate α 35\/35 \(100%\)/);
  const { lines: l2, ui: u2 } = plain();
  const b2 = u2.progress("elicit", "harmful", 2);
  b2.tick(); // 600 ms: throttled
  b2.tick(); // 1200 ms: printed, 2/2
  b2.done(); // nothing new to say
  expect(l2.filter((l) => l.includes("2/2")).length).toBe(1);
});
