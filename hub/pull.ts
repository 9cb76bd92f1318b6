// pullModel: a model repo into the Hugging Face cache (cache.ts), and its snapshot directory back.
// Online, the revision is resolved to a commit first and everything after is pinned to it: the
// listing is checked for unsafe paths before anything is written, config.json is fetched first and a
// remote-code config refused before any weights, the index (if any) decides the shards, the rest is
// fetched in parallel (download.ts), and refs/<revision> is written last. Offline ($HF_HUB_OFFLINE or
// the option), only the cache is read, and every blob named by its hash is verified by it.
// Guarantees: pickle-only repos, remote-code configs and unsafe paths are refused; online, every file
// returned was verified by size and hash, cached or downloaded; any failure is a HubError whose
// message carries no token.
import { existsSync } from "node:fs";
import { lstat, mkdir, readFile, readdir, readlink, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import { listFiles, modelInfo, type ListFileEntry } from "@huggingface/hub";
import { HEX40, HEX64, checkFromBlobId, isSafeRepoPath, repoCacheDir, resolveCacheRoot, validateRepoId, validateRevision, verifyBlob, type BlobCheck } from "./cache.ts";
import { ensureFile, type PullProgress, type RemoteFile } from "./download.ts";
import { HubError, sanitize } from "./errors.ts";
import { checkTokenFormat, defaultRetryDelayMs, resolveHubUrl, withRetry, type NetCtx } from "./http.ts";

export type { PullProgress } from "./download.ts";

const PICKLE_RE = /\.(bin|pt|pth|ckpt)$/i;
// README.md is the model card: its front matter carries the licence the re-aligned model inherits.
const METADATA_FILES = new Set(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "README.md"]);
const INDEX_FILE = "model.safetensors.index.json";

export interface PullOptions {
  /** Branch, tag or commit sha. Default "main". */
  revision?: string;
  /** Cache root; default $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub. */
  cacheDir?: string;
  /** Hub base URL; default $HF_ENDPOINT or https://huggingface.co. */
  hubUrl?: string;
  /** Access token; default $HF_TOKEN. Never logged or put in errors. */
  token?: string;
  /** Use only the cache (default: $HF_HUB_OFFLINE=1). */
  offline?: boolean;
  /** Parallel file downloads. Default 4. */
  concurrency?: number;
  onProgress?: (e: PullProgress) => void;
  /** Retries per request after the first attempt. Default 5. */
  retries?: number;
  /** Idle timeout per request in ms (no bytes for this long → retry). Default 60 000. */
  timeoutMs?: number;
  /** First backoff delay in ms, doubled each retry (max 30 s). Default 1000 ($REALIGN_HUB_RETRY_DELAY_MS). */
  retryDelayMs?: number;
  /** Where back-off lines go ("…; retrying in 4 s (3/6)"). */
  log?: (line: string) => void;
  /**
   * Called online once config.json (and the index) are in and the files to fetch are known, before any
   * weights are downloaded; throwing stops the pull with that very error (e.g. not enough disk space).
   */
  beforeDownload?: (plan: DownloadPlan) => void | Promise<void>;
}

/** What an online pull is about to fetch: each file with its size and whether the cache has it already. */
export interface DownloadPlan {
  repoId: string;
  commit: string;
  /** The repo's cache folder (<cache>/models--owner--name). */
  repoDir: string;
  /** config.json as parsed. */
  config: Record<string, unknown>;
  weights: { path: string; size: number; cached: boolean }[];
  /** The other files (tokenizer, card, …). */
  metadata: { path: string; size: number; cached: boolean }[];
}

/** An error thrown by beforeDownload, carried past the Hub error handling unchanged. */
class PlanRefused {
  constructor(readonly error: unknown) {}
}

export interface PullResult {
  /** The snapshot directory (config.json, weights, tokenizer files). */
  dir: string;
  commit: string;
  /** Relative paths inside `dir`, sorted. */
  files: string[];
}

function envFlag(name: string): boolean {
  const v = (process.env[name] ?? "").toLowerCase();
  return v === "1" || v === "true" || v === "yes" || v === "on";
}

/**
 * Which files to fetch: metadata files at the top level; weights = the shards named by
 * model.safetensors.index.json if it exists, else model.safetensors if present, else every
 * top-level *.safetensors. Subfolders (e.g. original/, onnx/) are ignored. Refuses pickle-only repos.
 */
