// Choosing the trade-off: after calibration, the admissible points (within the over-refusal, KL and
// utility bounds, and raising harmful refusal above the original's) that no other admissible point
// beats on every measure, as a numbered table with the recommended one marked; the person at the
// terminal picks one by number, or presses Enter for the recommended one.
//
// Contract:
// - tradeoffPoints: the offer, best first (harmful refusal ↓, then KL ↑); the recommended point is in it
//   even when another point dominates it (it is what calibration would take without asking).
// - chooseTradeoff: without `ask` (not a TTY, --yes, batch, the fleet worker), or with a single point,
//   the recommended point, by "default" and nothing asked. With `ask`: Enter → the recommended point,
//   a number in range → that point, anything else is asked again (at most MAX_TRIES times), end of
//   input → the recommended point. A choice on record for the same offer (a resumed run) is reused
//   and nothing is asked.
// - The record (.inject-choice.json in the run directory) is keyed by the offer itself, so a changed
//   sweep (other settings, other model) asks again.
import { existsSync, readFileSync } from "node:fs";
import { atomicWriteJson, sha256Hex } from "../util/fs.ts";
import { wilson, type Rate } from "../util/stats.ts";
import { alpha as fmtAlpha, kl as fmtKl, MISSING, percent } from "../util/format.ts";
import type { AskUser } from "../pipeline/runner.ts";

/** One measured sweep point on offer, its rates with k/n and 95 % intervals. */
export interface TradeoffPoint {
  method: string;
  layer: number;
  position: number;
  alpha: number;
  harmful_refusal: Rate;
  harmless_refusal: Rate;
  kl: number;
  /** null: the model ships no exact-answer task, so calibration measured no utility. */
  utility: Rate | null;
}

/** What calibration.json records of the choice. `chosen` and `recommended` are 1-based numbers in `points`. */
export interface TradeoffChoice {
  points: TradeoffPoint[];
  recommended: number;
  chosen: number;
  /** "user": typed a number or pressed Enter; "default": nobody was asked (or only one point). */
  by: "user" | "default";
}

/** A measured point as calibration has it (rates as fractions), with what identifies it. */
export interface SweptPoint<F> {
  family: F;
  method: string;
  layer: number;
  position: number;
  alpha: number;
  harmful_refusal: number;
  harmless_refusal: number;
  kl: number;
  utility: number | null;
}

/** Prompt counts behind the rates (k = round(rate · n)). */
export interface TradeoffSizes {
  harmful: number;
  harmless: number;
  utility: number;
}

const MAX_TRIES = 5;

const rate = (r: number, n: number): Rate => {
  const k = Math.round(r * n);
  return { rate: r, k, n, ci95: wilson(k, n) };
};

/** Whether a is at least as good as b on every measure and better on one. */
function dominates(a: SweptPoint<unknown>, b: SweptPoint<unknown>): boolean {
  const ge = [a.harmful_refusal >= b.harmful_refusal, a.harmless_refusal <= b.harmless_refusal, a.kl <= b.kl, (a.utility ?? 0) >= (b.utility ?? 0)];
  const gt = [a.harmful_refusal > b.harmful_refusal, a.harmless_refusal < b.harmless_refusal, a.kl < b.kl, (a.utility ?? 0) > (b.utility ?? 0)];
  return ge.every(Boolean) && gt.some(Boolean);
}

/**
 * The offer: admissible points above the original's harmful refusal, undominated, deduplicated (the
 * same family and α), best first; `recommended` is the index of the recommended point in it.
 */
export function tradeoffPoints<F>(admissible: readonly SweptPoint<F>[], recommended: SweptPoint<F>, baseHarmful: number): { offer: SweptPoint<F>[]; recommended: number } {
  const same = (a: SweptPoint<F>, b: SweptPoint<F>) => a.family === b.family && a.alpha === b.alpha;
  const unique: SweptPoint<F>[] = [];
  for (const p of admissible) if (p.harmful_refusal > baseHarmful && !unique.some((q) => same(p, q))) unique.push(p);
  const offer = unique.filter((p) => same(p, recommended) || !unique.some((q) => dominates(q, p)));
  if (!offer.some((p) => same(p, recommended))) offer.push(recommended);
  offer.sort((a, b) => b.harmful_refusal - a.harmful_refusal || a.kl - b.kl || Math.abs(a.alpha) - Math.abs(b.alpha));
  return { offer, recommended: offer.findIndex((p) => same(p, recommended)) };
}

/** The offer as recorded: rates with k/n and intervals. */
export function recordPoints(offer: readonly SweptPoint<unknown>[], sizes: TradeoffSizes): TradeoffPoint[] {
  return offer.map((p) => ({
    method: p.method,
    layer: p.layer,
    position: p.position,
    alpha: p.alpha,
    harmful_refusal: rate(p.harmful_refusal, sizes.harmful),
    harmless_refusal: rate(p.harmless_refusal, sizes.harmless),
    kl: p.kl,
    utility: p.utility === null || sizes.utility === 0 ? null : rate(p.utility, sizes.utility),
  }));
}

