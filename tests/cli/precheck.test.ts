// Checked before a download: --device cuda where onnxruntime-node has no CUDA EP is a usage error
// (exit 2, one line saying how to install it), and nothing is pulled or written; so is publishing asked
// for explicitly (--push-to, publish: true) without a token.
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { deviceUnavailable } from "../../engine/session.ts";
import { missingTokenError } from "../../cli/batch.ts";
import { DEFAULTS, type Settings } from "../../steps/settings.ts";

const ROOT = resolve(import.meta.dir, "..", "..");

test("--device cuda without the CUDA EP: exit 2 before the pull, the install line, no run folder", () => {
  if (deviceUnavailable("cuda") === null) return console.warn("skipped: this onnxruntime-node has the CUDA EP");
  const dir = mkdtempSync(join(tmpdir(), "realign-precheck-"));
  try {
    const out = join(dir, "run");
    // An unreachable Hub: were the pull attempted, the error would be a network one, not this.
    const r = spawnSync(join(ROOT, "node_modules", ".bin", "bun"), [join(ROOT, "cli", "cli.ts"), "acme/some-model", "--device", "cuda", "--no-publish", "--out", out, "--hub-url", "http://127.0.0.1:9"], {
      cwd: dir,
      encoding: "utf8",
      env: { ...process.env, HF_TOKEN: "", HF_HOME: join(dir, "hf"), REALIGN_HUB_RETRY_DELAY_MS: "1" },
    });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("realign: --device cuda: the CUDA execution provider is not installed");
    expect(r.stderr).toContain("ONNXRUNTIME_NODE_INSTALL=cuda12 npm install");
    expect(r.stderr).not.toContain("127.0.0.1");
    expect(existsSync(out)).toBe(false);
    expect(existsSync(join(dir, "hf"))).toBe(false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// Publishing asked for explicitly without a token fails before the pull (exit 2); not asked for, the
// run goes on (tests/cli/publish-later.test.ts runs it) and missingTokenError says nothing.
const BUN = join(ROOT, "node_modules", ".bin", "bun");
function runWithoutToken(args: string[], extraEnv: Record<string, string> = {}) {
  const dir = mkdtempSync(join(tmpdir(), "realign-precheck-"));
  try {
    const out = join(dir, "run");
    const env: Record<string, string | undefined> = { ...process.env, HF_HOME: join(dir, "hf"), REALIGN_HUB_RETRY_DELAY_MS: "1", ...extraEnv };
    for (const k of ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "REALIGN_PUBLISH", "REALIGN_PUSH_TO"]) if (!(k in extraEnv)) delete env[k];
    const r = spawnSync(BUN, [join(ROOT, "cli", "cli.ts"), "acme/some-model", "--out", out, "--hub-url", "http://127.0.0.1:9", ...args], { cwd: dir, encoding: "utf8", env });
    return { ...r, outExists: existsSync(out), hfExists: existsSync(join(dir, "hf")) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("--push-to without a token: exit 2 before the pull, how to fix it, no run folder", () => {
  const r = runWithoutToken(["--push-to", "me/some-model-ROSI"]);
  expect(r.status).toBe(2);
  expect(r.stderr).toContain("publishing to me/some-model-ROSI was asked for (cli --push-to), but there is no Hugging Face token");
  expect(r.stderr).toContain("--no-publish");
  expect(r.stderr).not.toContain("127.0.0.1");
  expect(r.outExists).toBe(false);
  expect(r.hfExists).toBe(false);
});

test("publish: true set explicitly (REALIGN_PUBLISH) without a token: exit 2 before the pull", () => {
  const r = runWithoutToken([], { REALIGN_PUBLISH: "true" });
  expect(r.status).toBe(2);
  expect(r.stderr).toContain("publish: true was set (env REALIGN_PUBLISH), but there is no Hugging Face token");
  expect(r.outExists).toBe(false);
});

test("publishing not asked for explicitly, or a token at hand, or a local target: no error", () => {
  const settings = { ...DEFAULTS, model: "acme/m", out: "runs/acme--m" } as Settings;
  const defaults = Object.fromEntries(Object.keys(DEFAULTS).map((k) => [k, "default"]));
  expect(missingTokenError(settings, defaults, null)).toBeNull();
  expect(missingTokenError({ ...settings, pushTo: "me/m" }, { ...defaults, pushTo: "cli --push-to" }, "hf_x")).toBeNull();
  expect(missingTokenError({ ...settings, pushTo: "file:/tmp/x" }, { ...defaults, pushTo: "cli --push-to" }, null)).toBeNull();
  expect(missingTokenError({ ...settings, publish: false }, { ...defaults, publish: "cli --no-publish" }, null)).toBeNull();
  expect(missingTokenError({ ...settings, pushTo: "me/m" }, { ...defaults, pushTo: "models.yaml:3" }, null)).toContain("publishing to me/m was asked for (models.yaml:3)");
});

test("a bad REALIGN_ORT_THREADS, REALIGN_ORT_SPIN, REALIGN_ORT_PREPACK or REALIGN_MAX_BATCH: exit 2 before the pull, naming the variable, no run folder", () => {
  const dir = mkdtempSync(join(tmpdir(), "realign-precheck-"));
  try {
    for (const [name, value] of [["REALIGN_ORT_THREADS", "0"], ["REALIGN_ORT_SPIN", "maybe"], ["REALIGN_ORT_PREPACK", "on"], ["REALIGN_MAX_BATCH", "many"]] as const) {
      const out = join(dir, "run");
      const r = spawnSync(BUN, [join(ROOT, "cli", "cli.ts"), "acme/some-model", "--no-publish", "--out", out, "--hub-url", "http://127.0.0.1:9"], {
        cwd: dir,
        encoding: "utf8",
        env: { ...process.env, [name]: value, HF_HOME: join(dir, "hf"), REALIGN_HUB_RETRY_DELAY_MS: "1" },
      });
      expect(r.status).toBe(2);
      expect(r.stderr.trim()).toStartWith(`realign: ${name} must be `);
      expect(r.stderr).toContain(`got "${value}"`);
      expect(existsSync(out)).toBe(false);
      expect(existsSync(join(dir, "hf"))).toBe(false);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
