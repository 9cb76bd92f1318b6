// Whose run directory it is: the runner writes only into a new or empty folder, one carrying its
// marker, or an earlier run's (adopted); a user's folder, even with realign's own names in it, is
// refused before anything changes. Start-up clean-up removes only the temporaries the runner
// recorded; a run that commits nothing leaves nothing behind.
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { isRealignSettings, realignRunDir } from "../../cli/batch.ts";
import { resolveSettings } from "../../cli/settings.ts";
import type { Settings } from "../../steps/settings.ts";
import { RunDirError, StepFailedError } from "../../pipeline/errors.ts";
import { UsageError } from "../../util/errors.ts";
import { DEFAULT_OWNER, inspectRunDir, RUN_DIR_FORMAT, runPipeline, type RunDirOwner } from "../../pipeline/runner.ts";
import { makeFakeSteps, type FakeOptions } from "../helpers/fixtures-runner/fake-steps.ts";

const ROOT = mkdtempSync(join(tmpdir(), "realign-rundir-"));
afterAll(() => rmSync(ROOT, { recursive: true, force: true }));
let n = 0;
const fresh = (name = "run") => join(ROOT, `${name}-${n++}`);
const MARKER = DEFAULT_OWNER.marker;
const LEDGER = `${MARKER}.ledger`;
const STEP_NAMES = makeFakeSteps().map((s) => s.name);

const settingsFor = (out: string, cli: Record<string, unknown> = {}): Settings =>
  resolveSettings({ repo: "test/fake-model", cli: { out, publish: false, nTrain: 8, ...cli }, env: {} }).settings;

function run(settings: Settings, o: { fake?: FakeOptions; force?: boolean; owner?: RunDirOwner; removeCreatedDir?: boolean } = {}) {
  return runPipeline({
    steps: makeFakeSteps(o.fake),
    settings,
    outDir: settings.out,
    force: o.force,
    owner: o.owner ?? realignRunDir(settings),
    removeCreatedDir: o.removeCreatedDir,
  });
}

/** Every path under dir → sha256 of its content (folders: "dir"), size and mtime: what "unchanged" means. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      const rel = relative(dir, p);
      if (st.isDirectory()) {
        out[rel] = `dir mtime=${st.mtimeMs}`;
        walk(p);
      } else out[rel] = `${createHash("sha256").update(readFileSync(p)).digest("hex")} size=${st.size} mtime=${st.mtimeMs}`;
    }
  };
  walk(dir);
  return out;
}

/** A user's folder holding files with realign's own names (and a few others), with old mtimes. */
function userFolder(): string {
  const dir = fresh("user");
  mkdirSync(join(dir, "pull"), { recursive: true });
  mkdirSync(join(dir, "publish"));
  mkdirSync(join(dir, ".tmp-foo"));
  const files: Record<string, string> = {
    "report.md": "# my own report\n",
    "settings.json": '{"theme": "dark"}\n',
    "notes.txt": "do not lose me\n",
    "pull/data.csv": "a,b\n1,2\n",
    "publish/draft.md": "draft\n",
    ".tmp-foo/keep.txt": "mine\n",
    ".tmp-extract-notes": "also mine\n",
  };
  for (const [p, body] of Object.entries(files)) writeFileSync(join(dir, p), body);
  const old = new Date("2020-01-01T00:00:00Z");
  for (const p of [...Object.keys(files), "pull", "publish", ".tmp-foo", "."]) utimesSync(join(dir, p), old, old);
  return dir;
}

const expectRunDirError = async (p: Promise<unknown>): Promise<RunDirError> => {
  const e = await p.catch((x: unknown) => x);
  expect(e).toBeInstanceOf(RunDirError);
  expect(e).toBeInstanceOf(UsageError); // exit code 2
  return e as RunDirError;
};

