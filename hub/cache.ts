// The Hugging Face cache on disk, compatible with Python huggingface_hub (models it downloaded are
// reused, and it reuses ours):
//   <cache>/models--{owner}--{name}/blobs/<sha256 for LFS files | git blob sha1 otherwise>
//   <cache>/models--{owner}--{name}/snapshots/<commit>/<path>  → relative symlink into blobs/
//   <cache>/models--{owner}--{name}/refs/<revision>            → the commit sha
// Partial downloads live in blobs/<id>.incomplete (download.ts resumes them with HTTP Range).
// Guarantees: a repo id, revision or repo path from a caller or the Hub becomes a path only after it
// is checked to stay inside its folder; a blob is used only after its size and hash match its name,
// and one that does not match is deleted; a snapshot link is replaced atomically.
import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { lstat, mkdir, readlink, rename, rm, stat, symlink } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { HubError } from "./errors.ts";

const expandHome = (p: string) => (p === "~" || p.startsWith("~/") ? join(homedir(), p.slice(1)) : p);

/** Cache root, as Python huggingface_hub resolves it: cacheDir, $HF_HUB_CACHE, $HF_HOME/hub, $XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub. */
export function resolveCacheRoot(explicit?: string): string {
  const env = process.env;
  if (explicit) return resolve(expandHome(explicit));
  if (env.HF_HUB_CACHE) return resolve(expandHome(env.HF_HUB_CACHE));
  if (env.HF_HOME) return resolve(expandHome(env.HF_HOME), "hub");
  if (env.XDG_CACHE_HOME) return resolve(expandHome(env.XDG_CACHE_HOME), "huggingface", "hub");
  return join(homedir(), ".cache", "huggingface", "hub");
}

const NAME_RE = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$/;

/** Hub rules for a repo name part: alphanumerics, "-", "_", "."; no "--" or ".."; not starting/ending with "-" or "."; ≤ 96 chars. */
export function isValidRepoName(name: string): boolean {
  return NAME_RE.test(name) && !name.includes("--") && !name.includes("..");
}

/** Throws unless `repoId` is "owner/name" with Hub-valid parts (also keeps cache folder names unambiguous and inside the cache). */
export function validateRepoId(repoId: string): void {
  const parts = typeof repoId === "string" ? repoId.split("/") : [];
  if (parts.length !== 2 || !isValidRepoName(parts[0]) || !isValidRepoName(parts[1])) {
    throw new HubError(
      "bad_input",
      `${JSON.stringify(repoId)} is not a valid Hub model id: expected "owner/name" (letters, digits, "-", "_", "."; no "--" or ".."), e.g. "cognitivecomputations/dolphin-2.9-llama3-8b"`,
    );
  }
}

/** Throws unless `revision` is a branch, tag or commit sha that can name refs/<revision> safely. */
export function validateRevision(revision: string): void {
  const bad =
    !revision ||
    revision.length > 255 ||
    revision.startsWith("/") ||
    revision.endsWith("/") ||
    revision.includes("\\") ||
    revision.includes("\0") ||
    /\s/.test(revision) ||
    revision.split("/").some((s) => s === "" || s === "." || s === "..");
  if (bad) {
    throw new HubError("bad_input", `invalid revision ${JSON.stringify(revision)}: use a branch, tag or commit sha (e.g. "main")`);
  }
}

/** The cache folder of a model repo: <root>/models--{owner}--{name}. */
export function repoCacheDir(cacheRoot: string, repoId: string): string {
  validateRepoId(repoId);
  return join(cacheRoot, `models--${repoId.replace("/", "--")}`);
}

/**
 * Whether a repo-relative path from the Hub is safe to materialise under `root`: relative, forward
 * slashes only, no empty/"."/".." segments, and resolving inside `root`.
 */
export function isSafeRepoPath(p: unknown, root: string): p is string {
  if (typeof p !== "string" || p.length === 0 || p.length > 1024) return false;
  if (p.includes("\\") || p.includes("\0") || p.startsWith("/") || /^[A-Za-z]:/.test(p) || isAbsolute(p)) return false;
  if (p.split("/").some((s) => s === "" || s === "." || s === "..")) return false;
  const abs = resolve(root, p);
  return abs.startsWith(resolve(root) + sep);
}

/** A commit sha or a git blob sha1. */
export const HEX40 = /^[0-9a-f]{40}$/;
/** An LFS object's sha256. */
export const HEX64 = /^[0-9a-f]{64}$/;

/** What a blob must hash to: LFS files by sha256, regular git files by git blob sha1. */
export interface BlobCheck {
  id: string;
  kind: "sha256" | "git-sha1";
  size: number | undefined;
}

/** A hasher for `check`, primed with the git blob header for git-sha1. */
export function newHasher(check: BlobCheck, size: number): Hash {
  const h = createHash(check.kind === "sha256" ? "sha256" : "sha1");
  if (check.kind === "git-sha1") h.update(`blob ${size}\0`);
  return h;
}

/** Feed a file's bytes into `h`. */
export async function hashFile(path: string, h: Hash): Promise<void> {
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
}

/** The check implied by a blob's file name (Python-style cache ids). */
export function checkFromBlobId(id: string): BlobCheck | null {
  if (HEX64.test(id)) return { id, kind: "sha256", size: undefined };
  if (HEX40.test(id)) return { id, kind: "git-sha1", size: undefined };
  return null;
}

/** True if `path` exists with the right size and hash; a blob that exists but is wrong is deleted. */
export async function verifyBlob(path: string, check: BlobCheck): Promise<boolean> {
  let st;
  try {
    st = await stat(path);
  } catch {
    return false;
  }
  if (st.isFile() && (check.size === undefined || st.size === check.size)) {
    const h = newHasher(check, st.size);
    await hashFile(path, h);
    if (h.digest("hex") === check.id) return true;
  }
  // Wrong size or hash: never use it; remove it so it is downloaded again.
  await rm(path, { force: true, recursive: false }).catch(() => {});
  return false;
}

/** Point snapshots/<commit>/<path> at the blob with a relative symlink (atomic replace). */
export async function linkIntoSnapshot(snapshotDir: string, relPath: string, blobPath: string): Promise<void> {
  const linkPath = join(snapshotDir, relPath);
  await mkdir(dirname(linkPath), { recursive: true });
  const target = relative(dirname(linkPath), blobPath);
  try {
    const st = await lstat(linkPath);
    if (st.isSymbolicLink() && (await readlink(linkPath)) === target) return;
  } catch {
    // missing: create below
  }
  const tmp = `${linkPath}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  await symlink(target, tmp);
  await rename(tmp, linkPath);
}