function planFiles(repoId: string, paths: string[], where: string): { metadata: string[]; hasIndex: boolean; weights: string[] } {
  const top = paths.filter((p) => !p.includes("/"));
  const metadata = top.filter((p) => METADATA_FILES.has(p));
  const hasIndex = top.includes(INDEX_FILE);
  const safetensors = top.filter((p) => p.endsWith(".safetensors"));
  if (!hasIndex && safetensors.length === 0) {
    const pickles = paths.filter((p) => PICKLE_RE.test(p));
    if (pickles.length > 0) {
      throw new HubError(
        "pickle_only",
        `refusing ${repoId}: ${where} has only pickle weights (${pickles.slice(0, 3).join(", ")}${pickles.length > 3 ? ", …" : ""}); realign never unpickles weights; use a revision with safetensors`,
      );
    }
    throw new HubError("no_weights", `${repoId}: ${where} has no *.safetensors weights (files: ${top.slice(0, 8).join(", ") || "none"})`);
  }
  const weights = hasIndex ? [] : safetensors.includes("model.safetensors") ? ["model.safetensors"] : safetensors;
  return { metadata, hasIndex, weights };
}

function parseJsonFile(text: string, what: string, repoId: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new HubError("bad_config", `${repoId}: ${what} is not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new HubError("bad_config", `${repoId}: ${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/** Refuse configs that need remote code: an `auto_map` means transformers would import the repo's own Python. */
function checkConfig(repoId: string, text: string): void {
  const cfg = parseJsonFile(text, "config.json", repoId);
  const autoMap = cfg.auto_map;
  if (autoMap !== undefined && autoMap !== null && !(typeof autoMap === "object" && Object.keys(autoMap).length === 0)) {
    const classes = typeof autoMap === "object" ? Object.values(autoMap as Record<string, unknown>).map(String).slice(0, 3).join(", ") : String(autoMap);
    throw new HubError(
      "remote_code",
      `refusing ${repoId}: its config.json has auto_map (${classes}), so it needs trust_remote_code (custom Python from the repo); realign only runs built-in architectures and never executes repo code`,
    );
  }
}

/** Shard file names from an index's weight_map, validated. */
function shardsOf(repoId: string, text: string, root: string): string[] {
  const idx = parseJsonFile(text, INDEX_FILE, repoId);
  const map = idx.weight_map;
  if (!map || typeof map !== "object" || Array.isArray(map)) {
    throw new HubError("bad_config", `${repoId}: ${INDEX_FILE} has no weight_map object`);
  }
  const shards = [...new Set(Object.values(map as Record<string, unknown>))];
  for (const s of shards) {
    if (!isSafeRepoPath(s, root) || !String(s).endsWith(".safetensors")) {
      throw new HubError("unsafe_path", `refusing ${repoId}: ${INDEX_FILE} names an unsafe or non-safetensors shard ${JSON.stringify(s)}`);
    }
  }
  if (shards.length === 0) throw new HubError("bad_config", `${repoId}: ${INDEX_FILE} names no shards`);
  return (shards as string[]).sort();
}

async function runPool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let firstError: unknown;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const item = items[next++];
      try {
        await fn(item);
      } catch (e) {
        if (!failed) firstError = e;
        failed = true;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed) throw firstError;
}

/**
 * Download `repoId` (config, tokenizer files, safetensors weights) into the Hugging Face cache and
 * return its snapshot directory. Safe: refuses pickle-only repos, remote-code configs and unsafe
 * paths; verifies size and hash of every file, cached or downloaded.
 */
export async function pullModel(repoId: string, opts: PullOptions = {}): Promise<PullResult> {
  const tokenFrom = opts.token !== undefined ? "the token option" : "HF_TOKEN";
  const token = opts.token ?? (process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN || undefined);
  try {
    validateRepoId(repoId);
    const revision = opts.revision ?? "main";
    validateRevision(revision);
    const concurrency = opts.concurrency ?? 4;
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new HubError("bad_input", `concurrency must be a positive integer, got ${concurrency}`);
    const repoDir = repoCacheDir(resolveCacheRoot(opts.cacheDir), repoId);
    if (opts.offline ?? envFlag("HF_HUB_OFFLINE")) return await pullOffline(repoId, revision, repoDir);
    checkTokenFormat(token, tokenFrom);
    const ctx: NetCtx = {
      repoId,
      hubUrl: resolveHubUrl(opts.hubUrl),
      token,
      retries: opts.retries ?? 5,
      retryDelayMs: opts.retryDelayMs ?? defaultRetryDelayMs(),
      timeoutMs: opts.timeoutMs ?? 60_000,
      log: opts.log,
    };
    try {
      return await pullOnline(ctx, revision, repoDir, concurrency, opts.onProgress, opts.beforeDownload);
    } catch (e) {
      // The Hub cannot be reached, but the cache may already hold the model: say how to use it.
      if (e instanceof PlanRefused) throw e;
      if (e instanceof HubError && (e.code === "network" || e.code === "timeout") && (await cachedSnapshot(repoDir, revision))) {
        throw new HubError(e.code, `${e.message}; ${repoId} (revision ${revision}) is in the cache at ${repoDir}: run with --offline (or HF_HUB_OFFLINE=1) to use it`, { url: e.url, status: e.status });
      }
      throw e;
    }
  } catch (e) {
    if (e instanceof PlanRefused) throw e.error;
    throw sanitize(e, token);
  }
}

async function pullOnline(ctx: NetCtx, revision: string, repoDir: string, concurrency: number, onProgress?: (e: PullProgress) => void, beforeDownload?: PullOptions["beforeDownload"]): Promise<PullResult> {
  const { repoId, hubUrl, token } = ctx;
  const repo = { type: "model" as const, name: repoId };

  // 1. Revision → commit (everything afterwards is pinned to it).
  let commit: string;
  try {
    const info = await withRetry(ctx, `resolving ${repoId}@${revision}`, (a) =>
      modelInfo({ name: repoId, revision, hubUrl, accessToken: token, additionalFields: ["sha"], fetch: a.fetch }),
    );
    commit = String(info.sha ?? "");
  } catch (e) {
    if (e instanceof HubError && e.code === "gated" && e.status === 401 && !token) {
      // Anonymous callers get 401 for missing repos too.
      throw new HubError("gated", `${e.message} (or it does not exist: check the id)`, { status: 401, url: e.url });
    }
    if (e instanceof HubError && e.code === "not_found") {
      throw new HubError("not_found", `model ${repoId} (revision ${revision}) not found on ${hubUrl}: check the id and revision (private repos also need HF_TOKEN)`, { status: 404, url: e.url });
    }
    throw e;
  }
  if (!HEX40.test(commit)) throw new HubError("http", `${hubUrl} returned an invalid commit id for ${repoId}@${revision}`);

  // 2. Listing, and validation of every path before anything is written.
  const snapshotDir = join(repoDir, "snapshots", commit);
  const entries = await withRetry(ctx, `listing files of ${repoId}@${commit.slice(0, 8)}`, async (a) => {
    const out: ListFileEntry[] = [];
    for await (const e of listFiles({ repo, revision: commit, recursive: true, hubUrl, accessToken: token, fetch: a.fetch })) out.push(e);
    return out;
  });
  for (const e of entries) {
    if (!isSafeRepoPath(e.path, snapshotDir)) {
      throw new HubError(
        "unsafe_path",
        `refusing ${repoId}: the Hub listing contains the unsafe path ${JSON.stringify(e.path)} (absolute, "..", backslash or escaping the snapshot); nothing was written`,
      );
    }
  }
  const remote = new Map<string, RemoteFile>();
  for (const e of entries) {
    if (e.type !== "file") continue;
    const lfsOid = e.lfs?.oid;
    const check: BlobCheck | null = lfsOid
      ? HEX64.test(lfsOid) ? { id: lfsOid, kind: "sha256", size: e.size } : null
      : e.oid && HEX40.test(e.oid) ? { id: e.oid, kind: "git-sha1", size: e.size } : null;
    if (!check) throw new HubError("http", `${repoId}: the Hub listing has no valid oid for ${JSON.stringify(e.path)}`);
    remote.set(e.path, { path: e.path, size: e.size, check });
  }
  const plan = planFiles(repoId, [...remote.keys()], `revision ${revision}`);
  if (!remote.has("config.json")) throw new HubError("no_weights", `${repoId}: revision ${revision} has no config.json; realign needs a transformers model`);

  const blobsDir = join(repoDir, "blobs");
  const fetchOne = (f: RemoteFile) => ensureFile(ctx, commit, f, blobsDir, snapshotDir, onProgress);

  // 3. config.json first: refuse remote code before downloading weights.
  await fetchOne(remote.get("config.json")!);
  checkConfig(repoId, await readFile(join(snapshotDir, "config.json"), "utf8"));

  // 4. The index decides the shards.
  let weights = plan.weights;
  if (plan.hasIndex) {
    await fetchOne(remote.get(INDEX_FILE)!);
    weights = shardsOf(repoId, await readFile(join(snapshotDir, INDEX_FILE), "utf8"), snapshotDir);
    const missing = weights.filter((s) => !remote.has(s));
    if (missing.length) throw new HubError("bad_config", `${repoId}: ${INDEX_FILE} names shard(s) the repo does not have: ${missing.join(", ")}`);
  }

  // 5. Everything else, in parallel, once the caller has seen what it will be (disk space).
  const rest = [...plan.metadata.filter((p) => p !== "config.json"), ...weights].map((p) => remote.get(p)!);
  if (beforeDownload) {
    const entry = (p: string) => ({ path: p, size: remote.get(p)!.size, cached: existsSync(join(blobsDir, remote.get(p)!.check.id)) });
    let config: Record<string, unknown> = {};
    try {
      config = JSON.parse(await readFile(join(snapshotDir, "config.json"), "utf8")) as Record<string, unknown>;
    } catch {
      // checkConfig has read it already; an odd one gives no dtype, and the caller assumes one
    }
    try {
      await beforeDownload({ repoId, commit, repoDir, config, weights: weights.map(entry), metadata: plan.metadata.filter((p) => p !== "config.json").map(entry) });
    } catch (e) {
      throw new PlanRefused(e);
    }
  }
  await runPool(rest, concurrency, fetchOne);

  // 6. refs/<revision> (not for a commit sha, as Python does).
  if (revision !== commit) {
    const refPath = join(repoDir, "refs", revision);
    await mkdir(dirname(refPath), { recursive: true });
    await writeFile(refPath, commit);
  }
  const files = ["config.json", ...(plan.hasIndex ? [INDEX_FILE] : []), ...rest.map((f) => f.path)].sort();
  return { dir: snapshotDir, commit, files };
}

/** Whether the cache holds a snapshot for `revision` (its ref, or the commit itself). */
async function cachedSnapshot(repoDir: string, revision: string): Promise<boolean> {
  let commit = revision;
  if (!HEX40.test(revision)) {
    try {
      commit = (await readFile(join(repoDir, "refs", revision), "utf8")).trim();
    } catch {
      return false;
    }
  }
  return HEX40.test(commit) && existsSync(join(repoDir, "snapshots", commit, "config.json"));
}

async function walkFiles(root: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  let entries;
  try {
    entries = await readdir(join(root, prefix), { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await walkFiles(root, rel)));
    else out.push(rel);
  }
  return out;
}

/** Offline: resolve refs/<revision>, check and verify the cached snapshot; no network. */
async function pullOffline(repoId: string, revision: string, repoDir: string): Promise<PullResult> {
  const notCached = (why: string) =>
    new HubError("not_cached", `offline: ${repoId} (revision ${revision}) is not usable from the cache at ${repoDir}: ${why}; run without --offline (and HF_HUB_OFFLINE unset) to download it`);
  let commit = revision;
  if (!HEX40.test(revision)) {
    try {
      commit = (await readFile(join(repoDir, "refs", revision), "utf8")).trim();
    } catch {
      throw notCached(`no refs/${revision}`);
    }
    if (!HEX40.test(commit)) throw notCached(`refs/${revision} does not hold a commit sha`);
  }
  const snapshotDir = join(repoDir, "snapshots", commit);
  if (!existsSync(snapshotDir)) throw notCached(`no snapshot for commit ${commit.slice(0, 8)}`);
  const local = await walkFiles(snapshotDir);
  const plan = planFiles(repoId, local, "the cached snapshot");
  if (!local.includes("config.json")) throw notCached("config.json is missing");
  checkConfig(repoId, await readFile(join(snapshotDir, "config.json"), "utf8"));
  let weights = plan.weights;
  if (plan.hasIndex) weights = shardsOf(repoId, await readFile(join(snapshotDir, INDEX_FILE), "utf8"), snapshotDir);
  const files = [...new Set([...plan.metadata, ...(plan.hasIndex ? [INDEX_FILE] : []), ...weights])].sort();
  for (const p of files) {
    const linkPath = join(snapshotDir, p);
    let blob: string;
    try {
      const st = await lstat(linkPath);
      blob = st.isSymbolicLink() ? resolve(dirname(linkPath), await readlink(linkPath)) : linkPath;
      await stat(blob);
    } catch {
      throw notCached(`${p} is missing`);
    }
    // Blob names are their hashes (sha256 for LFS, git sha1 otherwise): verify before trusting.
    const check = checkFromBlobId(blob.split(sep).pop() ?? "");
    if (check && !(await verifyBlob(blob, check))) throw notCached(`${p} was corrupted (deleted it)`);
  }
  return { dir: snapshotDir, commit, files };
}
