// publishModel: the re-aligned model's files and its card (README.md) in one commit to a Hub model
// repo, created if missing (default "<token's user>/<defaultName>"). Guarantees: everything local is
// checked before any network call (token, hash, commit message, each file a regular file inside dir);
// idempotent: when the repo's README already carries this settings_hash in its front matter nothing
// is uploaded (skipped: true); the commit itself is never retried (re-running publish is safe, LFS
// objects already uploaded are skipped by the Hub); a token that is rejected or cannot write is an
// "auth" HubError; no error carries the token.
import { stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { HubApiError, createRepo, downloadFile, modelInfo, uploadFiles, whoAmI } from "@huggingface/hub";
import { parseFrontMatter } from "../util/frontmatter.ts";
import { isSafeRepoPath, isValidRepoName, validateRepoId } from "./cache.ts";
import { HubError, redact, sanitize } from "./errors.ts";
import { checkTokenFormat, defaultRetryDelayMs, resolveHubUrl, withRetry, type NetCtx } from "./http.ts";

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
  /** Where back-off lines go ("…; retrying in 4 s (2/4)"). */
  log?: (line: string) => void;
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
  const cardHash = parseFrontMatter(opts.card, "model card").frontMatter.settings_hash;
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
    retryDelayMs: opts.retryDelayMs ?? defaultRetryDelayMs(),
    timeoutMs: opts.timeoutMs ?? 60_000,
    log: opts.log,
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
  const repoId = opts.repo ?? (await whoamiRepo(base, opts.defaultName, authError));
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

/** "<the token's user>/<name>", asking the Hub's whoami. */
async function whoamiRepo(base: NetCtx, name: string, authError: (what: string, e: unknown) => HubError): Promise<string> {
  let me;
  try {
    me = await withRetry(base, "asking the Hub who the token belongs to", (a) => whoAmI({ accessToken: base.token!, hubUrl: base.hubUrl, fetch: a.fetch }));
  } catch (e) {
    throw authError("whoami", e);
  }
  if (me.type === "app") throw new HubError("bad_input", `the token belongs to an app (${me.name}), not a user: pass an explicit repo "owner/name"`);
  return `${me.name}/${name}`;
}

/**
 * The repo publishModel would write to: `repo` when given, else "<the token's user>/<defaultName>"
 * (whoami), so that a confirmation can name the real target. Errors as publishModel's.
 */
export async function resolvePublishRepo(opts: { repo?: string; defaultName: string; token: string; hubUrl?: string; retries?: number; retryDelayMs?: number; log?: (line: string) => void }): Promise<string> {
  try {
    checkTokenFormat(opts.token, "the token option");
    if (opts.repo) {
      validateRepoId(opts.repo);
      return opts.repo;
    }
    if (!isValidRepoName(opts.defaultName)) throw new HubError("bad_input", `defaultName ${JSON.stringify(opts.defaultName)} is not a valid Hub repo name`);
    const base: NetCtx = { repoId: "", hubUrl: resolveHubUrl(opts.hubUrl), token: opts.token, retries: opts.retries ?? 3, retryDelayMs: opts.retryDelayMs ?? defaultRetryDelayMs(), timeoutMs: 60_000, log: opts.log };
    return await whoamiRepo(base, opts.defaultName, (what, e) => {
      if (e instanceof HubError && (e.status === 401 || e.status === 403)) {
        return new HubError("auth", `${what}: the token was rejected (HTTP ${e.status}: invalid, expired or revoked); use a valid token with write access (HF_TOKEN)`, { status: e.status, url: e.url });
      }
      return e instanceof HubError ? e : new HubError("network", String(e));
    });
  } catch (e) {
    throw sanitize(e, opts.token);
  }
}

/** The settings_hash in a remote README's front matter, or null. */
function existingHash(readme: string): string | null {
  try {
    const v = parseFrontMatter(readme, "model card").frontMatter.settings_hash;
    return v === undefined || v === null ? null : String(v);
  } catch {
    return null; // an unparseable foreign README never matches
  }
}
