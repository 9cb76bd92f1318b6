// Locates ../shared (fixtures, models, data). Tests that need it call `sharedOrSkip()`
// and are skipped with a loud message when it is absent; CI always has it.
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";

/** The repository root, and the `realign` entry point relative to it (spawn with cwd: REPO_ROOT). */
export const REPO_ROOT = resolve(import.meta.dir, "..", "..");
export const CLI = "cli/cli.ts";
/**
 * Time limit of a test that runs a pipeline or a model end to end: a safety net against a hang, not a
 * speed check (no test asserts on elapsed time), so generous enough that a loaded machine still passes.
 */
export const PIPELINE_TEST_TIMEOUT = 1_800_000;

export const SHARED_DIR = resolve(REPO_ROOT, "..", "shared");
export const HAS_SHARED = existsSync(join(SHARED_DIR, "README.md"));

let warned = false;
/** Returns true when ../shared is present; otherwise prints a loud warning once. Use with `test.skipIf(!hasShared())`. */
export function hasShared(): boolean {
  if (!HAS_SHARED && !warned) {
    warned = true;
    console.warn(`\n!!! ../shared not found at ${SHARED_DIR}: tests that need fixtures/models/data are SKIPPED !!!\n`);
  }
  return HAS_SHARED;
}

export const sharedPath = (...parts: string[]): string => join(SHARED_DIR, ...parts);

/**
 * The caller's environment without anything that could change realign's settings or hand it a token
 * (REALIGN_*, the fake Hub's FAKE_*, HF_TOKEN / HUGGING_FACE_HUB_TOKEN; with `allHf`, every HF_* variable).
 */
export function callerEnv(opts: { allHf?: boolean } = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || k.startsWith("REALIGN_") || k.startsWith("FAKE_") || k === "HUGGING_FACE_HUB_TOKEN") continue;
    if (opts.allHf ? k.startsWith("HF_") : k === "HF_TOKEN") continue;
    env[k] = v;
  }
  return env;
}

/**
 * The environment of a spawned CLI in a test about files rather than verdicts: callerEnv({allHf}),
 * HF_HOME and the graph cache under `tmp`, no Hub retry delay, and a gate that passes anything.
 */
export function permissiveRunEnv(tmp: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    ...callerEnv({ allHf: true }), HF_HOME: join(tmp, "hf-home"), NO_COLOR: "1", REALIGN_HUB_RETRY_DELAY_MS: "0", REALIGN_CACHE: join(tmp, "graphs"),
    REALIGN_ELICIT_MIN_GAP: "0", REALIGN_GATE_HARMFUL_GAIN: "0", REALIGN_GATE_OVER_REFUSAL: "1", REALIGN_GATE_KL: "100", REALIGN_GATE_UTILITY_DROP: "1",
    ...extra,
  };
}

/** The real CLI, spawned without blocking this process (a fake Hub may be serving from it), stdin closed. */
export async function spawnCli(args: string[], opts: { cwd: string; env: Record<string, string> }): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn([process.execPath, join(REPO_ROOT, CLI), ...args], { cwd: opts.cwd, env: opts.env, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [stdout, stderr] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, stdout, stderr };
}
