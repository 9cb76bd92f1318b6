// --out as users give it (spawned CLI, fake steps; one real-steps run for a rejected checkpoint):
// a folder realign did not make is refused for `realign <model>`, `demo` and each model of `batch`
// (exit 2, one line naming the folder and its entries, no byte or mtime changed, --force or not);
// a file in the way is named as such; a run refused before or at pull leaves no folder behind; a
// run directory of an earlier realign is adopted; a local publish target is not replaced blindly.
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { CLI, REPO_ROOT, callerEnv } from "../helpers/shared.ts";

const BUN = process.execPath;
const REAL_CLI = join(REPO_ROOT, CLI);
const FAKE_CLI = join(REPO_ROOT, "tests", "helpers", "fixtures-runner", "fake-cli.ts");
const TMP = mkdtempSync(join(tmpdir(), "realign-outdir-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));
let n = 0;
const fresh = (name = "d") => join(TMP, `${name}-${n++}`);

function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env = callerEnv();
  return { ...env, HF_HOME: join(TMP, "hf-home"), REALIGN_CACHE: join(TMP, "cache"), NO_COLOR: "1", ...extra };
}

function cli(args: string[], o: { fake?: boolean; cwd?: string; env?: Record<string, string> } = {}) {
  const r = Bun.spawnSync([BUN, o.fake === false ? REAL_CLI : FAKE_CLI, ...args], { cwd: o.cwd ?? TMP, env: cleanEnv(o.env), stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** The error output is one "realign: …" line, with no stack trace. */
function oneLine(stderr: string): string {
  const lines = stderr.trimEnd().split("\n");
  expect(lines.length).toBe(1);
  expect(lines[0]).toStartWith("realign: ");
  expect(stderr).not.toMatch(/\n\s+at .+:\d+:\d+/);
  return lines[0]!;
}

function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) {
        out[relative(dir, p)] = `dir mtime=${st.mtimeMs}`;
        walk(p);
      } else out[relative(dir, p)] = `${createHash("sha256").update(readFileSync(p)).digest("hex")} mtime=${st.mtimeMs}`;
    }
  };
  walk(dir);
  return out;
}

/** A user's folder with realign's own names in it (report.md, settings.json, pull/, publish/, a .tmp-*). */
function userFolder(): string {
  const dir = fresh("user");
  for (const d of ["pull", "publish", ".tmp-cache"]) mkdirSync(join(dir, d), { recursive: true });
  const files: Record<string, string> = {
    "report.md": "# quarterly report\n",
    "settings.json": '{"editor": "vim"}\n',
    "pull/requests.csv": "id\n1\n",
    "publish/post.md": "hello\n",
    ".tmp-cache/blob": "cached\n",
  };
  for (const [p, body] of Object.entries(files)) writeFileSync(join(dir, p), body);
  const old = new Date("2021-06-01T00:00:00Z");
  for (const p of [...Object.keys(files), "pull", "publish", ".tmp-cache"]) utimesSync(join(dir, p), old, old);
  return dir;
}

