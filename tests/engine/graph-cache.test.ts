// REALIGN_GRAPH_CACHE_GB: least recently used graphs are removed before a build that would not fit.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { GraphCacheError, graphCacheLimit, makeRoom } from "../../engine/graph-cache.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const work = mkdtempSync(join(tmpdir(), "realign-gcache-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const saved = process.env.REALIGN_GRAPH_CACHE_GB;
afterEach(() => {
  if (saved === undefined) delete process.env.REALIGN_GRAPH_CACHE_GB;
  else process.env.REALIGN_GRAPH_CACHE_GB = saved;
});

function fakeGraph(root: string, name: string, bytes: number, usedSecondsAgo: number): void {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "weights.bin"), new Uint8Array(bytes));
  const t = new Date(Date.now() - usedSecondsAgo * 1000);
  utimesSync(dir, t, t);
}

describe("graph cache cap", () => {
  test("the limit is read from REALIGN_GRAPH_CACHE_GB; nonsense is a clear error", () => {
    expect(graphCacheLimit({})).toBeNull();
    expect(graphCacheLimit({ REALIGN_GRAPH_CACHE_GB: "2.5" })).toBe(2.5e9);
    expect(() => graphCacheLimit({ REALIGN_GRAPH_CACHE_GB: "lots" })).toThrow(GraphCacheError);
    expect(() => graphCacheLimit({ REALIGN_GRAPH_CACHE_GB: "-1" })).toThrow(/positive number of gigabytes/);
  });

  test("removes the least recently used entries first, only as many as needed, never a build in progress", () => {
    const root = join(work, "unit");
    fakeGraph(root, "old", 400, 300);
    fakeGraph(root, "middle", 400, 200);
    fakeGraph(root, "recent", 400, 100);
    fakeGraph(root, "x.tmp-1-2", 400, 400);
    // 1200 bytes present (the build in progress is not counted); 500 more under 1000 means dropping two.
    expect(makeRoom(root, 500, 1000)).toEqual(["old", "middle"]);
    expect(readdirSync(root).sort()).toEqual(["recent", "x.tmp-1-2"]);
    expect(makeRoom(root, 100, 1000)).toEqual([]);
  });

  test.skipIf(!hasShared())("a real build under a small cap evicts the other model's graph; the model still loads and runs", async () => {
    const cacheDir = join(work, "real");
    const llama = sharedPath("fixtures", "hf-golden", "llama");
    const qwen = sharedPath("fixtures", "hf-golden", "qwen2");
    const graphs = () => readdirSync(join(cacheDir, "graphs")).filter((n) => !n.includes(".tmp-"));
    // Each float32 fixture graph is ~0.58 MB: a 0.8 MB cap holds one of them.
    process.env.REALIGN_GRAPH_CACHE_GB = "0.0008";
    const a = await DecoderModel.load(llama, { device: "cpu", cacheDir });
    const first = graphs();
    expect(first.length).toBe(1);
    const b = await DecoderModel.load(qwen, { device: "cpu", cacheDir });
    expect(graphs().length).toBe(1);
    expect(graphs()[0]).not.toBe(first[0]);
    // The evicted graph's session keeps working (its weights were read or mapped before removal).
    const out = await a.forward({ inputIds: [[1, 2, 3]], attentionMask: [[1, 1, 1]], positionIds: [[0, 1, 2]], logitPositions: [[2]], noCache: true });
    expect(out.logits.every(Number.isFinite)).toBe(true);
    await a.close();
    await b.close();
    // Without a cap nothing is removed.
    delete process.env.REALIGN_GRAPH_CACHE_GB;
    const c = await DecoderModel.load(llama, { device: "cpu", cacheDir });
    expect(graphs().length).toBe(2);
    expect(existsSync(c.graphPath)).toBe(true);
    await c.close();
  });
});
