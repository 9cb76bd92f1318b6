// The Hugging Face conventions (issue 13): HF_HUB_OFFLINE, HF_ENDPOINT, HF_HOME / HF_HUB_CACHE and
// HF_TOKEN_PATH honoured, with --offline / --hub-url winning; network errors (DNS failure, refused
// port) reported as network errors and retried with visible back-off lines, with a hint to use
// --offline when the model is in the cache. Back-off is zero here (retryDelayMs: 0,
// REALIGN_HUB_RETRY_DELAY_MS=0): nothing depends on the wall clock.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HubError, pullModel } from "../../hub/hub.ts";
import { FAKE_TOKEN, startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { CLI, REPO_ROOT, callerEnv } from "../helpers/shared.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-hub-env-"));
const FAKE_CLI = join(REPO_ROOT, "tests", "helpers", "fixtures-runner", "fake-cli.ts");
let n = 0;
const fresh = (name: string) => join(TMP, `${name}-${n++}`);
let hub: FakeHub;
/** A port nothing listens on: a fake hub started and stopped. */
let deadUrl = "";

const FILES = {
  "config.json": JSON.stringify({ architectures: ["LlamaForCausalLM"], model_type: "llama" }),
  "model.safetensors": new Uint8Array(64).fill(7),
};

beforeAll(async () => {
  hub = await startFakeHub();
  hub.addRepo("acme/tiny", FILES);
  const dead = await startFakeHub();
  deadUrl = dead.url;
  dead.stop();
});
afterAll(() => {
  hub?.stop();
  rmSync(TMP, { recursive: true, force: true });
});

async function pullError(p: Promise<unknown>): Promise<HubError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(HubError);
    return e as HubError;
  }
  throw new Error("expected the pull to fail");
}

