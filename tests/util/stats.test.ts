// Wilson intervals against closed forms (k = 0: hi = z²/(n+z²); k = n: lo = n/(n+z²)) and a value computed
// separately in Python (float64) from the textbook formula.
import { expect, test } from "bun:test";
import { formatRate, rateOf, wilson, worstHalfWidth } from "../../util/stats.ts";

test("wilson matches the reference values", () => {
  const [lo, hi] = wilson(4, 32);
  expect(lo).toBeCloseTo(0.0497013, 6);
  expect(hi).toBeCloseTo(0.2806831, 6);
  const z2 = 1.959963984540054 ** 2;
  expect(wilson(0, 100)[0]).toBeCloseTo(0, 12);
  expect(wilson(0, 100)[1]).toBeCloseTo(z2 / (100 + z2), 12);
  expect(wilson(100, 100)[0]).toBeCloseTo(100 / (100 + z2), 12);
  expect(wilson(100, 100)[1]).toBeCloseTo(1, 12);
  expect(wilson(0, 0)).toEqual([0, 1]);
});

test("rateOf counts judgments and formats them", () => {
  const r = rateOf([true, false, false, true]);
  expect(r).toMatchObject({ rate: 0.5, k: 2, n: 4 });
  expect(formatRate(rateOf([true, false, false, false, false, false, false, false]))).toBe("12.5 % (1/8, 95 % CI 2.2–47.1 %)");
});

test("100 items per class keep every rate's half-width within 10 points", () => {
  expect(worstHalfWidth(100)).toBeLessThanOrEqual(0.1);
  expect(worstHalfWidth(64)).toBeGreaterThan(0.1);
});
