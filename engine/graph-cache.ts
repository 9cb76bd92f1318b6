// The graph cache, <cacheDir>/graphs/<key>/. A built graph holds a converted copy of the weights, so for
// large models each entry is as big as the checkpoint. REALIGN_GRAPH_CACHE_GB caps the folder: before
// a build, the least recently used graphs are removed until the new one fits. A graph still open in
// this or another process stays readable after removal (its files are open or mapped).
import { existsSync, readdirSync, rmSync, statSync, utimesSync } from "node:fs";
import { join } from "node:path";

export class GraphCacheError extends Error {
  override name = "GraphCacheError";
}

/** The cap in bytes from REALIGN_GRAPH_CACHE_GB, or null when unset (no cap). */
export function graphCacheLimit(env: Record<string, string | undefined> = process.env): number | null {
  const raw = env.REALIGN_GRAPH_CACHE_GB;
  if (raw === undefined || raw.trim() === "") return null;
  const gb = Number(raw);
  if (!Number.isFinite(gb) || gb <= 0) throw new GraphCacheError(`REALIGN_GRAPH_CACHE_GB must be a positive number of gigabytes, got "${raw}"`);
  return gb * 1e9;
}

function folderBytes(dir: string): number {
  let total = 0;
  for (const name of readdirSync(dir)) {
    const st = statSync(join(dir, name));
    total += st.isDirectory() ? folderBytes(join(dir, name)) : st.size;
  }
  return total;
}

/** Marks a graph as used now (the eviction order is by last use). */
export function touchGraph(graphDir: string): void {
  const now = new Date();
  try {
    utimesSync(graphDir, now, now);
  } catch {
    // read-only cache: eviction order falls back to build time
  }
}

/**
 * Removes least recently used graphs from `graphsDir` until `incomingBytes` more fit under `limitBytes`.
 * Folders being built (`*.tmp-*`) are never touched. Returns the removed keys.
 */
export function makeRoom(graphsDir: string, incomingBytes: number, limitBytes: number, log?: (msg: string) => void): string[] {
  if (!existsSync(graphsDir)) return [];
  const entries = readdirSync(graphsDir)
    .filter((name) => !name.includes(".tmp-"))
    .map((name) => {
      const dir = join(graphsDir, name);
      return { name, dir, used: statSync(dir).mtimeMs, bytes: folderBytes(dir) };
    })
    .sort((a, b) => a.used - b.used);
  let total = entries.reduce((s, e) => s + e.bytes, 0);
  const removed: string[] = [];
  for (const e of entries) {
    if (total + incomingBytes <= limitBytes) break;
    rmSync(e.dir, { recursive: true, force: true });
    total -= e.bytes;
    removed.push(e.name);
    log?.(`graph cache over REALIGN_GRAPH_CACHE_GB: removed ${e.name} (${(e.bytes / 1e9).toFixed(2)} GB, least recently used)`);
  }
  return removed;
}