describe("network errors are network errors, retried visibly", () => {
  test("a refused port: code network, 'connection refused', one back-off line per retry through log", async () => {
    const lines: string[] = [];
    const e = await pullError(pullModel("acme/tiny", { hubUrl: deadUrl, cacheDir: fresh("cache"), retries: 2, retryDelayMs: 0, log: (l) => lines.push(l) }));
    expect(e.code).toBe("network");
    expect(e.message).toContain(`connection refused by ${new URL(deadUrl).host}`);
    expect(e.message).toContain("(gave up after 3 attempts)");
    expect(e.message).not.toContain("local file error");
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^network error: resolving acme\/tiny@main: connection refused .*; retrying in 0 s \(2\/3\)$/);
    expect(lines[1]).toMatch(/retrying in 0 s \(3\/3\)$/);
  });

  test("a DNS failure (an .invalid host never resolves): network, 'cannot resolve', retried, never 'local file error'", async () => {
    const lines: string[] = [];
    const e = await pullError(pullModel("acme/tiny", { hubUrl: "http://no-such-hub.invalid", cacheDir: fresh("cache"), retries: 1, retryDelayMs: 0, log: (l) => lines.push(l) }));
    expect(e.code).toBe("network");
    expect(e.message).toMatch(/cannot resolve the host name no-such-hub\.invalid \(DNS lookup failed: (ENOTFOUND|EAI_[A-Z]+)\)/);
    expect(e.message).not.toContain("local file error");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain("retrying in 0 s (2/2)");
  });

  test("a model already in the cache: the network error says to use --offline", async () => {
    const cacheDir = fresh("cache");
    await pullModel("acme/tiny", { hubUrl: hub.url, cacheDir, retryDelayMs: 0 });
    const e = await pullError(pullModel("acme/tiny", { hubUrl: deadUrl, cacheDir, retries: 0 }));
    expect(e.code).toBe("network");
    expect(e.message).toContain("acme/tiny (revision main) is in the cache at");
    expect(e.message).toContain("run with --offline (or HF_HUB_OFFLINE=1) to use it");
    // Not in the cache: no such hint.
    const other = await pullError(pullModel("acme/other", { hubUrl: deadUrl, cacheDir, retries: 0 }));
    expect(other.message).not.toContain("--offline");
  });

  test("HF_HUB_OFFLINE=1 and HF_HUB_CACHE / HF_HOME are read by pullModel itself", async () => {
    const cacheDir = fresh("cache");
    await pullModel("acme/tiny", { hubUrl: hub.url, cacheDir, retryDelayMs: 0 });
    const saved = { offline: process.env.HF_HUB_OFFLINE, cache: process.env.HF_HUB_CACHE };
    try {
      process.env.HF_HUB_OFFLINE = "1";
      process.env.HF_HUB_CACHE = cacheDir;
      hub.resetLog();
      const r = await pullModel("acme/tiny", { hubUrl: hub.url });
      expect(r.dir.startsWith(cacheDir)).toBe(true);
      expect(hub.requests).toEqual([]);
    } finally {
      for (const [k, v] of [["HF_HUB_OFFLINE", saved.offline], ["HF_HUB_CACHE", saved.cache]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });
});

/** The caller's environment minus anything that could change settings or provide a token. */
function cleanEnv(extra: Record<string, string>): Record<string, string> {
  const env = callerEnv({ allHf: true });
  return { ...env, HF_HOME: join(TMP, "empty-hf-home"), NO_COLOR: "1", REALIGN_HUB_RETRY_DELAY_MS: "0", ...extra };
}

function cli(args: string[], extra: Record<string, string> = {}, fake = false) {
  const r = Bun.spawnSync([process.execPath, fake ? FAKE_CLI : join(REPO_ROOT, CLI), ...args], { cwd: TMP, env: cleanEnv(extra), stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** The same, without blocking this process (the fake hub lives in it and must answer the child). */
async function cliAsync(args: string[], extra: Record<string, string> = {}, fake = false) {
  const p = Bun.spawn([process.execPath, fake ? FAKE_CLI : join(REPO_ROOT, CLI), ...args], { cwd: TMP, env: cleanEnv(extra), stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, stdout, stderr };
}

describe("the CLI honours the HF_* variables (the command line still wins)", () => {
  test("--help says which variables are read", () => {
    const r = cli(["--help"]);
    expect(r.code).toBe(0);
    for (const v of ["HF_TOKEN_PATH", "HF_HUB_OFFLINE=1", "HF_ENDPOINT", "HF_HOME, HF_HUB_CACHE"]) expect(r.stdout).toContain(v);
  });

  test("HF_HUB_OFFLINE=1: offline (source named), nothing fetched; the cache is HF_HUB_CACHE's", () => {
    const out = fresh("run");
    const cache = fresh("hf-cache");
    const r = cli(["acme/tiny", "--out", out, "--no-publish"], { HF_HUB_OFFLINE: "1", HF_HUB_CACHE: cache, HF_ENDPOINT: hub.url });
    expect(r.stdout).toMatch(/offline\s+true\s+\(env HF_HUB_OFFLINE\)/);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`offline: acme/tiny (revision main) is not usable from the cache at ${join(cache, "models--acme--tiny")}`);
    expect(existsSync(out)).toBe(false);
  });

  test("HF_HOME: the cache is $HF_HOME/hub", () => {
    const home = fresh("hf-home");
    const r = cli(["acme/tiny", "--out", fresh("run"), "--no-publish", "--offline"], { HF_HOME: home });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`the cache at ${join(home, "hub", "models--acme--tiny")}`);
  });

  test("HF_ENDPOINT is the Hub (a refused port: network error, visible retries); --hub-url wins over it", () => {
    const out = fresh("run");
    const r = cli(["acme/tiny", "--out", out, "--no-publish"], { HF_ENDPOINT: deadUrl });
    expect(r.stdout).toMatch(new RegExp(`hub_url\\s+"${deadUrl.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}"\\s+\\(env HF_ENDPOINT\\)`));
    expect(r.code).toBe(1);
    const all = r.stdout + r.stderr;
    expect(all).toContain(`connection refused by ${new URL(deadUrl).host}`);
    expect(all).toContain("retrying in 0 s (2/6)");
    expect(all).toContain("retrying in 0 s (6/6)");
    expect(all).not.toContain("local file error");
    expect(existsSync(out)).toBe(false);

    const wins = cli(["acme/tiny", "--out", fresh("run"), "--no-publish", "--hub-url", "http://no-such-hub.invalid"], { HF_ENDPOINT: deadUrl });
    expect(wins.stdout).toMatch(/hub_url\s+"http:\/\/no-such-hub\.invalid"\s+\(cli --hub-url\)/);
    expect(wins.stdout + wins.stderr).toContain("cannot resolve the host name no-such-hub.invalid");
  });

  test("a bad HF_ENDPOINT is a usage error naming the variable", () => {
    const r = cli(["acme/tiny", "--out", fresh("run"), "--no-publish"], { HF_ENDPOINT: "ftp://x" });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe('realign: HF_ENDPOINT: expected an http(s) URL, got "ftp://x"');
  });

  test("HF_TOKEN_PATH is where the token is; the confirmation names the real repo (whoami on HF_ENDPOINT)", async () => {
    const file = join(fresh("tok"), "token");
    mkdirSync(join(file, ".."), { recursive: true });
    writeFileSync(file, `${FAKE_TOKEN}\n`);
    const out = fresh("run");
    const r = await cliAsync(["test/fake-model", "--out", out], { HF_TOKEN_PATH: file, HF_ENDPOINT: hub.url }, true);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe("realign: this run would publish to alice/fake-model-ROSI on the Hub: pass --yes to confirm, or --no-publish to keep the result local");
    expect(r.stdout + r.stderr).not.toContain(FAKE_TOKEN);
    expect(existsSync(out)).toBe(false);
    // A rejected token is told before any download.
    writeFileSync(file, "hf_notAValidToken000000\n");
    const bad = await cliAsync(["test/fake-model", "--out", out], { HF_TOKEN_PATH: file, HF_ENDPOINT: hub.url }, true);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("the token was rejected");
    expect(existsSync(out)).toBe(false);
  });

  test("no token: the run does everything else, exit 0, and says how to publish later", () => {
    const out = fresh("run");
    const r = cli(["test/fake-model", "--out", out], {}, true);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split("\n").pop()).toBe(`not published (no token) — publish with \`realign publish ${out}\``);
    expect(readdirSync(out)).toContain("report.json");
  });
});
