// Talking to the Hub over HTTP: which Hub (hubUrl, $HF_ENDPOINT), the token's format, and one request
// with retries. withRetry runs a @huggingface/hub call with a fresh Attempt per try: the Attempt's
// fetch remembers the last URL, status and X-Error-Code, aborts after timeoutMs without data (kick()
// on progress resets it) and notices a server that ignored a Range request, so a resumed download can
// start over. 408/429/5xx, timeouts, malformed responses, connection errors and retryable HubErrors
// back off exponentially (retryDelayMs doubled, at most 30 s), each wait announced through ctx.log
// ("…: connection refused by host:port …; retrying in 4 s (3/6)"); everything else fails at once.
// Connection errors (DNS failure, refused or unreachable port) are "network" errors, never "io". What
// fails is a HubError (errors.ts), and the library's error text in it has the token redacted.
import { HubApiError } from "@huggingface/hub";
import { HubError, redact, statusFailure, type HubTarget } from "./errors.ts";

export const DEFAULT_HUB_URL = "https://huggingface.co";

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

/** Throws unless the token (when there is one) has the hf_ prefix; `from` says where it came from. */
export function checkTokenFormat(token: string | undefined, from: string): void {
  // The client library throws on tokens without the hf_ prefix; say where the token came from instead.
  if (token !== undefined && !token.startsWith("hf_")) {
    throw new HubError("bad_input", `the Hugging Face token (${from}) must start with "hf_": create one at https://huggingface.co/settings/tokens`);
  }
}

/** One repo's requests: where, with which token, and how hard to try. */
export interface NetCtx extends HubTarget {
  retries: number;
  retryDelayMs: number;
  timeoutMs: number;
  /** Where the back-off lines go ("… retrying in 4 s (3/6)"); default: nowhere. */
  log?: (line: string) => void;
}

/**
 * The first back-off delay when the caller gives none: 1000 ms, or $REALIGN_HUB_RETRY_DELAY_MS (tests
 * set 0 so that nothing depends on the wall clock).
 */
export function defaultRetryDelayMs(): number {
  const raw = process.env.REALIGN_HUB_RETRY_DELAY_MS;
  const v = raw === undefined || raw === "" ? NaN : Number(raw);
  return Number.isFinite(v) && v >= 0 ? v : 1000;
}

/** Connection-level errno codes (DNS, refused, unreachable, reset): network errors, retried. */
const NETWORK_ERRNOS = new Set([
  "ENOTFOUND", "EAI_AGAIN", "EAI_FAIL", "EAI_NONAME", "EAI_NODATA", "ECONNREFUSED", "ECONNRESET", "ECONNABORTED",
  "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH", "ENETDOWN", "ETIMEDOUT", "EPIPE", "EPROTO", "ECERT", "UND_ERR_SOCKET",
  "UND_ERR_CONNECT_TIMEOUT", "ConnectionRefused", "ConnectionClosed", "FailedToOpenSocket",
]);

/** The errno code of a connection error (also one wrapped as `cause`), or null when it is not one. */
export function networkErrno(err: unknown): string | null {
  for (let e = err, depth = 0; e && typeof e === "object" && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && NETWORK_ERRNOS.has(code)) return code;
  }
  return null;
}

/** What a connection errno means, in words, for `host`. */
export function describeNetworkErrno(code: string, host: string): string {
  if (code.startsWith("EAI_") || code === "ENOTFOUND") return `cannot resolve the host name ${host} (DNS lookup failed: ${code})`;
  if (code === "ECONNREFUSED" || code === "ConnectionRefused") return `connection refused by ${host} (${code}: nothing listens there)`;
  if (code === "EHOSTUNREACH" || code === "ENETUNREACH" || code === "EHOSTDOWN" || code === "ENETDOWN") return `${host} is unreachable (${code})`;
  if (code === "ETIMEDOUT" || code === "UND_ERR_CONNECT_TIMEOUT") return `connecting to ${host} timed out (${code})`;
  return `the connection to ${host} failed (${code})`;
}

/** "host:port" of a URL, for messages. */
function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

/** A delay as the back-off lines print it: "4 s", "250 ms", "0 s". */
export function formatDelay(ms: number): string {
  if (ms === 0) return "0 s";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${Math.round(ms / 100) / 10} s`;
}

/**
 * A fetch wrapper for one attempt: remembers the last URL/status (the library's WebBlob streams
 * turn HTTP errors into bare strings), enforces an idle timeout (reset by kick() on progress), and
 * notices servers that ignore Range.
 */
export class Attempt {
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

/** Run `fn` with retries: 429/5xx, timeouts, connection errors and retryable HubErrors back off exponentially. */
export async function withRetry<T>(ctx: NetCtx, what: string, fn: (a: Attempt) => Promise<T>): Promise<T> {
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
    const delay = Math.min(ctx.retryDelayMs * 2 ** (i - 1), 30_000);
    ctx.log?.(`${failure.code === "network" ? "network error: " : ""}${failure.message}; retrying in ${formatDelay(delay)} (${i + 1}/${attempts})`);
    await sleep(delay);
  }
}

/** What a failed attempt means: the HubError to report and whether another attempt may succeed. */
function classify(ctx: NetCtx, what: string, err: unknown, a: Attempt): { failure: HubError; retry: boolean } {
  if (err instanceof HubError) return { failure: err, retry: err.retryable };
  const status = err instanceof HubApiError ? err.statusCode : a.lastStatus !== undefined && a.lastStatus >= 400 ? a.lastStatus : undefined;
  const url = err instanceof HubApiError ? err.url || a.lastUrl : a.lastUrl;
  const detail = redact(err instanceof Error ? err.message : String(err), ctx.token);
  if (status !== undefined) return statusFailure(ctx, what, status, url, a.lastErrorCode, detail);
  if (a.timedOut) {
    return { failure: new HubError("timeout", `${what}: no data from ${url ?? ctx.hubUrl} for ${ctx.timeoutMs} ms`, { url }), retry: true };
  }
  if (err instanceof TypeError && /access token/i.test(detail)) {
    return { failure: new HubError("bad_input", `${what}: ${detail}`), retry: false };
  }
  const net = networkErrno(err);
  if (net) {
    const where = url ?? ctx.hubUrl;
    return { failure: new HubError("network", `${what}: ${describeNetworkErrno(net, hostOf(where))} for ${where}`, { url }), retry: true };
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
