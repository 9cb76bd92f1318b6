// Publishing when the user is ready (issue 13): a run without a token does everything else, exits 0
// and says how to publish later; `realign publish <run>` publishes it (the real target, files and
// sizes named first; --yes when nobody can be asked), is idempotent (no second commit), refuses an
// unfinished run (2) and a failed gate unless --force (3), and leaves the run and user folders as they
// were when it refuses. One real pipeline run on the demo model (given α, small sizes), then only
// the publish step runs. Back-off is zero (REALIGN_HUB_RETRY_DELAY_MS=0).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FAKE_TOKEN, startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { REPO_ROOT, PIPELINE_TEST_TIMEOUT, permissiveRunEnv, spawnCli } from "../helpers/shared.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-publish-later-"));
const RUN = join(TMP, "run");
const MODEL = join(REPO_ROOT, "demo", "organism-llama");
const TARGET = "alice/organism-llama-ROSI";
let hub: FakeHub;
let first = { code: null as number | null, stdout: "", stderr: "" };

// This test is about publishing, not the verdict: a permissive gate.
const cleanEnv = (extra: Record<string, string> = {}) => permissiveRunEnv(TMP, extra);
const realign = (args: string[], extra: Record<string, string> = {}) => spawnCli(args, { cwd: TMP, env: cleanEnv(extra) });
const withToken = () => ({ HF_TOKEN: FAKE_TOKEN, HF_ENDPOINT: hub.url });

/** Every file under `dir` with its sha256: "nothing changed" is this map unchanged. */
function snapshot(dir: string, prefix = ""): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of readdirSync(dir).sort()) {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) Object.assign(out, snapshot(p, `${prefix}${f}/`));
    else out[`${prefix}${f}`] = createHash("sha256").update(readFileSync(p)).digest("hex");
  }
  return out;
}
const readJson = (p: string) => JSON.parse(readFileSync(p, "utf8"));
const commits = () => hub.repos.get(TARGET)?.commits.size ?? 0;

beforeAll(async () => {
  hub = await startFakeHub();
  first = await realign([MODEL, "--out", RUN, "--alpha=-150", "--method", "rosi", "--n-train", "16", "--n-val", "16", "--n-eval", "16", "--max-new-tokens", "16", "--device", "cpu"]);
}, PIPELINE_TEST_TIMEOUT);
afterAll(() => {
  hub?.stop();
  rmSync(TMP, { recursive: true, force: true });
});

