// One way to write numbers for people: the console, report.md and the model card all go through
// these, so the same quantity reads the same everywhere.
//
//   percent(0.125)        "12.5 %"      rates: one decimal, always (12.5 % is never "13 %")
//   points(0.125)         "+12.5 points" differences of rates
//   alpha(32.87717695…)   "32.88"       strengths: 4 significant digits (the exact value is in calibration.json)
//   kl(0.0334)            "0.033"       KL in nats: 3 decimals
//   position(5, '"\n"')   '5 ("\n")'    a token position: its index and its label (extract's: the token's
//                                       text JSON-quoted, or "last instruction token")
//   seconds(119.6)        "2 min 0 s"   rounded first, so never "1 min 60 s"
//   bytes(1.5e9)          "1.5 GB"      decimal units, as the Hub shows sizes
// A missing value (null, undefined, NaN) is "–".

export const MISSING = "–";

const missing = (v: number | null | undefined): v is null | undefined => v === null || v === undefined || !Number.isFinite(v);

/** A rate in [0, 1] as "12.5 %". */
export function percent(v: number | null | undefined, digits = 1): string {
  return missing(v) ? MISSING : `${(v * 100).toFixed(digits)} %`;
}

/** A difference of rates as "+12.5 points" / "−3.1 points". */
export function points(v: number | null | undefined): string {
  if (missing(v)) return MISSING;
  const x = Math.abs(v * 100).toFixed(1);
  return `${v < 0 && x !== "0.0" ? "−" : "+"}${x} points`;
}

/** A number to `digits` significant digits, without trailing zeros or exponent for everyday sizes. */
export function significant(v: number | null | undefined, digits = 4): string {
  if (missing(v)) return MISSING;
  if (v === 0) return "0";
  return Number(v.toPrecision(digits)).toString();
}

/** An edit strength α: 4 significant digits. */
export const alpha = (v: number | null | undefined): string => significant(v, 4);

/** A KL divergence (nats): 3 decimals. */
export function kl(v: number | null | undefined): string {
  return missing(v) ? MISSING : v.toFixed(3);
}

/** A token position: the index, and its label when it says more than the index. */
export function position(index: number | null | undefined, label?: string | null): string {
  if (index === null || index === undefined) return MISSING;
  const text = label === undefined || label === null || label === "" || label === String(index) ? "" : ` (${label})`;
  return `${index}${text}`;
}

/** A duration: "4.2 s", "2 min 0 s", "1 h 5 min"; rounded before it is split, so no "60 s". */
export function seconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return MISSING;
  if (s < 59.95) return `${s.toFixed(1)} s`;
  const total = Math.round(s);
  const m = Math.floor(total / 60);
  if (m < 60) return `${m} min ${total - m * 60} s`;
  const minutes = Math.round(s / 60);
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** A size in bytes: "812 kB", "1.5 GB" (decimal units). */
export function bytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return MISSING;
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${n} B` : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}
