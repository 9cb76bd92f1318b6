// util/format.ts: one way to write rates, differences, α, KL, positions, durations and sizes.
import { expect, test } from "bun:test";
import { alpha, bytes, kl, MISSING, percent, points, position, seconds } from "../../util/format.ts";

test("rates keep one decimal (12.5 % is never 13 %); differences are signed points; missing is a dash", () => {
  expect(percent(0.125)).toBe("12.5 %");
  expect(percent(3 / 32)).toBe("9.4 %");
  expect(percent(0)).toBe("0.0 %");
  expect(percent(null)).toBe(MISSING);
  expect(percent(Number.NaN)).toBe(MISSING);
  expect(points(0.125)).toBe("+12.5 points");
  expect(points(-0.031)).toBe("−3.1 points");
  expect(points(-0.0001)).toBe("+0.0 points");
});

test("α to 4 significant digits (not 16), KL to 3 decimals, positions with their label", () => {
  expect(alpha(32.87717695619144)).toBe("32.88");
  expect(alpha(-133.66)).toBe("-133.7");
  expect(alpha(4.757123)).toBe("4.757");
  expect(alpha(0)).toBe("0");
  expect(kl(0.03288991500020148)).toBe("0.033");
  expect(position(5, '"\\n"')).toBe('5 ("\\n")');
  expect(position(0, "last instruction token")).toBe("0 (last instruction token)");
  expect(position(3, "3")).toBe("3");
  expect(position(null)).toBe(MISSING);
});

test("durations are rounded before they are split: never 60 s; sizes in decimal units", () => {
  expect(seconds(4.24)).toBe("4.2 s");
  expect(seconds(59.97)).toBe("1 min 0 s");
  expect(seconds(119.6)).toBe("2 min 0 s");
  expect(seconds(239.5)).toBe("4 min 0 s");
  expect(seconds(3 * 60 + 59.7)).toBe("4 min 0 s");
  expect(seconds(3725)).toBe("1 h 2 min");
  for (let s = 0; s < 7300; s += 0.37) expect(seconds(s)).not.toMatch(/\b60 (s|min)\b/);
  expect(bytes(512)).toBe("512 B");
  expect(bytes(1.5e9)).toBe("1.5 GB");
  expect(bytes(812_345)).toBe("812 kB");
});