describe("a run without a token, published later", () => {
  test("the run: exit 0, everything but publishing done, the last lines say where the model is, how to try it and how to publish", () => {
    expect(first.code).toBe(0);
    const lines = first.stdout.trim().split("\n");
    expect(lines.slice(-3)).toEqual([
      `re-aligned model: ${join(RUN, "inject", "model")}`,
      `try it: realign chat ${RUN}   (--vs: next to the original)`,
      `not published (no token) — publish with \`realign publish ${RUN}\``,
    ]);
    expect(first.stderr).toContain("note: no Hugging Face token");
    expect(readJson(join(RUN, "publish", "published.json"))).toEqual({ skipped: "no token", target: null });
    expect(readJson(join(RUN, "report.json")).published).toBeNull();
    expect(hub.repos.size).toBe(0);
  });

  test("realign publish without a token: exit 2, one line, the run unchanged", async () => {
    const before = snapshot(RUN);
    const r = await realign(["publish", RUN], { HF_ENDPOINT: hub.url });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe("realign: publishing needs a Hugging Face write token: set HF_TOKEN (or HF_TOKEN_PATH, or log in with `huggingface-cli login`) or pass --token");
    expect(snapshot(RUN)).toEqual(before);
  });

  test("without --yes nobody can be asked: the real target, the files and sizes are shown, nothing uploaded (exit 2)", async () => {
    const before = snapshot(RUN);
    const r = await realign(["publish", RUN], withToken());
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(`realign: this would publish ${RUN} to ${TARGET}: pass --yes to confirm`);
    expect(r.stdout).toContain(`to ${TARGET} on ${hub.url}:`);
    expect(r.stdout).toMatch(/\n  model\.safetensors\s+\d+\.\d MB\n/);
    expect(r.stdout).toMatch(/\n  rosi-direction\.safetensors\s+\d+(\.\d)? [kM]?B\n/);
    expect(r.stdout).toMatch(/\n  README\.md\s+\d+(\.\d)? k?B\n/);
    expect(hub.repos.size).toBe(0);
    expect(snapshot(RUN)).toEqual(before);
  });

  test("--yes publishes: the repo holds the model and the card; the report says so; a second publish uploads nothing", async () => {
    const r = await realign(["publish", RUN, "--yes"], withToken());
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`published ${hub.url}/${TARGET}`);
    expect(r.stdout).toContain(`try it: realign chat ${RUN}`);
    const files = [...hub.filesAt(TARGET).keys()];
    for (const f of ["config.json", "model.safetensors", "rosi-direction.safetensors", "README.md"]) expect(files).toContain(f);
    expect(readJson(join(RUN, "report.json")).published.repo).toBe(TARGET);
    expect(readJson(join(RUN, "report.json")).baseline).not.toBeNull(); // the whole report, not the publish step's part only
    expect(r.stdout + r.stderr).not.toContain(FAKE_TOKEN);

    const n = commits();
    const again = await realign(["publish", RUN, "--yes"], withToken());
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(`${TARGET} already holds this run`);
    expect(commits()).toBe(n);
  }, PIPELINE_TEST_TIMEOUT);

  test("re-running the run with a token publishes (the publish step re-runs, nothing upstream)", async () => {
    const r = await realign([MODEL, "--out", RUN, "--alpha=-150", "--method", "rosi", "--n-train", "16", "--n-val", "16", "--n-eval", "16", "--max-new-tokens", "16", "--device", "cpu", "--push-to", "alice/second", "--yes"], withToken());
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("inject: up to date");
    expect(r.stdout).toContain("publish: running");
    expect(hub.repos.has("alice/second")).toBe(true);
    expect(r.stdout).not.toContain("not published");
  }, PIPELINE_TEST_TIMEOUT);

  test("--push-to file:<a user's folder> is refused and the folder unchanged; a new folder gets the repo's files", async () => {
    const user = join(TMP, "user-folder");
    mkdirSync(user);
    writeFileSync(join(user, "notes.txt"), "mine\n");
    const r = await realign(["publish", RUN, "--push-to", `file:${user}`, "--yes"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("holds files realign did not publish (notes.txt)");
    expect(readdirSync(user)).toEqual(["notes.txt"]);
    const target = join(TMP, "local-pub");
    const ok = await realign(["publish", RUN, "--push-to", `file:${target}`, "--yes"]);
    expect(ok.code).toBe(0);
    expect(readdirSync(target).sort()).toContain("rosi-direction.safetensors");
  }, PIPELINE_TEST_TIMEOUT);

  test("an unfinished run is refused (exit 2), a failed gate unless --force (exit 3); the copies are unchanged when refused", async () => {
    const unfinished = join(TMP, "unfinished");
    cpSync(RUN, unfinished, { recursive: true });
    rmSync(join(unfinished, "validate", ".done.json"));
    const before = snapshot(unfinished);
    const u = await realign(["publish", unfinished, "--yes", "--force"], withToken());
    expect(u.code).toBe(2);
    expect(u.stderr.trim()).toMatch(new RegExp(`^realign: ${unfinished.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} is unfinished: validate \\(previous result incomplete\\)`));
    expect(snapshot(unfinished)).toEqual(before);

    const failed = join(TMP, "failed");
    cpSync(RUN, failed, { recursive: true });
    rmSync(join(failed, "publish"), { recursive: true });
    const done = readJson(join(failed, "validate", ".done.json"));
    writeFileSync(join(failed, "validate", ".done.json"), JSON.stringify({ ...done, gate_failed: ["harmful refusal +0.0 points < +10"] }));
    // What validate records when its gate fails: the verdict in its report part too.
    const part = readJson(join(failed, "validate", "report-part.json"));
    writeFileSync(join(failed, "validate", "report-part.json"), JSON.stringify({ ...part, gate: { passed: false, reasons: ["harmful refusal +0.0 points < +10"] } }));
    const gateBefore = snapshot(failed);
    const g = await realign(["publish", failed, "--yes", "--push-to", `file:${join(TMP, "forced")}`]);
    expect(g.code).toBe(3);
    expect(g.stderr.trim()).toBe(`realign: the gate failed for ${failed} (harmful refusal +0.0 points < +10): not publishing; pass --force to publish it anyway`);
    expect(snapshot(failed)).toEqual(gateBefore);
    expect(existsSync(join(TMP, "forced"))).toBe(false);

    const f = await realign(["publish", failed, "--yes", "--force", "--push-to", `file:${join(TMP, "forced")}`]);
    expect(f.code).toBe(0);
    expect(readdirSync(join(TMP, "forced"))).toContain("README.md");
    expect(readJson(join(failed, "report.json")).gate.passed).toBe(false);
  }, PIPELINE_TEST_TIMEOUT);

  test("not a run directory: exit 2, one line", async () => {
    const dir = join(TMP, "plain");
    mkdirSync(dir);
    const r = await realign(["publish", dir, "--yes"], withToken());
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(`realign: ${dir} is not a realign run directory (it has no realign settings.json): give a folder a run wrote, e.g. runs/<model>`);
    expect(readdirSync(dir)).toEqual([]);
  });
});