describe("a folder that is not the runner's is refused before anything changes", () => {
  test("a user's folder with realign's names in it: refused (also with --force), every byte and mtime kept", async () => {
    const dir = userFolder();
    const before = snapshot(dir);
    for (const force of [false, true]) {
      const e = await expectRunDirError(run(settingsFor(dir), { force }));
      expect(e.message).toStartWith(`--out ${dir} is not a realign run directory (no ${MARKER} marker) and is not empty: it holds `);
      // the entries realign did not write come first, then the colliding ones
      expect(e.message).toContain(".tmp-extract-notes, .tmp-foo/, notes.txt");
      expect(e.message).toContain("--force does not change this");
      expect(e.message).toContain("if it is a run directory of an earlier realign, move .tmp-extract-notes, .tmp-foo/, notes.txt out of it");
      expect(e.message).not.toContain("\n");
      expect(snapshot(dir)).toEqual(before);
    }
  });

  test("only realign's names but foreign settings.json, or no settings.json: refused", async () => {
    const dir = fresh("lookalike");
    mkdirSync(join(dir, "pull"), { recursive: true });
    writeFileSync(join(dir, "report.md"), "mine\n");
    const before = snapshot(dir);
    expect((await expectRunDirError(run(settingsFor(dir)))).message).toContain("(and no settings.json)");
    writeFileSync(join(dir, "settings.json"), '{"model": "x"}');
    const before2 = snapshot(dir);
    expect((await expectRunDirError(run(settingsFor(dir)))).message).toContain("(its settings.json is not realign's settings)");
    expect(snapshot(dir)).toEqual(before2);
    rmSync(join(dir, "settings.json"));
    expect(snapshot(dir)).toEqual(before);
  });

  test("a file where the run directory should be, or in its path: a clear message, the file unchanged", async () => {
    const file = join(fresh("file"), "x.txt");
    mkdirSync(join(file, ".."), { recursive: true });
    writeFileSync(file, "precious\n");
    const before = snapshot(join(file, ".."));
    const e = await expectRunDirError(run(settingsFor(file)));
    expect(e.message).toBe(`--out ${file} is a file, not a folder: give a new folder, an empty one, or a realign run directory`);
    const e2 = await expectRunDirError(run(settingsFor(join(file, "sub", "run"))));
    expect(e2.message).toBe(`--out ${join(file, "sub", "run")} cannot be created: ${file} is a file, not a folder`);
    expect(snapshot(join(file, ".."))).toEqual(before);
  });

  test("a marker from a newer format is refused; a hand-made empty marker is a claim", async () => {
    const dir = fresh("newer");
    mkdirSync(dir);
    writeFileSync(join(dir, MARKER), JSON.stringify({ format: RUN_DIR_FORMAT + 1, tool: "realign" }));
    writeFileSync(join(dir, "notes.txt"), "x");
    expect((await expectRunDirError(run(settingsFor(dir)))).message).toContain(`was made by a newer realign (run directory format ${RUN_DIR_FORMAT + 1}`);
    writeFileSync(join(dir, MARKER), "");
    await run(settingsFor(dir));
    expect(readFileSync(join(dir, "notes.txt"), "utf8")).toBe("x");
    expect(existsSync(join(dir, "publish", ".done.json"))).toBe(true);
  });
});

describe("new, empty and marked directories", () => {
  test("a new directory gets the marker (format, tool, model); settings.json; an empty ledger at the end", async () => {
    const s = settingsFor(join(fresh("new"), "a", "b"));
    const claim = inspectRunDir(s.out, STEP_NAMES, realignRunDir(s));
    expect(claim.state).toBe("new");
    expect(claim.creates).toBe(join(s.out, "..", ".."));
    await run(s);
    expect(JSON.parse(readFileSync(join(s.out, MARKER), "utf8"))).toEqual({ model: "test/fake-model", format: RUN_DIR_FORMAT, tool: "realign" });
    expect(readFileSync(join(s.out, LEDGER), "utf8")).toBe("");
    expect(JSON.parse(readFileSync(join(s.out, "settings.json"), "utf8")).nTrain).toBe(8);
    expect(inspectRunDir(s.out, STEP_NAMES).state).toBe("marked");
    // A marked directory stays usable whatever else the user put there.
    writeFileSync(join(s.out, "my-notes.txt"), "ok");
    await run(s);
    expect(readFileSync(join(s.out, "my-notes.txt"), "utf8")).toBe("ok");
  });

  test("an existing empty folder is adopted", async () => {
    const dir = fresh("empty");
    mkdirSync(dir);
    expect(inspectRunDir(dir, STEP_NAMES).state).toBe("empty");
    await run(settingsFor(dir));
    expect(existsSync(join(dir, MARKER))).toBe(true);
  });
});

describe("run directories of earlier versions (settings.json and step folders, no marker)", () => {
  /** A finished run as an earlier realign left it: no marker, no ledger, a step temporary from a kill. */
  async function legacyRun(): Promise<Settings> {
    const s = settingsFor(fresh("legacy"));
    await run(s);
    rmSync(join(s.out, MARKER));
    rmSync(join(s.out, LEDGER), { force: true });
    mkdirSync(join(s.out, ".tmp-extract-0123456789ab", "chunks"), { recursive: true });
    writeFileSync(join(s.out, ".settings.json.abcdef012345.tmp"), "{");
    return s;
  }

  test("adopted: marked, its leftovers removed, its committed steps still up to date", async () => {
    const s = await legacyRun();
    const claim = inspectRunDir(s.out, STEP_NAMES, realignRunDir(s));
    expect(claim.state).toBe("adopted");
    expect(claim.leftovers.sort()).toEqual([".settings.json.abcdef012345.tmp", ".tmp-extract-0123456789ab"]);
    const outcome = await run(s);
    expect(outcome.steps.map((x) => x.status)).toEqual(["cached", "cached", "cached", "cached", "cached"]);
    expect(existsSync(join(s.out, MARKER))).toBe(true);
    expect(readdirSync(s.out).filter((f) => f.startsWith(".tmp-") || f.endsWith(".tmp"))).toEqual([]);
  });

  test("with a user's file added, or settings that are not realign's: refused, unchanged", async () => {
    const s = await legacyRun();
    writeFileSync(join(s.out, "notes.txt"), "mine");
    const before = snapshot(s.out);
    const e = await expectRunDirError(run(s));
    expect(e.message).toContain("it holds notes.txt, ");
    expect(e.message).toContain("move notes.txt out of it");
    expect(snapshot(s.out)).toEqual(before);
    rmSync(join(s.out, "notes.txt"));
    writeFileSync(join(s.out, "settings.json"), JSON.stringify({ model: "x", colour: "red" }));
    expect((await expectRunDirError(run(s))).message).toContain("its settings.json is not realign's settings");
  });

  test("isRealignSettings: an object naming the model with most of realign's settings", () => {
    const s = settingsFor("/tmp/x");
    expect(isRealignSettings(JSON.parse(JSON.stringify(s)))).toBe(true);
    const { nTrain: _a, nVal: _b, seed: _c, ...older } = s;
    expect(isRealignSettings(older)).toBe(true); // renamed settings of an older version
    for (const v of [null, [], "x", { model: "x" }, { ...s, model: 3 }]) expect(isRealignSettings(v)).toBe(false);
  });
});

