// Charts for the run artefacts, drawn by Vega-Lite (compiled to Vega, rendered headless to SVG by
// vega.View.toSVG: no canvas, no browser). A chart is one or more panels stacked over a shared x
// axis; each panel has its own y axis, so rates in [0, 1] and a KL of 2.5 never share a scale.
//
// Contract: chart() returns a standalone SVG document. Every panel has an x and a y axis title; a
// marked point (the chosen α, the chosen layer) is drawn as a filled diamond with its label, in a
// mark named "marked" (its SVG group carries the class "marked_marks"); a rule (a bound) is a dashed
// line with its label; a dashed series is drawn dashed in its colour, in the legend too. Legends go below
// the panel, one column per series up to 3, labels never truncated; a series without a finite point has
// no legend entry. A number axis (not a rate) fits its data rather than reaching for zero; a "symlog"
// panel spreads values near zero (a KL bound) and far from it (KL 2.5) on one axis. Non-finite points
// are dropped. Deterministic for equal inputs.
import * as vega from "vega";
import * as vl from "vega-lite";

export interface Series {
  name: string;
  points: [number, number][];
  color?: string;
  /** Drawn dashed (e.g. the harmless rate beside the harmful one, in the same colour). */
  dashed?: boolean;
}

/** A horizontal reference line (a bound) in one panel. */
export interface Rule {
  y: number;
  label: string;
}

/** The point a reader should find first: the chosen setting. */
export interface Marked {
  x: number;
  y: number;
  label: string;
}

export interface Panel {
  yLabel: string;
  series: Series[];
  /** "percent": y is a rate in [0, 1], shown as 0–100 %. */
  yFormat?: "percent" | "number";
  /** "symlog": linear near zero, logarithmic beyond (values that span orders of magnitude, e.g. KL). */
  yScale?: "linear" | "symlog";
  rules?: Rule[];
  marked?: Marked[];
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  panels: Panel[];
  /** Width of the plotting area of each panel, px (default 520). */
  width?: number;
  /** Height of each panel's plotting area, px (default 200). */
  height?: number;
  /** x takes whole numbers only (layers): integer ticks. */
  xInteger?: boolean;
}

const COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"];

const finite = ([x, y]: [number, number]) => Number.isFinite(x) && Number.isFinite(y);

/** The Vega-Lite spec of a chart (exported for tests and for readers who want the JSON). */
export function chartSpec(opts: ChartOptions): vl.TopLevelSpec {
  const width = opts.width ?? 520;
  const height = opts.height ?? 200;
  const panels = opts.panels.map((panel, pi) => {
    // Colours follow the series' places in the caller's list, so dropping an empty one shifts none.
    const drawn = panel.series.map((s, i) => ({ s, color: s.color ?? COLORS[i % COLORS.length]! })).filter(({ s }) => s.points.some(finite));
    const names = drawn.map(({ s }) => s.name);
    const colors = drawn.map(({ color }) => color);
    const dashedNames = drawn.filter(({ s }) => s.dashed).map(({ s }) => s.name);
    const rows = drawn.flatMap(({ s }) => s.points.filter(finite).map(([x, y]) => ({ x, y, series: s.name, dash: s.dashed ? "dashed" : "solid" })));
    const percent = panel.yFormat === "percent";
    // A symlog axis gets a tick per decade up to the data's maximum (its own would fall on 0.5 steps).
    const maxY = Math.max(0, ...rows.map((r) => r.y), ...(panel.rules ?? []).map((r) => r.y));
    const symlogTicks = [0, 0.01, 0.1, 1, 10, 100].filter((v) => v <= maxY * 1.05);
    const yAxis = { title: panel.yLabel, ...(percent ? { format: ".0%" } : {}), ...(panel.yScale === "symlog" && !percent ? { values: symlogTicks, format: "~g", labelOverlap: false } : {}) };
    const yScale = percent ? { domain: [0, 1] } : { zero: false, ...(panel.yScale === "symlog" ? { type: "symlog", constant: 0.01 } : {}) };
    const x = { field: "x", type: "quantitative" as const, title: opts.xLabel, ...(opts.xInteger ? { axis: { tickMinStep: 1, format: "d" } } : {}) };
    const y = { field: "y", type: "quantitative" as const, scale: yScale };
    const layers: Record<string, unknown>[] = [
      {
        data: { values: rows },
        mark: { type: "line", point: { size: 36 }, strokeWidth: 2 },
        encoding: {
          x,
          y: { ...y, axis: yAxis },
          color: {
            field: "series",
            type: "nominal",
            scale: { domain: names, range: colors },
            legend: {
              title: null,
              orient: "bottom",
              columns: Math.min(3, Math.max(1, names.length)),
              labelLimit: 0,
              symbolType: "stroke",
              symbolSize: 400,
              symbolStrokeWidth: 2,
              // The legend's line is dashed where the series is (harmless beside harmful, same colour).
              encode: { symbols: { update: { strokeDash: [{ test: `indexof(${JSON.stringify(dashedNames)}, datum.value) >= 0`, value: [6, 4] }, { value: [1, 0] }] } } },
            },
          },
          strokeDash: { field: "dash", type: "nominal", scale: { domain: ["solid", "dashed"], range: [[1, 0], [6, 4]] }, legend: null },
        },
      },
    ];
    if (panel.rules?.length) {
      const values = panel.rules.map((r) => ({ y: r.y, label: r.label }));
      layers.push(
        { data: { values }, mark: { type: "rule", strokeDash: [6, 4], color: "#555" }, encoding: { y } },
        { data: { values }, mark: { type: "text", align: "right", baseline: "bottom", dy: -2, color: "#555", x: width }, encoding: { y, text: { field: "label" } } },
      );
    }
    if (panel.marked?.length) {
      const values = panel.marked.map((m) => ({ x: m.x, y: m.y, label: m.label }));
      layers.push(
        { name: pi === 0 ? "marked" : `marked${pi}`, data: { values }, mark: { type: "point", shape: "diamond", filled: true, size: 220, color: "black", stroke: "white", strokeWidth: 1.5 }, encoding: { x, y } },
        { data: { values }, mark: { type: "text", align: "left", dx: 9, dy: -9, fontWeight: "bold" }, encoding: { x, y, text: { field: "label" } } },
      );
    }
    return { width, height, layer: layers, resolve: { scale: { color: "independent" } } };
  });
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: { text: opts.title, anchor: "start", fontSize: 14 },
    background: "white",
    padding: 12,
    config: { font: "DejaVu Sans, Arial, sans-serif", legend: { labelFontSize: 11 }, axis: { titleFontSize: 12, labelFontSize: 11 } },
    vconcat: panels,
    resolve: { scale: { color: "independent", x: "shared" } },
  } as unknown as vl.TopLevelSpec;
}

/** Render a chart to a standalone SVG document. */
export async function chart(opts: ChartOptions): Promise<string> {
  const view = new vega.View(vega.parse(vl.compile(chartSpec(opts)).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** One panel of lines: the simple case. */
export function lineChart(opts: { title: string; xLabel: string; yLabel: string; series: Series[]; yFormat?: Panel["yFormat"]; marked?: Marked[]; width?: number; height?: number; xInteger?: boolean }): Promise<string> {
  return chart({ title: opts.title, xLabel: opts.xLabel, width: opts.width, height: opts.height, xInteger: opts.xInteger, panels: [{ yLabel: opts.yLabel, series: opts.series, yFormat: opts.yFormat, marked: opts.marked }] });
}
