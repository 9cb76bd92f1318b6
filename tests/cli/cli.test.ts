// The CLI as users run it (spawned processes): usage errors exit 2 naming the problem and write
// nothing; --help has examples; end-to-end runs with fake steps (via tests/helpers/fixtures-runner/fake-cli.ts):
// caching, status, --from validation, gate failure (3), step failure (1), Ctrl-C (130), batch.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { REPO_ROOT, CLI, callerEnv } from "../helpers/shared.ts";

const REPO = REPO_ROOT;
const BUN = process.execPath;
const REAL_CLI = join(REPO, CLI);
const FAKE_CLI = join(REPO, "tests", "helpers", "fixtures-runner", "fake-cli.ts");
const TMP = mkdtempSync(join(tmpdir(), "realign-cli-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));
let n = 0;
const fresh = (name = "d") => join(TMP, `${name}-${n++}`);

/** The caller's environment minus anything that could change settings or provide a token. */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env = callerEnv();
  env.HF_HOME = join(TMP, "empty-hf-home");
  env.NO_COLOR = "1";
  return { ...env, ...extra };
}

function cli(args: string[], o: { fake?: boolean; cwd?: string; env?: Record<string, string> } = {}) {
  const r = Bun.spawnSync([BUN, o.fake ? FAKE_CLI : REAL_CLI, ...args], { cwd: o.cwd ?? TMP, env: cleanEnv(o.env), stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

const noStack = (s: string) => expect(s).not.toMatch(/\n\s+at .+:\d+:\d+/);
const leftovers = (dir: string) => readdirSync(dir).filter((f) => f.startsWith(".tmp-"));

describe("usage errors: exit 2, a clear message, nothing written", () => {
  test("unknown option", () => {
    const r = cli(["--bogus", "x"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown option --bogus");
    noStack(r.stderr);
  });

  test("unknown option with a suggestion", () => {
    const r = cli(["org/model", "--n-trian", "5"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown option --n-trian (did you mean --n-train?)");
  });

  test("missing local model directory: exit 2, out dir not created", () => {
    const out = fresh("out");
    const r = cli(["./no-such-model", "--out", out, "--no-publish"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`model directory not found: ${join(TMP, "no-such-model")}`);
    expect(existsSync(out)).toBe(false);
    noStack(r.stderr);
  });

  test("split sizes the prompt sets cannot hold: exit 2 before anything is pulled or written", () => {
    const out = fresh("out");
    const r = cli([join(REPO, "demo", "organism-llama"), "--out", out, "--no-publish", "--n-eval", "5000"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/the harmful prompt set builtin:harmful holds \d+ unique prompts, but --n-train 64 \+ --n-val 32 \+ --n-eval 5000 = 5096 are needed/);
    expect(r.stderr).toContain("the harmless prompt set builtin:harmless");
    expect(existsSync(out)).toBe(false);
    noStack(r.stderr);
  });

  test("model directory without *.safetensors", () => {
    const dir = fresh("model");
    mkdirSync(dir);
    writeFileSync(join(dir, "config.json"), "{}");
    const out = fresh("out");
    const r = cli([dir, "--out", out, "--no-publish"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`model directory has no *.safetensors files: ${dir}`);
    expect(existsSync(out)).toBe(false);
  });

  test("bad values, missing values, repeated options, extra arguments", () => {
    const cases: [string[], string][] = [
      [["org/model", "--n-train", "abc", "--no-publish"], '--n-train: expected an integer, got "abc"'],
      [["org/model", "--device", "gpu", "--no-publish"], "--device: expected one of auto, cpu, cuda, webgpu"],
      [["org/model", "--layer"], "--layer needs a value"],
      [["org/model", "--seed", "1", "--seed", "2"], "--seed was given more than once"],
      [["org/model", "extra"], "unexpected argument: extra"],
      [[], "no model given"],
      [["statsu"], "(did you mean `realign status`?)"],
      [["org/model", "--position", "-1"], "looks like a negative number: attach it with =, e.g. --position=-1"],
      [["status", "--bogus"], "unknown option --bogus; see realign status --help"],
    ];
    for (const [args, message] of cases) {
      const r = cli(args);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(message);
      noStack(r.stderr);
    }
  });

  test("invalid models.yaml names file, line and key", () => {
    const dir = fresh("cfg");
    mkdirSync(dir);
    writeFileSync(join(dir, "bad.yaml"), "defaults:\n  n_train: 8\nmodels:\n  - repo: org/model\n    alpah: 2\n");
    const r = cli(["org/model", "--config", "bad.yaml", "--no-publish"], { cwd: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("bad.yaml:5: models[0].alpah: unknown key (did you mean alpha?)");
    expect(existsSync(join(dir, "runs"))).toBe(false);
    expect(cli(["org/model", "--config", "missing.yaml"], { cwd: dir }).stderr).toContain("missing.yaml: file not found");
  });

  test("without a token the run does not publish (publish later, tests/cli/publish-later); with one it needs --yes when nobody can be asked", () => {
    const out = fresh("out");
    const noToken = cli(["test/fake-model", "--out", fresh("out")], { fake: true });
    expect(noToken.code).toBe(0);
    expect(noToken.stderr).toContain("note: no Hugging Face token");
    const noYes = cli(["test/fake-model", "--out", out, "--token", "hf_x"], { fake: true });
    expect(noYes.code).toBe(2);
    expect(noYes.stderr).toContain("pass --yes to confirm, or --no-publish");
    expect(noYes.stdout + noYes.stderr).not.toContain("hf_x");
    expect(existsSync(out)).toBe(false);
  });
});

describe("help", () => {
  test("--help lists commands, options and examples", () => {
    const r = cli(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Examples:");
    expect(r.stdout).toContain("realign cognitivecomputations/Dolphin3.0-Qwen2.5-0.5B --no-publish");
    for (const s of ["--n-train <n>", "--no-publish", "--no-system-prompt", "--from <step>", "--push-to <repo>", "batch [models-yaml]", "status [model]", "generate <model-dir>", "demo"]) {
      expect(r.stdout).toContain(s);
    }
    const batchHelp = cli(["batch", "--help"]);
    expect(batchHelp.code).toBe(0);
    expect(batchHelp.stdout).toContain("--schedule");
    expect(cli(["generate", "--help"]).stdout).toContain("--prompt <text>");
  });
});

describe("runs with fake steps", () => {
  test("run, cached re-run, settings with sources, status, --from validation", () => {
    const out = fresh("run");
    const first = cli(["test/fake-model", "--no-publish", "--out", out, "--n-train", "4", "--revision", "0123", "--position=-1"], { fake: true, env: { REALIGN_SEED: "7" } });
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/n_train\s+4\s+\(cli --n-train\)/);
    expect(first.stdout).toMatch(/seed\s+7\s+\(env REALIGN_SEED\)/);
    expect(first.stdout).toMatch(/revision\s+"0123"\s+\(cli --revision\)/);
    expect(first.stdout).toMatch(/publish\s+false\s+\(cli --no-publish\)/);
    expect(first.stdout).toContain("[extract] forward 6/6 (100%)");
    expect(first.stdout).toContain("harmful refusal: 10.0 % → 95.0 %");
    const settings = JSON.parse(readFileSync(join(out, "settings.json"), "utf8"));
    expect(settings).toMatchObject({ revision: "0123", nTrain: 4, seed: 7, publish: false, position: -1 });
    expect(existsSync(join(out, "report.md"))).toBe(true);

    const second = cli(["test/fake-model", "--no-publish", "--out", out, "--n-train", "4", "--revision", "0123", "--position=-1"], { fake: true, env: { REALIGN_SEED: "7" } });
    expect(second.code).toBe(0);
    expect(second.stdout).toContain("extract: up to date");
    expect(second.stdout).not.toContain("extract: running");

    const status = cli(["status", "--out", out]);
    expect(status.code).toBe(0);
    expect(status.stdout).toMatch(/pull\s+done/);
    expect(status.stdout).toMatch(/inject\s+not done/);
    expect(status.stdout).toContain("gate: passed");

    const reportBefore = readFileSync(join(out, "report.json"), "utf8");
    const badFrom = cli(["test/fake-model", "--no-publish", "--out", out, "--from", "extrct"], { fake: true });
    expect(badFrom.code).toBe(2);
    expect(badFrom.stderr).toContain('--from: unknown step "extrct" (steps: pull, elicit, extract, validate, publish)');
    expect(readFileSync(join(out, "report.json"), "utf8")).toBe(reportBefore);

    expect(cli(["status", "--out", fresh("none")]).code).toBe(2);
  });

  test("gate failure exits 3; a failing step exits 1 without a stack trace", () => {
    const gate = cli(["test/fake-model", "--no-publish", "--out", fresh("gate")], { fake: true, env: { FAKE_GATE_FAIL: "1" } });
    expect(gate.code).toBe(3);
    expect(gate.stderr).toContain("gate failed: harmful refusal 0.95 < 0.99");
    const out = fresh("fail");
    const fail = cli(["test/fake-model", "--no-publish", "--out", out], { fake: true, env: { FAKE_FAIL_AT: "extract" } });
    expect(fail.code).toBe(1);
    expect(fail.stderr).toContain("realign: step extract failed: fake extract failure");
    noStack(fail.stderr);
    expect(existsSync(join(out, "extract"))).toBe(false);
    expect(leftovers(out)).toEqual([]);
  });

  test("Ctrl-C stops cleanly with exit 130; the next run resumes", async () => {
    const out = fresh("sigint");
    const child = Bun.spawn([BUN, FAKE_CLI, "test/fake-model", "--no-publish", "--out", out], {
      cwd: TMP,
      env: cleanEnv({ FAKE_SLOW_MS: "150", FAKE_CHUNKS: "20", FAKE_MARKERS: "1" }),
      stdout: "pipe",
      stderr: "pipe",
    });
    const reader = child.stdout.getReader();
    let seen = "";
    while (!seen.includes("STEP extract chunk 1")) {
      const { value, done } = await reader.read();
      if (done) break;
      seen += new TextDecoder().decode(value);
    }
    child.kill("SIGINT");
    expect(await child.exited).toBe(130);
    expect(await new Response(child.stderr).text()).toContain("interrupted; re-run to resume");
    expect(leftovers(out)).toEqual([]);
    expect(existsSync(join(out, "extract"))).toBe(false);
    expect(existsSync(join(out, ".lock"))).toBe(false);
    const again = cli(["test/fake-model", "--no-publish", "--out", out], { fake: true });
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("elicit: up to date");
    expect(again.stdout).toContain("extract: running");
  });

  test("models.yaml in the working directory is used; env overrides it, the CLI overrides env", () => {
    const dir = fresh("yaml");
    mkdirSync(dir);
    writeFileSync(join(dir, "models.yaml"), "defaults:\n  n_train: 5\n  publish: false\nmodels:\n  - repo: test/fake-model\n    n_val: 3\n");
    const a = cli(["test/fake-model"], { fake: true, cwd: dir });
    expect(a.code).toBe(0);
    expect(a.stdout).toMatch(/n_train\s+5\s+\(models\.yaml:2 \(defaults\)\)/);
    expect(a.stdout).toMatch(/n_val\s+3\s+\(models\.yaml:6 \(models\[0\]\)\)/);
    expect(existsSync(join(dir, "runs", "test--fake-model", "report.json"))).toBe(true);
    const b = cli(["test/fake-model"], { fake: true, cwd: dir, env: { REALIGN_N_TRAIN: "6" } });
    expect(b.stdout).toMatch(/n_train\s+6\s+\(env REALIGN_N_TRAIN\)/);
    const c = cli(["test/fake-model", "--n-train", "7"], { fake: true, cwd: dir, env: { REALIGN_N_TRAIN: "6" } });
    expect(c.stdout).toMatch(/n_train\s+7\s+\(cli --n-train\)/);
  });

  test("batch: a failing model does not stop the next; summary lists both; exit 1", () => {
    const dir = fresh("batch");
    mkdirSync(dir);
    writeFileSync(
      join(dir, "models.yaml"),
      "defaults:\n  publish: false\nmodels:\n  - repo: test/broken\n    system_prompt: ./missing-prompt.md\n  - repo: test/fine\n",
    );
    const r = cli(["batch", "models.yaml", "--runs-dir", "summaries"], { fake: true, cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/test\/broken\s+failed/);
    expect(r.stdout).toMatch(/test\/fine\s+ok\s+passed\s+10.0 % → 95.0 %/);
    const summaries = readdirSync(join(dir, "summaries"));
    expect(summaries.length).toBe(1);
    expect(summaries[0]).toMatch(/^batch-.*\.json$/);
    expect(existsSync(join(dir, "runs", "test--fine", "report.json"))).toBe(true);
    expect(existsSync(join(dir, "runs", "test--broken"))).toBe(false);
  });
});
