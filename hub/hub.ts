// Hub I/O for realign: pull a model into the standard Hugging Face cache, and publish a re-aligned
// model. All network calls go through @huggingface/hub (modelInfo, listFiles, fileDownloadInfo,
// downloadFile, whoAmI, createRepo, uploadFiles) against `hubUrl` (option, $HF_ENDPOINT, or
// https://huggingface.co), so tests against tests/fakehub.ts exercise the same code users run.
//
// Cache layout (compatible with Python huggingface_hub, so models it downloaded are reused):
//   <cache>/models--{owner}--{name}/blobs/<sha256 for LFS files | git blob sha1 otherwise>
//   <cache>/models--{owner}--{name}/snapshots/<commit>/<path>  → relative symlink into blobs/
//   <cache>/models--{owner}--{name}/refs/<revision>            → the commit sha
// Partial downloads live in blobs/<id>.incomplete and are resumed with HTTP Range.
import { createHash, type Hash } from "node:crypto";
import { createReadStream, existsSync } from "node:fs";
import { lstat, mkdir, open, readFile, readlink, readdir, rename, rm, stat, symlink, truncate, unlink, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import {
  HubApiError,
  createRepo,
  downloadFile,
  fileDownloadInfo,
  listFiles,
  modelInfo,
  uploadFiles,
  whoAmI,
  type ListFileEntry,
} from "@huggingface/hub";
import { parseModelCard } from "../report/modelcard.ts";

export const DEFAULT_HUB_URL = "https://huggingface.co";

export type HubErrorCode =
  | "bad_input" // caller passed something invalid (repo id, revision, token format, file list)
  | "auth" // token missing or rejected (401 with a token), lacking access (403, not gated), or no write access
  | "gated" // a gated repo without accepted access, or (no token sent) a private one
  | "not_found" // repo, revision or file does not exist
  | "not_cached" // offline and the cache lacks what is needed
  | "unsafe_path" // a remote path could escape the snapshot directory
  | "pickle_only" // only pickle weights: refused
  | "remote_code" // config needs trust_remote_code: refused
  | "no_weights" // nothing loadable in the repo
  | "bad_config" // config.json / index unreadable
  | "integrity" // size or hash mismatch
  | "http" // HTTP error status (after retries where retryable)
  | "timeout" // no data for timeoutMs (after retries)
  | "network" // connection errors (after retries)
  | "io"; // local filesystem errors (cache not writable, disk full)

/** Every failure of pull/publish. Messages are actionable and never contain the token. */
export class HubError extends Error {
  override name = "HubError";
  readonly code: HubErrorCode;
  readonly url?: string;
  readonly status?: number;
  /** Internal: whether another attempt may succeed (integrity errors, truncated bodies). */
  readonly retryable: boolean;
  constructor(code: HubErrorCode, message: string, extra: { url?: string; status?: number; retryable?: boolean; cause?: unknown } = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.code = code;
    this.url = extra.url;
    this.status = extra.status;
    this.retryable = extra.retryable ?? false;
  }
}

// ---------------------------------------------------------------------------------------------
// Configuration helpers
// ---------------------------------------------------------------------------------------------

/** Hub base URL: explicit option, else $HF_ENDPOINT, else https://huggingface.co (no trailing slash). */
export function resolveHubUrl(explicit?: string): string {
  const raw = explicit || process.env.HF_ENDPOINT || DEFAULT_HUB_URL;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new HubError("bad_input", `invalid Hub URL ${JSON.stringify(raw)} (from ${explicit ? "the hubUrl option" : "HF_ENDPOINT"}): expected e.g. https://huggingface.co`);
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") {
    throw new HubError("bad_input", `invalid Hub URL ${JSON.stringify(raw)}: only http(s) is supported`);
  }
  return raw.replace(/\/+$/, "");
}

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