describe("start-up clean-up removes only recorded temporaries", () => {
  test("a killed run's recorded temporary goes; a user's .tmp-foo, .tmp-<step>-notes and a tampered ledger line stay", async () => {
    const s = settingsFor(fresh("clean"));
    await run(s);
    // What a kill mid-step leaves: the name in the ledger, then the folder.
    appendFileSync(join(s.out, LEDGER), ".tmp-extract-00112233aabb\n");
    mkdirSync(join(s.out, ".tmp-extract-00112233aabb", "chunks"), { recursive: true });
    writeFileSync(join(s.out, ".tmp-extract-00112233aabb", "chunks", "chunk-0.txt"), "partial");
    // The user's, in the same folder; and a ledger line pointing outside it.
    mkdirSync(join(s.out, ".tmp-foo"));
    writeFileSync(join(s.out, ".tmp-foo", "keep.txt"), "mine");
    mkdirSync(join(s.out, ".tmp-extract-notes"));
    writeFileSync(join(s.out, ".notes.txt.tmp"), "mine too");
    const outside = join(s.out, "..", `outside-${n}`);
    mkdirSync(outside);
    appendFileSync(join(s.out, LEDGER), `../outside-${n}\n/etc\n.tmp-foo\n`);
    const mine = snapshot(join(s.out, ".tmp-foo"));
    await run(s, { force: true });
    expect(existsSync(join(s.out, ".tmp-extract-00112233aabb"))).toBe(false);
    expect(snapshot(join(s.out, ".tmp-foo"))).toEqual(mine);
    expect(existsSync(join(s.out, ".tmp-extract-notes"))).toBe(true);
    expect(readFileSync(join(s.out, ".notes.txt.tmp"), "utf8")).toBe("mine too");
    expect(existsSync(outside)).toBe(true);
    expect(readFileSync(join(s.out, LEDGER), "utf8")).toBe("");
  });
});

describe("a run that commits nothing leaves nothing behind", () => {
  test("new directory: removed with the folders it created (removeCreatedDir); kept empty without it", async () => {
    const base = fresh("fail");
    mkdirSync(base);
    const s = settingsFor(join(base, "a", "b"));
    await expect(run(s, { fake: { failAt: "pull" }, removeCreatedDir: true })).rejects.toThrow(StepFailedError);
    expect(readdirSync(base)).toEqual([]);
    await expect(run(s, { fake: { failAt: "pull" } })).rejects.toThrow(StepFailedError);
    expect(readdirSync(s.out)).toEqual([]);
  });

  test("an existing empty folder is empty again", async () => {
    const dir = fresh("empty-fail");
    mkdirSync(dir);
    await expect(run(settingsFor(dir), { fake: { failAt: "pull" }, removeCreatedDir: true })).rejects.toThrow(StepFailedError);
    expect(readdirSync(dir)).toEqual([]);
  });

  test("an earlier run's folder: a refused re-run leaves its settings.json, marker and results as they were", async () => {
    const s = settingsFor(fresh("rerun"));
    await run(s);
    const before = snapshot(s.out);
    // New settings that re-run pull, which fails (a rejected checkpoint).
    await expect(run(settingsFor(s.out, { revision: "v2" }), { fake: { failAt: "pull" }, removeCreatedDir: true })).rejects.toThrow(StepFailedError);
    const after = snapshot(s.out);
    delete after[LEDGER];
    const { [LEDGER]: _ledger, ...expected } = before;
    expect(after).toEqual(expected);
    expect(readFileSync(join(s.out, LEDGER), "utf8")).toBe("");
  });

  test("a malformed .done.json is an unfinished step, not a crash", async () => {
    const s = settingsFor(fresh("done"));
    await run(s);
    for (const body of ['{"hash": "x", "seconds": 1, "outputs": [null]}', "[]", "7", '{"hash": 1}']) {
      writeFileSync(join(s.out, "validate", ".done.json"), body);
      const outcome = await run(s);
      expect(outcome.steps.find((x) => x.name === "validate")?.status).toBe("ran");
    }
  });
});
