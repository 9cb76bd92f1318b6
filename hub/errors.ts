// The Hub client's one error type and how failures become it. Every failure of pull/publish leaves
// as a HubError with a HubErrorCode; an HTTP status is mapped here to the code and message a user can
// act on (401/403 told apart as the Hub means them, 404, retryable 408/429/5xx). Guarantees: no
// message or URL that leaves through sanitize() contains the token.

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

/** The token replaced by *** wherever it appears in `text` (tokens under 4 characters are left alone). */
export function redact(text: string, token: string | undefined): string {
  return token && token.length >= 4 ? text.split(token).join("***") : text;
}

/** Who an HTTP request was for, as error messages name it. */
export interface HubTarget {
  repoId: string;
  hubUrl: string;
  token: string | undefined;
}

/**
 * A 401 or 403, told apart as the Hub means them: with a token, 401 is the token itself rejected
 * (invalid, expired, revoked); 403 with X-Error-Code GatedRepo is an account that was not granted
 * access to a gated repo, any other 403 a token without permission for the repo. Without a token the
 * Hub answers 401 for gated (GatedRepo), private and missing repos alike.
 */
function accessError(ctx: HubTarget, status: number, url: string | undefined, errorCode: string | undefined, detail: string): HubError {
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


/** An HTTP error status as a HubError, and whether another attempt may succeed (408, 429, 5xx). */
export function statusFailure(
  ctx: HubTarget,
  what: string,
  status: number,
  url: string | undefined,
  errorCode: string | undefined,
  detail: string,
): { failure: HubError; retry: boolean } {
  if (status === 401 || status === 403) return { failure: accessError(ctx, status, url, errorCode, detail), retry: false };
  if (status === 404) {
    return { failure: new HubError("not_found", `${what}: not found on ${ctx.hubUrl} (HTTP 404 from ${url}): ${detail}`, { status, url }), retry: false };
  }
  const retry = status === 408 || status === 429 || status >= 500;
  return { failure: new HubError("http", `${what}: HTTP ${status} from ${url}`, { status, url }), retry };
}

const NET_ERRNO_RE = /^(ENOTFOUND|EAI_[A-Z]+|ECONN[A-Z]+|E(HOST|NET)(UNREACH|DOWN)|ETIMEDOUT|EPIPE)$/;

/** Make sure whatever escapes carries no token and is a HubError. */
export function sanitize(e: unknown, token: string | undefined): HubError {
  if (e instanceof HubError) {
    const msg = redact(e.message, token);
    return msg === e.message ? e : new HubError(e.code, msg, { url: e.url && redact(e.url, token), status: e.status });
  }
  const msg = redact(e instanceof Error ? e.message : String(e), token);
  const errno = (e as { code?: unknown } | null)?.code;
  // Connection errnos (DNS, refused, unreachable) are the network's, not the local disk's.
  const isIo = typeof errno === "string" && /^E[A-Z]+$/.test(errno) && !NET_ERRNO_RE.test(errno);
  return new HubError(isIo ? "io" : "network", isIo ? `local file error: ${msg}` : msg);
}