function validateRevision(revision: string): void {
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

const HEX40 = /^[0-9a-f]{40}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const PICKLE_RE = /\.(bin|pt|pth|ckpt)$/i;
// README.md is the model card: its front matter carries the licence the re-aligned model inherits.
const METADATA_FILES = new Set(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "README.md"]);
const INDEX_FILE = "model.safetensors.index.json";

function redact(text: string, token: string | undefined): string {
  return token && token.length >= 4 ? text.split(token).join("***") : text;
}

function checkTokenFormat(token: string | undefined, from: string): void {
  // The client library throws on tokens without the hf_ prefix; say where the token came from instead.
  if (token !== undefined && !token.startsWith("hf_")) {
    throw new HubError("bad_input", `the Hugging Face token (${from}) must start with "hf_": create one at https://huggingface.co/settings/tokens`);
  }
}

// ---------------------------------------------------------------------------------------------
// Retries, timeouts and error classification
// ---------------------------------------------------------------------------------------------

interface NetCtx {
  repoId: string;
  hubUrl: string;
  token: string | undefined;
  retries: number;
  retryDelayMs: number;
  timeoutMs: number;
}

/**
 * A fetch wrapper for one attempt: remembers the last URL/status (the library's WebBlob streams
 * turn HTTP errors into bare strings), enforces an idle timeout (reset by kick() on progress), and
 * notices servers that ignore Range.
 */
class Attempt {
  lastUrl: string | undefined;
  lastStatus: number | undefined;
  /** The Hub's X-Error-Code of the last error response ("GatedRepo", "RepoNotFound", …). */
  lastErrorCode: string | undefined;
  rangeIgnored = false;
  timedOut = false;
  private controllers = new Set<AbortController>();
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly timeoutMs: number) {}

  kick(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timedOut = true;
      for (const c of this.controllers) c.abort(new Error(`no data for ${this.timeoutMs} ms`));
    }, this.timeoutMs);
  }

  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  readonly fetch = (async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    const ctl = new AbortController();
    this.controllers.add(ctl);
    this.lastUrl = url;
    this.lastStatus = undefined;
    this.lastErrorCode = undefined;
    const signal = init?.signal ? AbortSignal.any([init.signal, ctl.signal]) : ctl.signal;
    const range = new Headers(init?.headers).get("range");
    this.kick();
    const res = await fetch(input, { ...init, signal });
    this.kick();
    this.lastStatus = res.status;
    if (res.status >= 400) this.lastErrorCode = res.headers.get("x-error-code") ?? undefined;
    if (res.url) this.lastUrl = res.url;
    const m = range ? /^bytes=(\d+)-/.exec(range) : null;
    if (m && Number(m[1]) > 0 && res.status === 200) this.rangeIgnored = true;
    return res;
  }) as typeof fetch;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * A 401 or 403, told apart as the Hub means them: with a token, 401 is the token itself rejected
 * (invalid, expired, revoked); 403 with X-Error-Code GatedRepo is an account that was not granted
 * access to a gated repo, any other 403 a token without permission for the repo. Without a token the
 * Hub answers 401 for gated (GatedRepo), private and missing repos alike.
 */
function accessError(ctx: NetCtx, status: number, url: string | undefined, errorCode: string | undefined, detail: string): HubError {
  const page = `${ctx.hubUrl}/${ctx.repoId}`;
  const gated = errorCode === "GatedRepo";
  const said = detail.replace(/\.?\s*URL: .*$/s, "").trim();
  if (ctx.token && status === 401) {
    return new HubError(
      "auth",
      `the Hugging Face token was rejected by ${ctx.hubUrl} (HTTP 401${said ? `: ${said}` : ""}): it is invalid, expired or revoked; check HF_TOKEN or --token (tokens: ${ctx.hubUrl}/settings/tokens)`,
      { status, url },
    );
  }
  if (ctx.token && gated) {
    return new HubError(
      "gated",
      `repo ${ctx.repoId} is gated and the token's account has not been granted access (HTTP 403; the token itself is valid): accept its licence or request access on the Hub page ${page}, then retry once access is granted`,
      { status, url },
    );
  }
  if (ctx.token) {
    return new HubError(
      "auth",
      `the Hugging Face token has no access to ${ctx.repoId} (HTTP 403${said ? `: ${said}` : ""}): a fine-grained token needs read access to this repo (or its owner's repos); check HF_TOKEN or --token`,
      { status, url },
    );
  }
  if (gated) {
    return new HubError(
      "gated",
      `repo ${ctx.repoId} is gated or private (HTTP ${status}; the Hub says it is gated and no token was sent): accept its licence on the Hub page ${page} and set HF_TOKEN to a token of that account`,
      { status, url },
    );
  }
  return new HubError("gated", `repo ${ctx.repoId} is gated or private (HTTP ${status}): accept its licence on the Hub page ${page} and set HF_TOKEN`, { status, url });
}

