// Checked before a download: --device cuda where onnxruntime-node has no CUDA EP is a usage error
// (exit 2, one line saying how to install it), and nothing is pulled or written.
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { deviceUnavailable } from "../../engine/session.ts";

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
