// A small five-field cron matcher (minute hour day-of-month month day-of-week), local time.
// Supports *, lists, ranges, steps (*/15, 1-10/2), month and weekday names, 7 = Sunday and the
// @hourly/@daily/@midnight/@weekly/@monthly/@yearly/@annually macros. As in classic cron, when both
// day fields are restricted a day matches if either does.

export interface CronSchedule {
  source: string;
  minutes: ReadonlySet<number>;
  hours: ReadonlySet<number>;
  days: ReadonlySet<number>;
  months: ReadonlySet<number>;
  weekdays: ReadonlySet<number>;
  dayRestricted: boolean;
  weekdayRestricted: boolean;
}

export class CronError extends Error {
  override name = "CronError";
}

export const MACROS: Readonly<Record<string, string>> = {
  "@yearly": "0 0 1 1 *",
  "@annually": "0 0 1 1 *",
  "@monthly": "0 0 1 * *",
  "@weekly": "0 0 * * 0",
  "@daily": "0 0 * * *",
  "@midnight": "0 0 * * *",
  "@hourly": "0 * * * *",
};
const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

interface FieldDef {
  name: string;
  min: number;
  max: number;
  names?: string[];
  namesBase?: number;
}
const FIELD_DEFS: FieldDef[] = [
  { name: "minute", min: 0, max: 59 },
  { name: "hour", min: 0, max: 23 },
  { name: "day of month", min: 1, max: 31 },
  { name: "month", min: 1, max: 12, names: MONTHS, namesBase: 1 },
  { name: "day of week", min: 0, max: 7, names: DAYS, namesBase: 0 },
];

function parseValue(tok: string, def: FieldDef): number {
  const lower = tok.toLowerCase();
  const idx = def.names?.indexOf(lower) ?? -1;
  if (idx >= 0) return idx + (def.namesBase ?? 0);
  if (!/^\d+$/.test(tok)) throw new CronError(`${def.name}: "${tok}" is not a number${def.names ? " or name" : ""}`);
  const n = Number(tok);
  if (n < def.min || n > def.max) throw new CronError(`${def.name}: ${n} is out of range ${def.min}-${def.max}`);
  return n;
}

function parseField(text: string, def: FieldDef): Set<number> {
  const set = new Set<number>();
  for (const part of text.split(",")) {
    if (part === "") throw new CronError(`${def.name}: empty list item in "${text}"`);
    const [rangePart, stepPart, extra] = part.split("/");
    if (extra !== undefined) throw new CronError(`${def.name}: bad step in "${part}"`);
    let step = 1;
    if (stepPart !== undefined) {
      if (!/^\d+$/.test(stepPart) || Number(stepPart) === 0) throw new CronError(`${def.name}: step must be a positive integer in "${part}"`);
      step = Number(stepPart);
    }
    let lo: number;
    let hi: number;
    if (rangePart === "*") {
      lo = def.min;
      hi = def.max === 7 ? 6 : def.max;
    } else if (rangePart!.includes("-")) {
      const [a, b, more] = rangePart!.split("-");
      if (more !== undefined || !a || !b) throw new CronError(`${def.name}: bad range "${rangePart}"`);
      lo = parseValue(a, def);
      hi = parseValue(b, def);
      if (lo > hi) throw new CronError(`${def.name}: range ${rangePart} goes backwards`);
    } else {
      lo = parseValue(rangePart!, def);
      hi = stepPart !== undefined ? (def.max === 7 ? 6 : def.max) : lo;
    }
    for (let v = lo; v <= hi; v += step) set.add(def.max === 7 && v === 7 ? 0 : v);
  }
  return set;
}

export function parseCron(expr: string): CronSchedule {
  const source = expr.trim();
  const expanded = MACROS[source.toLowerCase()] ?? source;
  if (source.startsWith("@") && !MACROS[source.toLowerCase()]) {
    throw new CronError(`unknown macro "${source}" (known: ${Object.keys(MACROS).join(", ")})`);
  }
  const parts = expanded.split(/\s+/).filter(Boolean);
  if (parts.length !== 5) throw new CronError(`expected 5 fields (minute hour day month weekday), got ${parts.length} in "${source}"`);
  const [mi, ho, dm, mo, dw] = parts.map((p, i) => parseField(p, FIELD_DEFS[i]!));
  const sched: CronSchedule = {
    source,
    minutes: mi!,
    hours: ho!,
    days: dm!,
    months: mo!,
    weekdays: dw!,
    // Vixie cron: a day field starting with "*" (also "*/2") counts as unrestricted.
    dayRestricted: !parts[2]!.startsWith("*"),
    weekdayRestricted: !parts[4]!.startsWith("*"),
  };
  // Reject schedules that can never fire (e.g. "0 0 30 2 *").
  if (nextRun(sched, new Date(2000, 0, 1)) === null) throw new CronError(`"${source}" never matches any date`);
  return sched;
}

function dayMatches(s: CronSchedule, d: Date): boolean {
  const dom = s.days.has(d.getDate());
  const dow = s.weekdays.has(d.getDay());
  if (s.dayRestricted && s.weekdayRestricted) return dom || dow;
  return dom && dow;
}

export function cronMatches(s: CronSchedule, d: Date): boolean {
  return s.months.has(d.getMonth() + 1) && dayMatches(s, d) && s.hours.has(d.getHours()) && s.minutes.has(d.getMinutes());
}

/** The first matching minute strictly after `after`, or null if none within ~8 years. */
export function nextRun(s: CronSchedule, after: Date): Date | null {
  const d = new Date(after.getTime());
  d.setSeconds(0, 0);
  d.setMinutes(d.getMinutes() + 1);
  const limit = after.getTime() + 8 * 366 * 24 * 3600 * 1000;
  while (d.getTime() <= limit) {
    if (!s.months.has(d.getMonth() + 1)) {
      d.setMonth(d.getMonth() + 1, 1);
      d.setHours(0, 0, 0, 0);
    } else if (!dayMatches(s, d)) {
      d.setDate(d.getDate() + 1);
      d.setHours(0, 0, 0, 0);
    } else if (!s.hours.has(d.getHours())) {
      d.setHours(d.getHours() + 1, 0, 0, 0);
    } else if (!s.minutes.has(d.getMinutes())) {
      d.setMinutes(d.getMinutes() + 1, 0, 0);
    } else return d;
  }
  return null;
}
