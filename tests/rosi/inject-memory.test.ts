// Streaming injection: peak RSS while rewriting a locally generated 2-shard ≥ 1 GB checkpoint stays
// below 1.5 × its largest tensor + 300 MB (the bench measures it in a child process).
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { REPO_ROOT, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";

const cache = mkdtempSync(join(tmpdir(), "realign-inject-mem-"));
afterAll(() => rmSync(cache, { recursive: true, force: true }));

test("peak RSS of the shard-by-shard rewrite is within 1.5 × largest tensor + 300 MB", async () => {
  const proc = Bun.spawn([process.execPath, "bench/inject-bench.ts", "--json"], { cwd: REPO_ROOT, env: { ...process.env, REALIGN_CACHE: cache }, stdout: "pipe", stderr: "pipe" });
  const out = await new Response(proc.stdout).text();
  expect(await proc.exited).toBe(0);
  const r = JSON.parse(out.trim().split("\n").pop()!) as { checkpoint_bytes: number; largest_tensor_bytes: number; peak_rss_mb: number; ratio_to_bound: number };
  expect(r.checkpoint_bytes).toBeGreaterThanOrEqual(1e9);
  expect(r.ratio_to_bound).toBeLessThan(1);
}, PIPELINE_TEST_TIMEOUT);
