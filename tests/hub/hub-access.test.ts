// 401, 403 and gated told apart (against the fake Hub, which answers as the Hub does: 401 for a
// token it does not know; 401 / 403 with X-Error-Code GatedRepo for a gated repo without / with a
// token lacking access; 401 RepoNotFound for anonymous callers of private or missing repos). The
// token never appears in a message; through the CLI the failure is one line and leaves no run folder.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HubError, publishModel, pullModel, type HubErrorCode, type PullOptions } from "../../hub/hub.ts";
import { FAKE_READ_TOKEN, FAKE_TOKEN, SCENARIO_REPOS, seedScenarioRepos, startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { CLI, REPO_ROOT } from "../helpers/shared.ts";

const CONFIG = JSON.stringify({ architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: 8, num_hidden_layers: 1, vocab_size: 16 });
const BAD_TOKEN = "hf_notARealTokenAtAll0123456789";

/** A safetensors file with one U8 tensor (8-byte header length, JSON header, data). */
function tinyWeights(): Uint8Array {
  let header = JSON.stringify({ w: { dtype: "U8", shape: [16], data_offsets: [0, 16] } });
  header += " ".repeat((8 - (header.length % 8)) % 8);
  const out = new Uint8Array(8 + header.length + 16);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.length), true);
  out.set(new TextEncoder().encode(header), 8);
  return out;
}

let hub: FakeHub;
const tmp = mkdtempSync(join(tmpdir(), "realign-hub-access-"));
const saved = { HF_TOKEN: process.env.HF_TOKEN, HF_ENDPOINT: process.env.HF_ENDPOINT, HF_HUB_OFFLINE: process.env.HF_HUB_OFFLINE };
beforeAll(async () => {
  for (const k of Object.keys(saved)) delete process.env[k];
  hub = await startFakeHub();
  seedScenarioRepos(hub, CONFIG, tinyWeights());
  hub.addRepo("open/model", { "config.json": CONFIG, "model.safetensors": tinyWeights() });
});
afterAll(() => {
  hub.stop();
  for (const [k, v] of Object.entries(saved)) if (v !== undefined) process.env[k] = v;
  rmSync(tmp, { recursive: true, force: true });
});

let c = 0;
const opts = (token?: string): PullOptions => ({ cacheDir: join(tmp, `cache-${c++}`), hubUrl: hub.url, token, retries: 2, retryDelayMs: 1, timeoutMs: 3000 });

async function hubError(p: Promise<unknown>, code: HubErrorCode, status: number): Promise<string> {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(HubError);
  expect((e as HubError).code).toBe(code);
  expect((e as HubError).status).toBe(status);
  const msg = (e as HubError).message;
  for (const t of [BAD_TOKEN, FAKE_TOKEN, FAKE_READ_TOKEN]) expect(msg).not.toContain(t);
  expect(msg).not.toContain("\n");
  return msg;
}

describe("pull: a bad token, a token without access and a gated repo are different messages", () => {
  test("an unknown token is reported as a rejected token (401), on public and gated repos alike", async () => {
    for (const repo of ["open/model", SCENARIO_REPOS.gated, SCENARIO_REPOS.private]) {
      const msg = await hubError(pullModel(repo, opts(BAD_TOKEN)), "auth", 401);
      expect(msg).toContain(`the Hugging Face token was rejected by ${hub.url} (HTTP 401: Invalid credentials in Authorization header)`);
      expect(msg).toContain("invalid, expired or revoked; check HF_TOKEN or --token");
      expect(msg).not.toContain("gated");
    }
  });

  test("a valid token whose account was not granted a gated repo: gated, 403, the token is fine", async () => {
    const msg = await hubError(pullModel(SCENARIO_REPOS.gated, opts(FAKE_READ_TOKEN)), "gated", 403);
    expect(msg).toContain(`repo ${SCENARIO_REPOS.gated} is gated and the token's account has not been granted access (HTTP 403; the token itself is valid)`);
    expect(msg).toContain(`${hub.url}/${SCENARIO_REPOS.gated}`);
  });

  test("no token on a gated repo: gated, 401, says it is gated and asks for a token", async () => {
    const msg = await hubError(pullModel(SCENARIO_REPOS.gated, opts()), "gated", 401);
    expect(msg).toContain("the Hub says it is gated and no token was sent");
    expect(msg).toContain("set HF_TOKEN");
  });

  test("a 403 that is not the gated-repo answer: the token lacks permission for the repo", async () => {
    hub.addFault({ match: /\/resolve\/.*\/model\.safetensors$/, kind: "status", status: 403 });
    const msg = await hubError(pullModel("open/model", opts(FAKE_TOKEN)), "auth", 403);
    expect(msg).toContain("the Hugging Face token has no access to open/model (HTTP 403");
    expect(msg).not.toContain("gated");
  });

  test("no token on a private or missing repo: gated-or-private, and it may not exist", async () => {
    const msg = await hubError(pullModel(SCENARIO_REPOS.private, opts()), "gated", 401);
    expect(msg).toContain("is gated or private");
    expect(msg).toContain("or it does not exist");
  });
});

test("publish: a rejected token and a read-only token say so", async () => {
  const dir = mkdtempSync(join(tmp, "pub-"));
  await Bun.write(join(dir, "model.safetensors"), tinyWeights());
  const p = (token: string) =>
    publishModel({ token, hubUrl: hub.url, defaultName: "x-ROSI", settingsHash: "h1", commitMessage: "publish", files: ["model.safetensors"], card: "---\nsettings_hash: h1\n---\n", dir, retryDelayMs: 1 });
  expect(await hubError(p(BAD_TOKEN), "auth", 401)).toContain("the token was rejected (HTTP 401: invalid, expired or revoked)");
  expect(await hubError(p(FAKE_READ_TOKEN), "auth", 403)).toContain("cannot write there (HTTP 403); use a token with write access");
});

test("through the CLI: one line naming the rejected token, exit 1, no run folder left", async () => {
  const out = join(tmp, "out");
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("REALIGN_") && !k.startsWith("HF_")) env[k] = v;
  // Spawned asynchronously: the fake Hub answers from this process's event loop.
  const proc = Bun.spawn([process.execPath, join(REPO_ROOT, CLI), "open/model", "--hub-url", hub.url, "--token", BAD_TOKEN, "--no-publish", "--out", out, "--device", "cpu"], {
    cwd: tmp,
    env: { ...env, HF_HOME: join(tmp, "hf-home"), REALIGN_CACHE: join(tmp, "cache"), NO_COLOR: "1" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [code, stdout, stderr] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  expect(code).toBe(1);
  expect(stderr).toContain("realign: step pull failed: the Hugging Face token was rejected by");
  expect(stderr).not.toMatch(/\n\s+at .+:\d+:\d+/);
  expect(stdout + stderr).not.toContain(BAD_TOKEN);
  expect(existsSync(out)).toBe(false);
});
