// Streaming GGUF export: peak RSS while exporting a locally generated 2-shard ≥ 1 GB BF16 checkpoint to f16 stays
// below 1.5 × its largest tensor + 300 MB (bench/gguf-memory.ts measures the export in a child process).
import { afterAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";

const cache = mkdtempSync(join(tmpdir(), "realign-gguf-mem-"));
afterAll(() => rmSync(cache, { recursive: true, force: true }));

test("peak RSS of the tensor-by-tensor GGUF export of a ≥ 1 GB checkpoint is within 1.5 × largest tensor + 300 MB", async () => {
  const proc = Bun.spawn([process.execPath, "bench/gguf-memory.ts", "--json"], { cwd: REPO_ROOT, env: { ...process.env, REALIGN_CACHE: cache }, stdout: "pipe", stderr: "pipe" });
  const out = await new Response(proc.stdout).text();
  const err = await new Response(proc.stderr).text();
  expect({ code: await proc.exited, err }).toEqual({ code: 0, err: "" });
  const r = JSON.parse(out.trim().split("\n").pop()!) as { checkpoint_bytes: number; gguf_bytes: number; peak_rss_mb: number; ratio_to_bound: number };
  expect(r.checkpoint_bytes).toBeGreaterThanOrEqual(1e9);
  expect(r.gguf_bytes).toBeGreaterThanOrEqual(r.checkpoint_bytes);
  expect(r.ratio_to_bound).toBeLessThan(1);
}, PIPELINE_TEST_TIMEOUT);
