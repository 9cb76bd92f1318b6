// package.json `bin`: `npx realign` (and `npm link`) run the CLI. The shim is tracked with its
// executable bit, so a fresh clone has it; npx resolves the project's own bin without the network.
import { expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";

const ROOT = resolve(import.meta.dir, "..", "..");

test("package.json bin → an executable node shim, tracked by git as 100755", () => {
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { bin?: Record<string, string> };
  expect(pkg.bin?.realign).toBe("bin/realign.mjs");
  const shim = join(ROOT, pkg.bin!.realign!);
  expect(readFileSync(shim, "utf8").startsWith("#!/usr/bin/env node\n")).toBe(true);
  expect(statSync(shim).mode & 0o111).not.toBe(0);
  const tracked = spawnSync("git", ["ls-files", "-s", "bin/realign.mjs"], { cwd: ROOT, encoding: "utf8" });
  if (tracked.status !== 0) return console.warn("skipped the git check: not a git checkout");
  expect(tracked.stdout).toMatch(/^100755 /);
});

test("npx realign --help prints the usage and exits 0; a bad option exits 2 through the shim", () => {
  const env = { ...process.env, npm_config_offline: "true", npm_config_update_notifier: "false" };
  const help = spawnSync("npx", ["--no-install", "realign", "--help"], { cwd: ROOT, encoding: "utf8", env });
  expect(help.status).toBe(0);
  expect(help.stdout).toContain("$ realign <repo-id | local-dir> [options]");
  const bad = spawnSync("npx", ["--no-install", "realign", "demo", "--n-trian", "3"], { cwd: ROOT, encoding: "utf8", env });
  expect(bad.status).toBe(2);
  expect(bad.stderr).toContain("did you mean --n-train");
}, PIPELINE_TEST_TIMEOUT);