describe("a user's folder as --out is refused: exit 2, one line, nothing changed", () => {
  test("realign <model>, with and without --force", () => {
    const dir = userFolder();
    const before = snapshot(dir);
    for (const extra of [[], ["--force"]]) {
      const r = cli(["test/fake-model", "--no-publish", "--out", dir, ...extra]);
      expect(r.code).toBe(2);
      const line = oneLine(r.stderr);
      expect(line).toContain(`--out ${dir} is not a realign run directory (no .realign-run marker) and is not empty: it holds .tmp-cache/, `);
      expect(line).toContain("pull/, report.md, settings.json");
      expect(line).toContain("--force does not change this");
      expect(r.stdout).toBe(""); // refused before the settings are even printed
      expect(snapshot(dir)).toEqual(before);
    }
  });

  test("realign demo", () => {
    const dir = userFolder();
    const before = snapshot(dir);
    const r = cli(["demo", "--out", dir]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toContain(`--out ${dir} is not a realign run directory`);
    expect(snapshot(dir)).toEqual(before);
  });

  test("batch: that model fails with the message, the next one runs", () => {
    const dir = fresh("batch");
    mkdirSync(dir);
    const user = userFolder();
    const before = snapshot(user);
    writeFileSync(join(dir, "models.yaml"), `defaults:\n  publish: false\nmodels:\n  - repo: test/mine\n    out: ${user}\n  - repo: test/fine\n`);
    const r = cli(["batch", "models.yaml", "--runs-dir", "summaries"], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(`test/mine: failed: run directory ${user} is not a realign run directory`);
    expect(r.stdout).toMatch(/test\/fine\s+ok/);
    expect(snapshot(user)).toEqual(before);
    expect(existsSync(join(dir, "runs", "test--fine", ".realign-run"))).toBe(true);
  });
});

describe("files in the way", () => {
  test("--out at an existing file, or under one: named, not a raw EEXIST; the file unchanged", () => {
    const file = join(fresh("f"), "notes.txt");
    mkdirSync(join(file, ".."));
    writeFileSync(join(file), "keep\n");
    const before = snapshot(join(file, ".."));
    const r = cli(["test/fake-model", "--no-publish", "--out", file]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(`realign: --out ${file} is a file, not a folder: give a new folder, an empty one, or a realign run directory`);
    const r2 = cli(["test/fake-model", "--no-publish", "--out", join(file, "run")]);
    expect(r2.code).toBe(2);
    expect(oneLine(r2.stderr)).toBe(`realign: --out ${join(file, "run")} cannot be created: ${file} is a file, not a folder`);
    expect(r.stderr + r2.stderr).not.toContain("EEXIST");
    expect(snapshot(join(file, ".."))).toEqual(before);
  });

  test("batch --runs-dir at a file: refused before any model runs", () => {
    const dir = fresh("runsdir");
    mkdirSync(dir);
    writeFileSync(join(dir, "summaries"), "a file\n");
    writeFileSync(join(dir, "models.yaml"), "defaults:\n  publish: false\nmodels:\n  - repo: test/fine\n");
    const r = cli(["batch", "models.yaml", "--runs-dir", "summaries"], { cwd: dir });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toBe(`realign: --runs-dir ${join(dir, "summaries")}: it is not a folder, so the batch summary cannot be written there`);
    expect(existsSync(join(dir, "runs"))).toBe(false);
  });

  test("--push-to file:<a user's folder> is refused; a folder realign published into is reused", () => {
    const target = userFolder();
    const before = snapshot(target);
    const out = fresh("out");
    const r = cli(["test/fake-model", "--push-to", `file:${target}`, "--out", out]);
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toContain(`--push-to file:${target} holds files realign did not publish (`);
    expect(snapshot(target)).toEqual(before);
    expect(existsSync(out)).toBe(false);
    const published = fresh("published");
    mkdirSync(published);
    writeFileSync(join(published, "README.md"), "---\nsettings_hash: abc\n---\n# card\n");
    expect(cli(["test/fake-model", "--push-to", `file:${published}`, "--out", out]).code).toBe(0);
  });
});

describe("a run refused before or at pull leaves nothing behind", () => {
  test("a failing first step: no run folder, not even the parents it created", () => {
    const base = fresh("base");
    mkdirSync(base);
    const r = cli(["test/fake-model", "--no-publish", "--out", join(base, "a", "b")], { env: { FAKE_FAIL_AT: "pull" } });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("realign: step pull failed: fake pull failure");
    expect(readdirSync(base)).toEqual([]);
  });

  test("a rejected checkpoint (real steps): exit 1, the message names the problem, no <out>/settings.json", () => {
    const model = fresh("falcon");
    mkdirSync(model);
    const demo = join(REPO_ROOT, "demo", "organism-llama");
    for (const f of readdirSync(demo)) if (f.endsWith(".json") || f.endsWith(".safetensors")) copyFileSync(join(demo, f), join(model, f));
    const cfg = JSON.parse(readFileSync(join(model, "config.json"), "utf8"));
    writeFileSync(join(model, "config.json"), JSON.stringify({ ...cfg, model_type: "falcon" }));
    const before = snapshot(model);
    const out = fresh("out");
    const r = cli([model, "--no-publish", "--out", out, "--device", "cpu"], { fake: false });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('step pull failed: model_type "falcon" is not supported');
    expect(existsSync(out)).toBe(false);
    expect(snapshot(model)).toEqual(before);
  });

  test("an earlier run re-run with settings its pull rejects: settings.json keeps the settings of its results", () => {
    const out = fresh("rerun");
    expect(cli(["test/fake-model", "--no-publish", "--out", out, "--n-train", "4"]).code).toBe(0);
    const settings = readFileSync(join(out, "settings.json"), "utf8");
    const r = cli(["test/fake-model", "--no-publish", "--out", out, "--n-train", "4", "--revision", "v2"], { env: { FAKE_FAIL_AT: "pull" } });
    expect(r.code).toBe(1);
    expect(readFileSync(join(out, "settings.json"), "utf8")).toBe(settings);
    expect(readdirSync(out).filter((f) => f.startsWith(".tmp-"))).toEqual([]);
  });
});

describe("run directories of earlier versions", () => {
  test("settings.json + step folders + report, no marker: adopted, steps stay up to date", () => {
    const out = fresh("legacy");
    expect(cli(["test/fake-model", "--no-publish", "--out", out]).code).toBe(0);
    rmSync(join(out, ".realign-run"));
    rmSync(join(out, ".realign-run.ledger"), { force: true });
    const r = cli(["test/fake-model", "--no-publish", "--out", out]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`adopted ${out}, a run directory of an earlier realign`);
    expect(r.stdout).toContain("extract: up to date");
    expect(existsSync(join(out, ".realign-run"))).toBe(true);
  });

  test("the demo's run directory with its published/ folder is adopted too", () => {
    const out = fresh("demo");
    expect(cli(["demo", "--out", out]).code).toBe(0);
    // What the real publish step leaves: <out>/published (and, killed mid-way, published.tmp-<pid>).
    mkdirSync(join(out, "published"));
    writeFileSync(join(out, "published", "README.md"), "---\nsettings_hash: old\n---\n");
    mkdirSync(join(out, "published.tmp-12345"));
    rmSync(join(out, ".realign-run"));
    const again = cli(["demo", "--out", out]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("adopted");
  });
});