/** Run `fn` with retries: 429/5xx, timeouts, connection errors and retryable HubErrors back off exponentially. */
async function withRetry<T>(ctx: NetCtx, what: string, fn: (a: Attempt) => Promise<T>): Promise<T> {
  const attempts = Math.max(0, ctx.retries) + 1;
  for (let i = 1; ; i++) {
    const a = new Attempt(ctx.timeoutMs);
    let failure: HubError;
    let retry: boolean;
    try {
      return await fn(a);
    } catch (err) {
      ({ failure, retry } = classify(ctx, what, err, a));
    } finally {
      a.dispose();
    }
    if (!retry) throw failure;
    if (i >= attempts) {
      throw new HubError(failure.code, `${failure.message} (gave up after ${attempts} attempt${attempts > 1 ? "s" : ""})`, {
        url: failure.url,
        status: failure.status,
      });
    }
    await sleep(Math.min(ctx.retryDelayMs * 2 ** (i - 1), 30_000));
  }
}

function classify(ctx: NetCtx, what: string, err: unknown, a: Attempt): { failure: HubError; retry: boolean } {
  if (err instanceof HubError) return { failure: err, retry: err.retryable };
  const status = err instanceof HubApiError ? err.statusCode : a.lastStatus !== undefined && a.lastStatus >= 400 ? a.lastStatus : undefined;
  const url = err instanceof HubApiError ? err.url || a.lastUrl : a.lastUrl;
  const detail = redact(err instanceof Error ? err.message : String(err), ctx.token);
  if (status !== undefined) {
    if (status === 401 || status === 403) return { failure: accessError(ctx, status, url, a.lastErrorCode, detail), retry: false };
    if (status === 404) {
      return { failure: new HubError("not_found", `${what}: not found on ${ctx.hubUrl} (HTTP 404 from ${url}): ${detail}`, { status, url }), retry: false };
    }
    const retry = status === 408 || status === 429 || status >= 500;
    return { failure: new HubError("http", `${what}: HTTP ${status} from ${url}`, { status, url }), retry };
  }
  if (a.timedOut) {
    return { failure: new HubError("timeout", `${what}: no data from ${url ?? ctx.hubUrl} for ${ctx.timeoutMs} ms`, { url }), retry: true };
  }
  if (err instanceof TypeError && /access token/i.test(detail)) {
    return { failure: new HubError("bad_input", `${what}: ${detail}`), retry: false };
  }
  const errno = (err as { code?: unknown } | null)?.code;
  if (typeof errno === "string" && /^E[A-Z]+$/.test(errno) && (err as { syscall?: unknown }).syscall !== undefined) {
    // Local filesystem trouble (EACCES, ENOSPC, …): retrying will not help.
    return { failure: new HubError("io", `${what}: local file error: ${detail}`), retry: false };
  }
  if (err instanceof SyntaxError) {
    return { failure: new HubError("http", `${what}: malformed response from ${url}: ${detail}`, { url }), retry: true };
  }
  return { failure: new HubError("network", `${what}: connection error for ${url ?? ctx.hubUrl}: ${detail}`, { url }), retry: true };
}

// ---------------------------------------------------------------------------------------------
// Hashing and the blob store
// ---------------------------------------------------------------------------------------------

