// One file of a pinned commit into the cache: reuse its blob if it verifies, else download it into
// blobs/<id>.incomplete, resuming what an earlier attempt left there with HTTP Range (starting over
// when the server ignores Range), and link it into the snapshot. Guarantees: a blob is renamed into
// place only when its size and hash match the Hub's listing (a corrupt download is deleted); a
// truncated transfer keeps its partial file and fails retryably, so withRetry resumes it.
import { mkdir, open, rename, rm, stat, truncate } from "node:fs/promises";
import { join } from "node:path";
import { downloadFile, fileDownloadInfo } from "@huggingface/hub";
import { hashFile, linkIntoSnapshot, newHasher, verifyBlob, type BlobCheck } from "./cache.ts";
import { HubError } from "./errors.ts";
import { withRetry, type Attempt, type NetCtx } from "./http.ts";

/** Progress of one file: `done` of its `total` bytes are in the cache. */
export interface PullProgress {
  file: string;
  done: number;
  total: number;
}

/** A file of the Hub listing: its path, size and what its blob must hash to. */
export interface RemoteFile {
  path: string;
  size: number;
  check: BlobCheck;
}

/** Reuse a verified cached blob or download it (resumable), then link it into the snapshot. */
export async function ensureFile(
  ctx: NetCtx,
  commit: string,
  f: RemoteFile,
  blobsDir: string,
  snapshotDir: string,
  onProgress?: (e: PullProgress) => void,
): Promise<void> {
  const blobPath = join(blobsDir, f.check.id);
  if (!(await verifyBlob(blobPath, f.check))) {
    await mkdir(blobsDir, { recursive: true });
    await withRetry(ctx, `downloading ${f.path} of ${ctx.repoId}`, (a) => downloadOnce(ctx, commit, f, blobPath, a, onProgress));
  } else {
    onProgress?.({ file: f.path, done: f.size, total: f.size });
  }
  await linkIntoSnapshot(snapshotDir, f.path, blobPath);
}

/** One download attempt into <blob>.incomplete, resuming what is there; verifies and renames into place. */
async function downloadOnce(ctx: NetCtx, commit: string, f: RemoteFile, blobPath: string, a: Attempt, onProgress?: (e: PullProgress) => void): Promise<void> {
  const partial = `${blobPath}.incomplete`;
  const total = f.size;
  let have = 0;
  try {
    have = (await stat(partial)).size;
  } catch {
    have = 0;
  }
  if (have > total) {
    await truncate(partial, 0);
    have = 0;
  }
  let hasher = newHasher(f.check, total);
  if (have > 0) await hashFile(partial, hasher);

  const repo = { type: "model" as const, name: ctx.repoId };
  const common = { repo, path: f.path, revision: commit, hubUrl: ctx.hubUrl, accessToken: ctx.token, fetch: a.fetch };
  const info = await fileDownloadInfo(common);
  if (!info) throw new HubError("not_found", `${ctx.repoId}: ${f.path} is listed at ${commit.slice(0, 8)} but the Hub says it does not exist`);
  if (info.size !== total) {
    throw new HubError("integrity", `${ctx.repoId}: ${f.path} is ${total} bytes in the listing but ${info.size} bytes at ${info.url}`, { url: info.url, retryable: true });
  }
  onProgress?.({ file: f.path, done: have, total });

  if (have < total) {
    // xet: false → plain HTTP (Range-capable) download of the resolve URL; the Hub redirects to its CDN.
    const blob = await downloadFile({ ...common, downloadInfo: info, xet: false });
    if (!blob) throw new HubError("not_found", `${ctx.repoId}: ${f.path} disappeared from the Hub`);
    const reader = (have > 0 ? blob.slice(have, total) : blob).stream().getReader();
    const fh = await open(partial, have > 0 ? "a" : "w");
    let first = true;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        a.kick();
        if (first && have > 0 && a.rangeIgnored) {
          // The server sent the whole file: start over rather than append it to the partial.
          await fh.truncate(0);
          have = 0;
          hasher = newHasher(f.check, total);
        }
        first = false;
        if (have + value.length > total) {
          await fh.close().catch(() => {});
          await rm(partial, { force: true });
          throw new HubError("integrity", `${ctx.repoId}: ${f.path}: the server sent more than the expected ${total} bytes`, { url: a.lastUrl, retryable: true });
        }
        await fh.write(value);
        hasher.update(value);
        have += value.length;
        onProgress?.({ file: f.path, done: have, total });
      }
    } finally {
      await fh.close().catch(() => {});
      reader.releaseLock();
    }
    if (have < total) {
      // Keep the partial file: the next attempt resumes it with a Range request.
      throw new HubError("network", `${ctx.repoId}: ${f.path}: connection closed after ${have} of ${total} bytes from ${a.lastUrl}`, { url: a.lastUrl, retryable: true });
    }
  }
  const got = hasher.digest("hex");
  if (got !== f.check.id) {
    await rm(partial, { force: true });
    throw new HubError(
      "integrity",
      `${ctx.repoId}: ${f.path} failed verification (${f.check.kind} ${got.slice(0, 12)}…, expected ${f.check.id.slice(0, 12)}…) from ${a.lastUrl ?? ctx.hubUrl}; the corrupt download was deleted`,
      { url: a.lastUrl, retryable: true },
    );
  }
  await rename(partial, blobPath);
}
