// Option values are taken as typed: the parser under cac reads "" as 0 and "007" as 7 (and a word
// after a boolean flag as a number). `generate --raw --prompt ""` must start from BOS alone and
// reproduce the HF greedy reference; every string-valued option keeps its text.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadTokenizer } from "../../engine/tokenizer.ts";
import { CLI, hasShared, REPO_ROOT, sharedPath } from "../helpers/shared.ts";

const BUN = process.execPath;
const REAL_CLI = join(REPO_ROOT, CLI);
const FAKE_CLI = join(REPO_ROOT, "tests", "helpers", "fixtures-runner", "fake-cli.ts");
const TMP = mkdtempSync(join(tmpdir(), "realign-optvalues-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));
let n = 0;
const fresh = (name = "d") => join(TMP, `${name}-${n++}`);

function cli(args: string[], o: { fake?: boolean; cwd?: string; env?: Record<string, string> } = {}) {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("REALIGN_") && !k.startsWith("FAKE_") && k !== "HF_TOKEN" && k !== "HUGGING_FACE_HUB_TOKEN") env[k] = v;
  }
  Object.assign(env, { HF_HOME: join(TMP, "hf-home"), REALIGN_CACHE: join(TMP, "cache"), NO_COLOR: "1" }, o.env);
  const r = Bun.spawnSync([BUN, o.fake ? FAKE_CLI : REAL_CLI, ...args], { cwd: o.cwd ?? TMP, env, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

const noStack = (s: string) => expect(s).not.toMatch(/\n\s+at .+:\d+:\d+/);

describe.skipIf(!hasShared())("generate: prompts as typed (stories260K)", () => {
  const STORIES = () => sharedPath("models", "stories260K");
  const gen = (...args: string[]) => cli(["generate", STORIES(), "--device", "cpu", "--json", ...args]);

  test('--raw --prompt "" generates from BOS alone and reproduces greedy_reference.json exactly', () => {
    const ref = JSON.parse(readFileSync(join(STORIES(), "greedy_reference.json"), "utf8")) as { prompt_ids: number[]; greedy_ids: number[] };
    expect(ref.prompt_ids).toEqual([1]);
    for (const prompt of [["--prompt", ""], ["--prompt="]]) {
      const r = gen("--raw", ...prompt, "--max-new-tokens", "40");
      expect(r.code).toBe(0);
      const got = JSON.parse(r.stdout) as { prompt_ids: number[]; new_ids: number[] };
      expect(got.prompt_ids).toEqual([1]);
      expect([...got.prompt_ids, ...got.new_ids]).toEqual(ref.greedy_ids);
    }
  });

  test('--prompt 007 stays the text "007" (also as --prompt=007 and after a boolean flag)', async () => {
    const tok = await loadTokenizer(STORIES());
    const want = tok.encode("007");
    expect(want).not.toEqual(tok.encode("7"));
    for (const args of [["--raw", "--prompt", "007"], ["--raw", "--prompt=007"], ["--prompt", "007", "--raw"]]) {
      const r = gen(...args, "--max-new-tokens", "2");
      expect(r.code).toBe(0);
      expect((JSON.parse(r.stdout) as { prompt_ids: number[] }).prompt_ids).toEqual(want);
    }
  });

  test("an empty prompt without --raw, --system with --raw, a bad --max-new-tokens: exit 2, one line", () => {
    const cases: [string[], string][] = [
      [["--prompt", ""], "realign: an empty --prompt needs --raw: the chat template needs an instruction"],
      [["--raw", "--prompt", "x", "--system", "0"], "realign: --system has no effect with --raw"],
      [["--raw", "--prompt", "x", "--max-new-tokens", ""], 'realign: --max-new-tokens must be a positive integer, got ""'],
      [["--raw", "--prompt", "x", "--max-new-tokens", "0x10"], 'realign: --max-new-tokens must be a positive integer, got "0x10"'],
    ];
    for (const [args, message] of cases) {
      const r = gen(...args);
      expect(r.code).toBe(2);
      expect(r.stderr.trimEnd().split("\n")).toHaveLength(1);
      expect(r.stderr).toStartWith(message);
      noStack(r.stderr);
    }
  });
});

describe("every string-valued option keeps its text", () => {
  test("a numeric-looking model directory after a boolean flag is not turned into a number", () => {
    const r = cli(["generate", "--raw", "007", "--prompt", "x"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("model directory 007 does not exist");
  });

  test("--out 007, --revision 0123, --push-to, --harmful with digits: as typed in settings.json", () => {
    const dir = fresh("cwd");
    mkdirSync(dir);
    const r = cli(["test/fake-model", "--out", "007", "--revision", "00012", "--no-publish", "--push-to", "me/0123"], { fake: true, cwd: dir });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const settings = JSON.parse(readFileSync(join(dir, "007", "settings.json"), "utf8"));
    expect(settings).toMatchObject({ out: "007", revision: "00012", pushTo: "me/0123" });
    // A dataset spec that looks like a number is a path, not the number.
    const h = cli(["test/fake-model", "--out", "x", "--no-publish", "--harmful", "0123"], { fake: true, cwd: dir });
    expect(h.code).toBe(2);
    expect(h.stderr).toContain(`realign: ${join(dir, "0123")}: unsupported extension`);
  });

  test("--token 0123 is a token (it used to be dropped as a number)", () => {
    const r = cli(["test/fake-model", "--out", fresh("tok"), "--token", "0123", "--push-to", "me/x"], { fake: true });
    // With the token seen, the next check is the confirmation, not "publishing needs a token".
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("pass --yes to confirm");
    expect(r.stderr).not.toContain("publishing needs a Hugging Face token");
    expect(r.stdout + r.stderr).not.toContain("0123");
  });

  test("status --out 0123, batch --runs-dir 2024, --config 007, --system-prompt 007", () => {
    const dir = fresh("cwd");
    mkdirSync(dir);
    const status = cli(["status", "--out", "0123"], { cwd: dir });
    expect(status.code).toBe(2);
    expect(status.stderr).toContain(`no run found at ${join(dir, "0123")}`);

    writeFileSync(join(dir, "models.yaml"), "defaults:\n  publish: false\nmodels:\n  - repo: test/fine\n");
    const batch = cli(["batch", "models.yaml", "--runs-dir", "2024"], { fake: true, cwd: dir });
    expect(batch.code).toBe(0);
    expect(readdirSync(join(dir, "2024"))[0]).toMatch(/^batch-.*\.json$/);

    const config = cli(["test/fake-model", "--config", "007", "--no-publish"], { fake: true, cwd: dir });
    expect(config.code).toBe(2);
    expect(config.stderr).toContain("007: file not found");

    const sp = cli(["test/fake-model", "--system-prompt", "007", "--no-publish", "--out", "y"], { fake: true, cwd: dir });
    expect(sp.code).toBe(2);
    expect(sp.stderr).toContain(`system prompt file not found: ${join(dir, "007")}`);
  });

  test("numeric settings still parse from their text; an empty one is named, not read as 0", () => {
    const r = cli(["test/fake-model", "--no-publish", "--n-train", ""], { fake: true });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--n-train: expected an integer, got ""');
    const ok = cli(["test/fake-model", "--no-publish", "--out", fresh("num"), "--n-train", "007", "--alpha=-2.5"], { fake: true });
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/n_train\s+7\s+\(cli --n-train\)/);
    expect(ok.stdout).toMatch(/alpha\s+-2\.5\s+\(cli --alpha\)/);
  });
});