/** What a blob must hash to: LFS files by sha256, regular git files by git blob sha1. */
interface BlobCheck {
  id: string;
  kind: "sha256" | "git-sha1";
  size: number | undefined;
}

function newHasher(check: BlobCheck, size: number): Hash {
  const h = createHash(check.kind === "sha256" ? "sha256" : "sha1");
  if (check.kind === "git-sha1") h.update(`blob ${size}\0`);
  return h;
}

async function hashFile(path: string, h: Hash): Promise<void> {
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
}

/** The check implied by a blob's file name (Python-style cache ids). */
function checkFromBlobId(id: string): BlobCheck | null {
  if (HEX64.test(id)) return { id, kind: "sha256", size: undefined };
  if (HEX40.test(id)) return { id, kind: "git-sha1", size: undefined };
  return null;
}

/** True if `path` exists with the right size and hash; a blob that exists but is wrong is deleted. */
async function verifyBlob(path: string, check: BlobCheck): Promise<boolean> {
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
async function linkIntoSnapshot(snapshotDir: string, relPath: string, blobPath: string): Promise<void> {
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

// ---------------------------------------------------------------------------------------------
// pull
// ---------------------------------------------------------------------------------------------

export interface PullProgress {
  file: string;
  done: number;
  total: number;
}

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
  /** First backoff delay in ms, doubled each retry (max 30 s). Default 1000. */
  retryDelayMs?: number;
}

export interface PullResult {
  /** The snapshot directory (config.json, weights, tokenizer files). */
  dir: string;
  commit: string;
  /** Relative paths inside `dir`, sorted. */
  files: string[];
}

interface RemoteFile {
  path: string;
  size: number;
  check: BlobCheck;
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
      retryDelayMs: opts.retryDelayMs ?? 1000,
      timeoutMs: opts.timeoutMs ?? 60_000,
    };
    return await pullOnline(ctx, revision, repoDir, concurrency, opts.onProgress);
  } catch (e) {
    throw sanitize(e, token);
  }
}

/** Make sure whatever escapes carries no token and is a HubError. */
function sanitize(e: unknown, token: string | undefined): HubError {
  if (e instanceof HubError) {
    const msg = redact(e.message, token);
    return msg === e.message ? e : new HubError(e.code, msg, { url: e.url && redact(e.url, token), status: e.status });
  }
  const msg = redact(e instanceof Error ? e.message : String(e), token);
  const errno = (e as { code?: unknown } | null)?.code;
  const isIo = typeof errno === "string" && /^E[A-Z]+$/.test(errno);
  return new HubError(isIo ? "io" : "network", isIo ? `local file error: ${msg}` : msg);
}

