// `realign export <model-dir> --gguf` as users run it (spawned): a GGUF on success (exit 0, what was written and
// how to run it), and one-line usage errors with exit 2 that leave nothing behind: no --gguf, a bad --type (k-quants
// pointed to llama-quantize), a bad --pre / --pre-from, a missing model directory, an existing --out (never replaced), a model that cannot
// be exported.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CLI, REPO_ROOT, hasShared, sharedPath } from "../helpers/shared.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-export-cli-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

function cli(args: string[], cwd = TMP) {
  const r = Bun.spawnSync([process.execPath, join(REPO_ROOT, CLI), "export", ...args], { cwd, env: { ...process.env, NO_COLOR: "1" }, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

const oneLine = (s: string) => {
  expect(s.trim().split("\n").length).toBe(1);
  expect(s).not.toMatch(/\n\s+at .+:\d+:\d+/);
};

describe("realign export: usage errors exit 2 with one line", () => {
  test("no --gguf, no model dir, a missing dir, a file instead of a dir, k-quant --type, unknown option", () => {
    writeFileSync(join(TMP, "a-file"), "x");
    const cases: [string[], RegExp][] = [
      [[TMP], /export needs --gguf/],
      [["--gguf"], /export needs a model directory/],
      [["./nope", "--gguf"], /model directory \.\/nope does not exist/],
      [["a-file", "--gguf"], /a-file is not a model directory/],
      [[TMP, "--gguf", "--type", "q4_k_m"], /--type must be one of f32, f16, bf16, q8_0.*llama-quantize/],
      [[TMP, "--gguf", "--typ", "f16"], /unknown option --typ \(did you mean --type\?\)/],
      [[TMP, "--gguf", "--pre", "a b"], /--pre needs a llama\.cpp pre-tokenizer name/],
      [[TMP, "--gguf", "--pre-from", "nope.gguf"], /--pre-from needs an existing GGUF file/],
    ];
    for (const [args, message] of cases) {
      const r = cli(args);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stderr).toMatch(message);
      oneLine(r.stderr);
    }
    expect(readdirSync(TMP).filter((f) => f.endsWith(".gguf") || f.endsWith(".tmp"))).toEqual([]);
  });

  test("a model directory that cannot be exported (no tokenizer.json) is a usage error naming the file", () => {
    const dir = join(TMP, "no-tokenizer");
    mkdirSync(dir, { recursive: true });
    if (hasShared()) for (const f of ["config.json", "model.safetensors"]) writeFileSync(join(dir, f), readFileSync(sharedPath("fixtures", "hf-golden", "llama", f)));
    const r = cli([dir, "--gguf", "--out", "x.gguf"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(hasShared() ? /tokenizer\.json not found/ : /config\.json/);
    oneLine(r.stderr);
    expect(existsSync(join(TMP, "x.gguf"))).toBe(false);
  });
});

describe.skipIf(!hasShared())("realign export: success", () => {
  test("writes ./<model>-<TYPE>.gguf, says what it wrote and how to run it; a second run refuses to replace it (exit 2, file unchanged)", () => {
    const r = cli([sharedPath("models", "stories260K"), "--gguf", "--type", "q8_0"]);
    expect(r.code).toBe(0);
    const out = join(TMP, "stories260K-Q8_0.gguf");
    expect(existsSync(out)).toBe(true);
    expect(r.stdout).toContain(`wrote ${out}`);
    expect(r.stdout).toContain("q8_0, llama, 47 tensors");
    expect(r.stdout).toContain('pre-tokenizer "default"');
    expect(r.stdout).toMatch(/sha256: [0-9a-f]{64}/);
    expect(r.stdout).toContain("llama-cli -m stories260K-Q8_0.gguf");
    expect(r.stderr).toContain("written as F16"); // ffn_down rows of 172 cannot be Q8_0
    const before = readFileSync(out);
    const again = cli([sharedPath("models", "stories260K"), "--gguf", "--type", "q8_0"]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain("already exists; realign never replaces a file");
    oneLine(again.stderr);
    expect(readFileSync(out).equals(before)).toBe(true);
  });

  test("--json: the result as one JSON object (path, bytes, sha256, tokenizer and its pre-tokenizer choice)", () => {
    const r = cli([sharedPath("models", "organism-llama"), "--gguf", "--out", "org.gguf", "--json"]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as { path: string; bytes: number; type: string; tokenizer: { model: string; pre: { name: string } } };
    expect(j.path).toBe(join(TMP, "org.gguf"));
    expect(j.type).toBe("f16");
    expect(j.bytes).toBe(readFileSync(j.path).length);
    expect(j.tokenizer.model).toBe("gpt2");
    expect(j.tokenizer.pre.name).toBe("qwen2");
  });
});
