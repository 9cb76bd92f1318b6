// report/plot.ts: Vega-Lite charts rendered headless to SVG, then to PNG by resvg (an independent
// renderer): the panels have their own axis titles, the chosen point is drawn, legends keep every label.
import { expect, test } from "bun:test";
import { Resvg } from "@resvg/resvg-js";
import { chart } from "../../report/plot.ts";

test("two panels (refusal rate, KL) with their axis titles, a bound, the marked point; the PNG decodes at the SVG's size", async () => {
  const svg = await chart({
    title: "α sweep",
    xLabel: "|α| (edit strength)",
    panels: [
      {
        yLabel: "refusal rate",
        yFormat: "percent",
        series: [
          { name: "gated: harmful refusal, a long legend label that must not be cut", points: [[0, 0], [14, 0], [33, 0.125], [56, 0.458]] },
          { name: "gated: harmless refusal", dashed: true, points: [[0, 0], [33, 0], [Number.NaN, 1]] },
        ],
        marked: [{ x: 33, y: 0.125, label: "chosen: gated, α 32.88" }],
      },
      { yLabel: "first-token KL", series: [{ name: "gated: KL", points: [[0, 0], [33, 0.063], [56, 0.234]] }], rules: [{ y: 0.075, label: "bound 0.075" }], marked: [{ x: 33, y: 0.063, label: "chosen" }] },
    ],
  });
  expect(svg.startsWith("<svg")).toBe(true);
  for (const text of ["refusal rate", "first-token KL", "|α| (edit strength)", "chosen: gated, α 32.88", "bound 0.075", "gated: harmful refusal, a long legend label that must not be cut"]) {
    expect(svg).toContain(`>${text.replace(/&/g, "&amp;")}</text>`);
  }
  // The marked point: one symbol in each panel's "marked" mark group.
  expect(svg).toMatch(/class="mark-symbol role-mark marked_marks"[^>]*>\s*<path/);
  expect(svg).toMatch(/class="mark-symbol role-mark marked1_marks"/);
  // The rate axis runs 0–100 %, whatever the data's maximum (45.8 %).
  expect(svg).toContain(">100%</text>");
  const [, w, h] = /<svg[^>]* width="(\d+)" height="(\d+)"/.exec(svg)!.map(Number);
  const png = new Resvg(svg, { font: { loadSystemFonts: true } }).render();
  const bytes = png.asPng();
  expect([...bytes.subarray(1, 4)].map((c) => String.fromCharCode(c)).join("")).toBe("PNG");
  // IHDR: width and height as big-endian 32-bit integers at bytes 16–23.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  expect([view.getUint32(16), view.getUint32(20)]).toEqual([w!, h!]);
  expect(w).toBeGreaterThan(500);
  expect(h).toBeGreaterThan(400);
});

test("legend lines are dashed where the series is; a series without points has no entry; integer and symlog axes", async () => {
  const svg = await chart({
    title: "t",
    xLabel: "layer",
    xInteger: true,
    panels: [
      {
        yLabel: "KL",
        yScale: "symlog",
        series: [
          { name: "harmful", points: [[0, 0], [1, 0.05], [3, 2.4]] },
          { name: "harmless", dashed: true, points: [[0, 0], [2, 0.5]] },
          { name: "never measured", points: [[0, Number.NaN]] },
        ],
      },
    ],
  });
  const legend = [...svg.matchAll(/role-legend-symbol"[^>]*><path[^>]*stroke-dasharray="([^"]+)"[^>]*\/><\/g><g class="mark-text role-legend-label"[^>]*><text[^>]*>([^<]+)<\/text>/g)].map((m) => [m[2], m[1]]);
  expect(legend).toEqual([
    ["harmful", "1,0"],
    ["harmless", "6,4"],
  ]);
  expect(svg).not.toContain(">never measured<");
  const labels = [...svg.matchAll(/>([0-9.]+)<\/text>/g)].map((m) => m[1]);
  // Layers 0–3 in whole steps only; KL ticks one per decade (symlog), up to the data's 2.4.
  expect(labels.filter((l) => l.includes(".") && Number(l) > 0.5 && Number(l) < 3)).toEqual([]);
  for (const t of ["0.01", "0.1", "1"]) expect(labels).toContain(t);
  expect(labels).not.toContain("10");
});