async function pullOnline(ctx: NetCtx, revision: string, repoDir: string, concurrency: number, onProgress?: (e: PullProgress) => void): Promise<PullResult> {
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

  // 5. Everything else, in parallel.
  const rest = [...plan.metadata.filter((p) => p !== "config.json"), ...weights].map((p) => remote.get(p)!);
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

/** Reuse a verified cached blob or download it (resumable), then link it into the snapshot. */
async function ensureFile(
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

// ---------------------------------------------------------------------------------------------
// publish
// ---------------------------------------------------------------------------------------------

export interface PublishOptions {
  /** Local folder holding `files`. */
  dir: string;
  /** Target "owner/name"; default "<whoami name>/<defaultName>". */
  repo?: string;
  /** Repo name used when `repo` is not given, e.g. "<model-name>-ROSI". */
  defaultName: string;
  /** Visibility when the repo is created (existing repos are left as they are). */
  private?: boolean;
  hubUrl?: string;
  /** Write token. Never logged or put in errors. */
  token: string;
  /** Must equal the card's front-matter settings_hash; a repo whose README has it is left untouched. */
  settingsHash: string;
  commitMessage: string;
  /** Relative paths within `dir` (not README.md: the card is uploaded as README.md). */
  files: string[];
  /** README.md content (model card). */
  card: string;
  retries?: number;
  timeoutMs?: number;
  retryDelayMs?: number;
}

export interface PublishResult {
  repo: string;
  commit: string;
  url: string;
  /** True when the repo already had a card with this settings_hash (nothing uploaded). */
  skipped: boolean;
}

/**
 * Publish `files` + the card as README.md in one commit to `repo` (created if missing). Idempotent:
 * if the repo's README front matter already has this settings_hash, nothing is uploaded.
 */
export async function publishModel(opts: PublishOptions): Promise<PublishResult> {
  const token = opts.token;
  try {
    return await publishInner(opts);
  } catch (e) {
    throw sanitize(e, token);
  }
}

async function publishInner(opts: PublishOptions): Promise<PublishResult> {
  const { token } = opts;
  if (!token) throw new HubError("auth", "publishing needs a Hugging Face write token: set HF_TOKEN (https://huggingface.co/settings/tokens)");
  checkTokenFormat(token, "the token option");
  const hubUrl = resolveHubUrl(opts.hubUrl);
  if (!opts.settingsHash || /\s/.test(opts.settingsHash)) throw new HubError("bad_input", `settingsHash must be a non-empty string without spaces`);
  if (!opts.commitMessage?.trim()) throw new HubError("bad_input", "commitMessage must not be empty");
  if (!opts.repo && !isValidRepoName(opts.defaultName ?? "")) {
    throw new HubError("bad_input", `defaultName ${JSON.stringify(opts.defaultName)} is not a valid Hub repo name (letters, digits, "-", "_", "."; ≤ 96 chars; no "--" or "..")`);
  }

  // The card must carry the hash that makes re-publishing a no-op.
  const cardHash = parseModelCard(opts.card).frontMatter.settings_hash;
  if (String(cardHash ?? "") !== opts.settingsHash) {
    throw new HubError("bad_input", `the model card's front matter settings_hash (${JSON.stringify(cardHash ?? null)}) must equal settingsHash ${JSON.stringify(opts.settingsHash)}`);
  }

  // Validate the local files before any network call.
  const dir = resolve(opts.dir);
  if (!Array.isArray(opts.files) || opts.files.length === 0) throw new HubError("bad_input", "files must list at least one file to upload");
  const seen = new Set<string>();
  for (const p of opts.files) {
    if (!isSafeRepoPath(p, dir)) throw new HubError("bad_input", `file ${JSON.stringify(p)} must be a relative path inside ${dir} (no "..", backslashes or absolute paths)`);
    if (p.toLowerCase() === "readme.md") throw new HubError("bad_input", "files must not include README.md: the card is uploaded as README.md");
    if (seen.has(p)) throw new HubError("bad_input", `file ${JSON.stringify(p)} is listed twice`);
    seen.add(p);
    const st = await stat(join(dir, p)).catch(() => null);
    if (!st?.isFile()) throw new HubError("bad_input", `file ${JSON.stringify(p)} does not exist in ${dir} (or is not a regular file)`);
  }

  const base: NetCtx = {
    repoId: opts.repo ?? "",
    hubUrl,
    token,
    retries: opts.retries ?? 3,
    retryDelayMs: opts.retryDelayMs ?? 1000,
    timeoutMs: opts.timeoutMs ?? 60_000,
  };
  const authError = (what: string, e: unknown): HubError => {
    if (e instanceof HubError && e.status === 401) {
      return new HubError("auth", `${what}: the token was rejected (HTTP 401: invalid, expired or revoked); use a valid token with write access (HF_TOKEN)`, { status: e.status, url: e.url });
    }
    if (e instanceof HubError && (e.code === "gated" || e.status === 403)) {
      return new HubError("auth", `${what}: the token cannot write there (HTTP ${e.status}); use a token with write access to that namespace (HF_TOKEN)`, { status: e.status, url: e.url });
    }
    return e instanceof HubError ? e : new HubError("network", String(e));
  };

  // Target repo.
  let repoId = opts.repo;
  if (!repoId) {
    let me;
    try {
      me = await withRetry(base, "asking the Hub who the token belongs to", (a) => whoAmI({ accessToken: token, hubUrl, fetch: a.fetch }));
    } catch (e) {
      throw authError("whoami", e);
    }
    if (me.type === "app") throw new HubError("bad_input", `the token belongs to an app (${me.name}), not a user: pass an explicit repo "owner/name"`);
    repoId = `${me.name}/${opts.defaultName}`;
  }
  validateRepoId(repoId);
  const ctx: NetCtx = { ...base, repoId };
  const repo = { type: "model" as const, name: repoId };

  // Exists? → check the card; else create.
  let head: string | undefined;
  try {
    const info = await withRetry(ctx, `looking up ${repoId}`, (a) => modelInfo({ name: repoId, hubUrl, accessToken: token, additionalFields: ["sha"], fetch: a.fetch }));
    head = String(info.sha ?? "") || undefined;
  } catch (e) {
    if (!(e instanceof HubError && e.code === "not_found")) throw authError(`looking up ${repoId}`, e);
  }
  if (head === undefined) {
    try {
      await withRetry({ ...ctx, retries: 0 }, `creating ${repoId}`, (a) =>
        createRepo({ repo, accessToken: token, hubUrl, fetch: a.fetch, ...(opts.private === undefined ? {} : { visibility: opts.private ? "private" : "public" }) }),
      );
    } catch (e) {
      // 409: created concurrently; carry on with the commit.
      if (!(e instanceof HubError && e.status === 409)) throw authError(`creating ${repoId}`, e);
    }
  } else {
    const readme = await withRetry(ctx, `reading ${repoId}/README.md`, async (a) => {
      const blob = await downloadFile({ repo, path: "README.md", revision: head, hubUrl, accessToken: token, fetch: a.fetch, xet: false });
      return blob ? await blob.text() : null;
    }).catch((e) => {
      if (e instanceof HubError && e.code === "not_found") return null; // no card yet
      throw authError(`reading ${repoId}/README.md`, e);
    });
    if (readme !== null && existingHash(readme) === opts.settingsHash) {
      return { repo: repoId, commit: head, url: `${hubUrl}/${repoId}`, skipped: true };
    }
  }

  // One commit with everything. Not retried: a commit is not idempotent, and re-running publish is
  // (LFS objects already uploaded are skipped by the Hub).
  const files = [
    ...opts.files.map((p) => ({ path: p, content: Bun.file(join(dir, p)) as Blob })),
    { path: "README.md", content: new Blob([opts.card], { type: "text/markdown" }) },
  ];
  let out;
  try {
    out = await uploadFiles({ repo, files, commitTitle: opts.commitMessage, hubUrl, accessToken: token, ...(head ? { parentCommit: head } : {}) });
  } catch (e) {
    const status = e instanceof HubApiError ? e.statusCode : undefined;
    const url = e instanceof HubApiError ? e.url : undefined;
    const msg = redact(e instanceof Error ? e.message : String(e), token);
    if (status === 401 || status === 403) throw authError(`committing to ${repoId}`, new HubError("http", msg, { status, url }));
    if (status === 412) throw new HubError("http", `committing to ${repoId}: the repo changed while publishing (HTTP 412); run publish again`, { status, url });
    throw new HubError(status ? "http" : "network", `committing to ${repoId} failed${status ? ` (HTTP ${status})` : ""}: ${msg}`, { status, url });
  }
  const commit = out?.commit.oid;
  if (!commit) throw new HubError("http", `committing to ${repoId}: the Hub returned no commit id`);
  return { repo: repoId, commit, url: `${hubUrl}/${repoId}`, skipped: false };
}

function existingHash(readme: string): string | null {
  try {
    const v = parseModelCard(readme).frontMatter.settings_hash;
    return v === undefined || v === null ? null : String(v);
  } catch {
    return null; // an unparseable foreign README never matches
  }
}