/** "12.5 % 4/32 [5.0–28.1]": the rate, k/n and its 95 % interval in percent. */
export function rateCell(r: Rate | null): string {
  if (!r) return MISSING;
  const p = (x: number) => (x * 100).toFixed(1);
  return `${percent(r.rate)} ${r.k}/${r.n} [${p(r.ci95[0])}–${p(r.ci95[1])}]`;
}

/** The table the user chooses from: one numbered row per point, the recommended one marked with "*". */
export function formatTradeoffTable(points: readonly TradeoffPoint[], recommended: number, base?: { harmful: Rate; harmless: Rate; utility: Rate | null }): string[] {
  const header = ["", "#", "method", "layer", "α", "harmful refusal", "over-refusal", "KL", "utility"];
  const rows: string[][] = [];
  if (base) rows.push(["", "–", "original", MISSING, "0", rateCell(base.harmful), rateCell(base.harmless), fmtKl(0), rateCell(base.utility)]);
  points.forEach((p, i) =>
    rows.push([i === recommended ? "*" : "", String(i + 1), p.method, String(p.layer), fmtAlpha(p.alpha), rateCell(p.harmful_refusal), rateCell(p.harmless_refusal), fmtKl(p.kl), rateCell(p.utility)]),
  );
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]) => cells.map((x, c) => x.padEnd(widths[c])).join("  ").trimEnd();
  return [
    "admissible calibration points (validation split, no system prompt; rates as k/n [95 % CI, %]; KL: first token, harmless prompts):",
    line(header),
    ...rows.map(line),
    `* recommended: the highest harmful refusal within the bounds, then the lowest KL`,
  ];
}

/** The user's answer: Enter → the recommended point, "3" → the third; null: not a choice. 0-based. */
export function parseChoice(answer: string, count: number, recommended: number): number | null {
  const a = answer.trim();
  if (a === "") return recommended;
  if (!/^\d+$/.test(a)) return null;
  const n = Number(a);
  return n >= 1 && n <= count ? n - 1 : null;
}

/** The key of an offer in the record: the points themselves. */
export const offerKey = (points: readonly TradeoffPoint[]): string => sha256Hex(JSON.stringify(points));

/** The choice on record for this offer (0-based), or null. A record that cannot be read counts as none. */
export function recordedChoice(path: string, points: readonly TradeoffPoint[]): { index: number; by: "user" | "default" } | null {
  if (!existsSync(path)) return null;
  try {
    const r = JSON.parse(readFileSync(path, "utf8")) as { key?: unknown; chosen?: unknown; by?: unknown };
    if (r.key !== offerKey(points) || typeof r.chosen !== "number" || !Number.isInteger(r.chosen) || r.chosen < 1 || r.chosen > points.length) return null;
    return { index: r.chosen - 1, by: r.by === "default" ? "default" : "user" };
  } catch {
    return null;
  }
}

/**
 * Shows the offer and takes the user's choice (see the contract above). `recordPath`: where a choice
 * made by asking is kept, so that a resumed run does not ask again. Returns the 0-based index.
 */
export async function chooseTradeoff(o: {
  points: readonly TradeoffPoint[];
  recommended: number;
  base?: { harmful: Rate; harmless: Rate; utility: Rate | null };
  ask?: AskUser;
  log: (line: string) => void;
  recordPath: string;
}): Promise<{ index: number; by: "user" | "default" }> {
  const { points, recommended } = o;
  const table = formatTradeoffTable(points, recommended, o.base);
  const onRecord = recordedChoice(o.recordPath, points);
  if (onRecord) {
    for (const l of table) o.log(l);
    o.log(`taking point ${onRecord.index + 1}, chosen when this calibration first ran (${o.recordPath}; delete it to choose again)`);
    return onRecord;
  }
  if (!o.ask || points.length < 2) {
    for (const l of table) o.log(l);
    o.log(`taking the recommended point ${recommended + 1}${o.ask ? " (the only one)" : " (nobody to ask: not a terminal, --yes, batch or a fleet worker)"}`);
    return { index: recommended, by: "default" };
  }
  let question = `${table.join("\n")}\nchoose a point [1–${points.length}, Enter: ${recommended + 1}]: `;
  for (let tries = 0; tries < MAX_TRIES; tries++) {
    const answer = await o.ask(question);
    if (answer === null) {
      o.log(`no answer (end of input): taking the recommended point ${recommended + 1}`);
      return { index: recommended, by: "default" };
    }
    const index = parseChoice(answer, points.length, recommended);
    if (index !== null) {
      atomicWriteJson(o.recordPath, { key: offerKey(points), chosen: index + 1, recommended: recommended + 1, by: "user" });
      o.log(index === recommended ? `point ${index + 1} (the recommended one)` : `point ${index + 1} chosen (recommended: ${recommended + 1})`);
      return { index, by: "user" };
    }
    question = `"${answer.trim()}" is not a point: type a number from 1 to ${points.length}, or press Enter for ${recommended + 1}: `;
  }
  o.log(`no valid answer after ${MAX_TRIES} tries: taking the recommended point ${recommended + 1}`);
  return { index: recommended, by: "default" };
}
