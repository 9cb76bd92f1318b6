// A fake Hugging Face Hub for tests: a local Bun.serve speaking the HTTP endpoints that
// @huggingface/hub (and so realign's steps/hub.ts) calls, with in-memory repos and fault injection.
//
// Endpoints (learned from node_modules/@huggingface/hub/src):
//   GET  /api/whoami-v2                                   whoAmI
//   POST /api/repos/create                                createRepo
//   GET  /api/models/{o}/{n}[/revision/{rev}]             modelInfo (revision URL-encoded)
//   GET  /api/models/{o}/{n}/tree/{rev}[/{path}]          listFiles (recursive, Link pagination)
//   GET  /{o}/{n}/resolve/{rev}/{path}                    fileDownloadInfo / downloadFile (Range)
//   POST /api/models/{o}/{n}/preupload/{rev}              commit: which files go to LFS
//   POST /{o}/{n}.git/info/lfs/objects/batch              commit: LFS batch (basic transfer)
//   PUT  /__lfs/{sha256}                                  commit: LFS object upload (our "S3")
//   POST /api/models/{o}/{n}/commit/{rev}                 commit: NDJSON header + file ops
//
// Unlike the real Hub, LFS files are served straight from /resolve (no redirect to a CDN), but with
// the headers the Hub sends for them: X-Repo-Commit, ETag (git oid of the pointer),
// X-Linked-Etag (sha256) and X-Linked-Size.
import { createHash } from "node:crypto";

export const FAKE_USER = "alice";
/** Write token of FAKE_USER. Tokens must start with hf_ (the client library checks). */
export const FAKE_TOKEN = "hf_fakeWriteTokenAlice0123456789";
/** Read-only token of user "bob", who has no access to gated/private repos unless listed as reader. */
export const FAKE_READ_TOKEN = "hf_fakeReadTokenBob0123456789";

export interface FakeUser {
  name: string;
  orgs?: string[];
  write?: boolean;
}

export interface FakeFile {
  path: string;
  content: Uint8Array;
  /** Stored with Git LFS (safetensors, pickles, big files). */
  lfs: boolean;
  sha256: string;
  /** Git blob oid of what git stores: the content for regular files, the pointer for LFS files. */
  gitOid: string;
}

export interface FakeCommit {
  sha: string;
  parent: string | null;
  title: string;
  files: Map<string, FakeFile>;
}

export interface FakeTreeEntry {
  type: "file" | "directory";
  path: string;
  size: number;
  oid: string;
  lfs?: { oid: string; size: number; pointerSize: number };
}

export interface FakeRepo {
  id: string;
  private: boolean;
  /** Gated repos: metadata and listings are public, file downloads need an accepted user. */
  gated: false | "auto" | "manual";
  /** Users besides the namespace owner who may read a private or gated repo. */
  readers: Set<string>;
  /** Branch / tag name → commit sha. */
  refs: Map<string, string>;
  commits: Map<string, FakeCommit>;
  /** Raw entries appended to every tree listing (fault injection: hostile paths). */
  extraTreeEntries: FakeTreeEntry[];
}

export type FakeFaultKind = "drop" | "stall" | "status" | "delay" | "corrupt" | "norange";

export interface FakeFault {
  /** Tested against `${METHOD} ${decoded pathname}`, e.g. "GET /o/n/resolve/<sha>/model.safetensors". */
  match: string | RegExp;
  kind: FakeFaultKind;
  /** How many matching requests it hits (default 1; Infinity = forever). */
  times?: number;
  /** "status": the HTTP status to answer (default 500). */
  status?: number;
  /** "drop"/"stall": bytes sent before the connection is cut / goes silent (default: half the response). */
  afterBytes?: number;
  /** "delay": milliseconds to wait before answering (default 1000). */
  delayMs?: number;
  /** How many requests it has hit so far (maintained by the server). */
  hits: number;
}

export interface FakeRequest {
  method: string;
  /** Raw pathname + search. */
  path: string;
  range: string | null;
  /** User the request authenticated as (tokens themselves are never recorded). */
  user: string | null;
  status: number;
}

export interface FakeHubOptions {
  /** token → user. Default: FAKE_TOKEN (alice, write) and FAKE_READ_TOKEN (bob, read-only). */
  users?: Record<string, FakeUser>;
  /** Tree listing page size (Link-header pagination). Default 1000. */
  pageSize?: number;
}

export interface AddRepoOptions {
  private?: boolean;
  gated?: false | "auto" | "manual";
  readers?: string[];
  /** Commit title of the seeded commit. */
  title?: string;
  /** Force LFS (true) or regular (false) storage for given paths; default by extension/size. */
  lfs?: Record<string, boolean>;
}

export interface FakeHub {
  url: string;
  stop(): void;
  repos: Map<string, FakeRepo>;
  /** Every request as "METHOD /path?query", in arrival order. */
  requests: string[];
  /** The same requests with range, authenticated user and response status. */
  log: FakeRequest[];
  /** Active faults; push with addFault() (or directly) at any time. */
  faults: FakeFault[];
  /** LFS objects uploaded or seeded, by sha256. */
  lfsStore: Map<string, Uint8Array>;
  /** /resolve requests being answered at once, and the peak (checks client concurrency; add a delay fault to make overlap visible). */
  stats: { inFlight: number; maxInFlight: number };
  addFault(fault: Omit<FakeFault, "hits">): FakeFault;
  /** Create a repo with one commit holding `files` on branch main; returns it. */
  addRepo(id: string, files: Record<string, string | Uint8Array>, opts?: AddRepoOptions): FakeRepo;
  /** Commit on top of `branch` (default main): adds/replaces `files`, removes `remove`. Returns the new sha. */
  commitFiles(
    id: string,
    files: Record<string, string | Uint8Array>,
    opts?: { branch?: string; title?: string; remove?: string[]; lfs?: Record<string, boolean> },
  ): string;
  /** Files of a repo at a revision (branch, tag or sha). */
  filesAt(id: string, revision?: string): Map<string, FakeFile>;
  /** Clear requests/log (keeps repos and faults). */
  resetLog(): void;
}

const LFS_EXTENSIONS = /\.(safetensors|bin|pt|pth|ckpt|onnx|gguf|h5|msgpack|npz|pkl|pickle|zip|tar|gz)$/i;
const LFS_MIN_SIZE = 10 * 1024 * 1024;
const enc = new TextEncoder();

const sha256Hex = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
const gitBlobOid = (b: Uint8Array): string =>
  createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");

function lfsPointer(sha: string, size: number): Uint8Array {
  return enc.encode(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha}\nsize ${size}\n`);
}

export function makeFakeFile(path: string, content: string | Uint8Array, lfs?: boolean): FakeFile {
  const bytes = typeof content === "string" ? enc.encode(content) : content;
  const isLfs = lfs ?? (LFS_EXTENSIONS.test(path) || bytes.length >= LFS_MIN_SIZE);
  const sha256 = sha256Hex(bytes);
  return { path, content: bytes, lfs: isLfs, sha256, gitOid: gitBlobOid(isLfs ? lfsPointer(sha256, bytes.length) : bytes) };
}

const DEFAULT_GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n";

function json(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
}
function apiError(status: number, message: string, code?: string): Response {
  return json({ error: message }, status, code ? { "X-Error-Code": code } : {});
}

export async function startFakeHub(opts: FakeHubOptions = {}): Promise<FakeHub> {
  const users: Record<string, FakeUser> = opts.users ?? {
    [FAKE_TOKEN]: { name: FAKE_USER, write: true, orgs: ["realign-test-org"] },
    [FAKE_READ_TOKEN]: { name: "bob", write: false },
  };
  const pageSize = opts.pageSize ?? 1000;
  const repos = new Map<string, FakeRepo>();
  const requests: string[] = [];
  const log: FakeRequest[] = [];
  const faults: FakeFault[] = [];
  const lfsStore = new Map<string, Uint8Array>();
  const stats = { inFlight: 0, maxInFlight: 0 };
  let commitCounter = 0;
  let baseUrl = "";

  function newCommit(repo: FakeRepo, parent: string | null, title: string, files: Map<string, FakeFile>): string {
    const h = createHash("sha1").update(`${repo.id}\0${parent ?? ""}\0${title}\0${++commitCounter}`);
    for (const [p, f] of [...files].sort(([a], [b]) => (a < b ? -1 : 1))) h.update(`${p}\0${f.gitOid}\0`);
    const sha = h.digest("hex");
    repo.commits.set(sha, { sha, parent, title, files });
    for (const f of files.values()) if (f.lfs) lfsStore.set(f.sha256, f.content);
    return sha;
  }

  function resolveRev(repo: FakeRepo, rev: string): FakeCommit | undefined {
    const name = rev === "HEAD" ? "main" : rev;
    const sha = repo.refs.get(name) ?? (repo.commits.has(name) ? name : undefined);
    return sha ? repo.commits.get(sha) : undefined;
  }

  function toFiles(files: Record<string, string | Uint8Array>, lfs?: Record<string, boolean>): FakeFile[] {
    return Object.entries(files).map(([p, c]) => makeFakeFile(p, c, lfs?.[p]));
  }

  function createRepoRecord(id: string, o: AddRepoOptions): FakeRepo {
    if (repos.has(id)) throw new Error(`fake hub: repo ${id} already exists`);
    const repo: FakeRepo = {
      id,
      private: o.private ?? false,
      gated: o.gated ?? false,
      readers: new Set(o.readers ?? []),
      refs: new Map(),
      commits: new Map(),
      extraTreeEntries: [],
    };
    repos.set(id, repo);
    return repo;
  }

  const hub: FakeHub = {
    url: "",
    stop: () => {},
    repos,
    requests,
    log,
    faults,
    lfsStore,
    stats,
    addFault(f) {
      const fault: FakeFault = { ...f, hits: 0 };
      faults.push(fault);
      return fault;
    },
    addRepo(id, files, o = {}) {
      const repo = createRepoRecord(id, o);
      const map = new Map<string, FakeFile>();
      map.set(".gitattributes", makeFakeFile(".gitattributes", DEFAULT_GITATTRIBUTES, false));
      for (const f of toFiles(files, o.lfs)) map.set(f.path, f);
      repo.refs.set("main", newCommit(repo, null, o.title ?? "initial commit", map));
      return repo;
    },
    commitFiles(id, files, o = {}) {
      const repo = repos.get(id);
      if (!repo) throw new Error(`fake hub: no repo ${id}`);
      const branch = o.branch ?? "main";
      const parent = repo.refs.get(branch) ?? repo.refs.get("main") ?? null;
      const map = new Map(parent ? repo.commits.get(parent)!.files : []);
      for (const p of o.remove ?? []) map.delete(p);
      for (const f of toFiles(files, o.lfs)) map.set(f.path, f);
      const sha = newCommit(repo, parent, o.title ?? "update", map);
      repo.refs.set(branch, sha);
      return sha;
    },
    filesAt(id, revision = "main") {
      const repo = repos.get(id);
      const c = repo && resolveRev(repo, revision);
      if (!c) throw new Error(`fake hub: no revision ${revision} in ${id}`);
      return c.files;
    },
    resetLog() {
      requests.length = 0;
      log.length = 0;
    },
  };

  // --- auth -------------------------------------------------------------------------------------
  type Auth = { user: FakeUser | null; invalid: boolean };
  function authOf(req: Request): Auth {
    const h = req.headers.get("authorization");
    if (!h) return { user: null, invalid: false };
    const token = h.replace(/^Bearer\s+/i, "");
    const user = users[token];
    return user ? { user, invalid: false } : { user: null, invalid: true };
  }
  const ownsNamespace = (u: FakeUser, ns: string) => u.name === ns || (u.orgs ?? []).includes(ns);
  const isMember = (u: FakeUser | null, repo: FakeRepo) =>
    !!u && (ownsNamespace(u, repo.id.split("/")[0]) || repo.readers.has(u.name));

  /** Metadata access (info, tree): public + gated are visible; private only to members. */
  function checkMeta(repo: FakeRepo | undefined, auth: Auth, id: string): Response | null {
    if (!repo || (repo.private && !isMember(auth.user, repo))) {
      // Like the Hub: anonymous callers get 401 for private-or-missing repos, others a 404.
      return auth.user
        ? apiError(404, `Repository Not Found for url: ${baseUrl}/api/models/${id}.`, "RepoNotFound")
        : apiError(401, "Invalid username or password.", "RepoNotFound");
    }
    return null;
  }
  /** File access: gated repos additionally need an accepted (member) user. */
  function checkFiles(repo: FakeRepo | undefined, auth: Auth, id: string): Response | null {
    const meta = checkMeta(repo, auth, id);
    if (meta) return meta;
    if (repo!.gated && !isMember(auth.user, repo!)) {
      return auth.user
        ? apiError(403, `Access to model ${id} is restricted and you are not in the authorized list. Visit ${baseUrl}/${id} to ask for access.`, "GatedRepo")
        : apiError(401, `Access to model ${id} is restricted. You must have access to it and be authenticated to access it. Please log in.`, "GatedRepo");
    }
    return null;
  }
  function checkWrite(auth: Auth, ns: string): Response | null {
    if (!auth.user) return apiError(401, "Invalid credentials in Authorization header");
    if (!auth.user.write) return apiError(403, "You don't have the rights to write with this token (read-only)");
    if (!ownsNamespace(auth.user, ns)) return apiError(403, `You don't have the rights to create or write to ${ns}/*`);
    return null;
  }

  // --- file serving with ranges and faults -------------------------------------------------------
  function takeFault(line: string, kinds: FakeFaultKind[], bodyLen?: number): FakeFault | undefined {
    for (const f of faults) {
      if (!kinds.includes(f.kind)) continue;
      if ((f.times ?? 1) <= f.hits) continue;
      const ok = typeof f.match === "string" ? line.includes(f.match) : f.match.test(line);
      if (!ok) continue;
      // Probes (1-byte range reads by fileDownloadInfo) are never dropped, stalled or corrupted.
      if ((f.kind === "drop" || f.kind === "stall" || f.kind === "corrupt") && (bodyLen ?? 0) <= 1) continue;
      f.hits++;
      return f;
    }
    return undefined;
  }

  function serveFile(req: Request, line: string, commit: FakeCommit, file: FakeFile): Response {
    const total = file.content.length;
    const headers: Record<string, string> = {
      "Accept-Ranges": "bytes",
      "Content-Type": "application/octet-stream",
      "X-Repo-Commit": commit.sha,
      ETag: `"${file.gitOid}"`,
    };
    if (file.lfs) {
      headers["X-Linked-Etag"] = `"${file.sha256}"`;
      headers["X-Linked-Size"] = String(total);
    }
    let start = 0;
    let end = total; // exclusive
    let status = 200;
    let range = req.headers.get("range");
    // "norange": answer 200 with the whole file, as some proxies do (probes excluded).
    if (range && range !== "bytes=0-0" && takeFault(line, ["norange"])) range = null;
    if (range) {
      const m = /^bytes=(\d+)-(\d*)$/.exec(range.trim());
      if (!m) return new Response("bad range", { status: 416, headers: { "Content-Range": `bytes */${total}` } });
      start = Number(m[1]);
      end = m[2] === "" ? total : Math.min(Number(m[2]) + 1, total);
      if (total === 0 && start === 0) {
        headers["Content-Range"] = `bytes */0`;
        return new Response(new Uint8Array(0), { status: 200, headers });
      }
      if (start >= total || end <= start) {
        return new Response("range not satisfiable", { status: 416, headers: { "Content-Range": `bytes */${total}` } });
      }
      status = 206;
      headers["Content-Range"] = `bytes ${start}-${end - 1}/${total}`;
    }
    let body = file.content.subarray(start, end);
    if (req.method === "HEAD") return new Response(null, { status, headers: { ...headers, "Content-Length": String(body.length) } });

    const corrupt = takeFault(line, ["corrupt"], body.length);
    if (corrupt) {
      body = body.slice();
      const at = Math.floor(body.length / 2);
      body[at] ^= 0xff;
    }
    // Both faults send part of the body first, then either go silent or reset the connection.
    const partial = (afterBytes: number | undefined, then: (c: ReadableStreamDefaultController<Uint8Array>) => Promise<void>) => {
      const cut = Math.max(1, Math.min(afterBytes ?? Math.floor(body.length / 2), body.length - 1));
      let sent = false;
      const stream = new ReadableStream<Uint8Array>({
        async pull(c) {
          if (sent) return then(c);
          sent = true;
          c.enqueue(body.subarray(0, cut));
          await Bun.sleep(5);
        },
      });
      return new Response(stream, { status, headers });
    };
    const stall = takeFault(line, ["stall"], body.length);
    if (stall) {
      // Nothing more until the client gives up.
      return partial(stall.afterBytes, async (c) => {
        await new Promise<void>((done) => {
          if (req.signal.aborted) return done();
          req.signal.addEventListener("abort", () => done(), { once: true });
          setTimeout(done, 10_000); // never hang the test run
        });
        c.close();
      });
    }
    const drop = takeFault(line, ["drop"], body.length);
    if (drop) {
      // Erroring the body stream makes Bun reset the connection: the client sees ECONNRESET.
      return partial(drop.afterBytes, async (c) => c.error("fake-hub: injected fault, connection dropped mid-file"));
    }
    return new Response(body, { status, headers });
  }

  // --- handlers --------------------------------------------------------------------------------------
  function modelInfoBody(repo: FakeRepo, c: FakeCommit): unknown {
    return {
      _id: createHash("sha1").update(repo.id).digest("hex").slice(0, 24),
      id: repo.id,
      private: repo.private,
      gated: repo.gated,
      disabled: false,
      pipeline_tag: "text-generation",
      downloads: 0,
      likes: 0,
      lastModified: new Date(0).toISOString(),
      sha: c.sha,
      tags: [],
      siblings: [...c.files.keys()].sort().map((rfilename) => ({ rfilename })),
    };
  }

  function treeEntries(c: FakeCommit, prefix: string, recursive: boolean): FakeTreeEntry[] {
    const out = new Map<string, FakeTreeEntry>();
    const base = prefix ? prefix.replace(/\/+$/, "") + "/" : "";
    for (const f of [...c.files.values()].sort((a, b) => (a.path < b.path ? -1 : 1))) {
      if (!f.path.startsWith(base)) continue;
      const rest = f.path.slice(base.length).split("/");
      // Directories along the way (all of them when recursive, the first level otherwise).
      for (let i = 1; i < rest.length && (recursive || i === 1); i++) {
        const dir = base + rest.slice(0, i).join("/");
        if (!out.has(dir)) out.set(dir, { type: "directory", path: dir, size: 0, oid: createHash("sha1").update(dir).digest("hex") });
      }
      if (!recursive && rest.length > 1) continue;
      out.set(f.path, {
        type: "file",
        path: f.path,
        size: f.content.length,
        oid: f.gitOid,
        ...(f.lfs ? { lfs: { oid: f.sha256, size: f.content.length, pointerSize: lfsPointer(f.sha256, f.content.length).length } } : {}),
      });
    }
    return [...out.values()];
  }

  async function handle(req: Request, auth: Auth, line: string): Promise<Response> {
    const url = new URL(req.url);
    const method = req.method;
    const path = url.pathname;
    const seg = path.split("/").slice(1).map((s) => decodeURIComponent(s));
    if (auth.invalid) return apiError(401, "Invalid credentials in Authorization header");

    // whoami
    if (method === "GET" && path === "/api/whoami-v2") {
      if (!auth.user) return apiError(401, "Invalid credentials in Authorization header");
      const u = auth.user;
      return json({
        type: "user",
        id: createHash("sha1").update(u.name).digest("hex").slice(0, 24),
        name: u.name,
        fullname: u.name,
        email: `${u.name}@example.invalid`,
        emailVerified: true,
        isPro: false,
        canPay: false,
        avatarUrl: "",
        periodEnd: null,
        billingMode: "postpaid",
        orgs: (u.orgs ?? []).map((o) => ({ type: "org", id: o, name: o, fullname: o, email: null, canPay: false, avatarUrl: "", periodEnd: null })),
        auth: { type: "access_token", accessToken: { displayName: "test", role: u.write ? "write" : "read", createdAt: new Date(0).toISOString() } },
      });
    }

    // create repo
    if (method === "POST" && path === "/api/repos/create") {
      const body = (await req.json()) as { name?: string; organization?: string; type?: string; visibility?: string; private?: boolean };
      const ns = body.organization ?? auth.user?.name ?? "";
      const denied = checkWrite(auth, ns);
      if (denied) return denied;
      if (!body.name || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(body.name)) return apiError(400, `invalid repo name ${JSON.stringify(body.name)}`);
      if (body.type && body.type !== "model") return apiError(400, "fake hub: only model repos");
      const id = `${ns}/${body.name}`;
      if (repos.has(id)) return apiError(409, "You already created this model repo");
      hub.addRepo(id, {}, { private: body.visibility === "private" || body.private === true });
      return json({ url: `${baseUrl}/${id}`, name: id, id: createHash("sha1").update(id).digest("hex").slice(0, 24) });
    }

    // /api/models/{o}/{n}/...
    if (seg[0] === "api" && seg[1] === "models" && seg.length >= 4) {
      const id = `${seg[2]}/${seg[3]}`;
      const repo = repos.get(id);
      const sub = seg[4];
      if (method === "GET" && (sub === undefined || sub === "revision")) {
        const denied = checkMeta(repo, auth, id);
        if (denied) return denied;
        const rev = sub === "revision" ? seg.slice(5).join("/") : "main";
        const c = resolveRev(repo!, rev);
        if (!c) return apiError(404, `Invalid rev id: ${rev}`, "RevisionNotFound");
        return json(modelInfoBody(repo!, c));
      }
      if (method === "GET" && sub === "tree") {
        const denied = checkMeta(repo, auth, id);
        if (denied) return denied;
        const rev = seg[5] ?? "main";
        const c = resolveRev(repo!, rev);
        if (!c) return apiError(404, `Invalid rev id: ${rev}`, "RevisionNotFound");
        const recursive = url.searchParams.get("recursive") === "true";
        const all = [...treeEntries(c, seg.slice(6).join("/"), recursive), ...repo!.extraTreeEntries];
        const cursor = Number(url.searchParams.get("cursor") ?? "0");
        const page = all.slice(cursor, cursor + pageSize);
        const headers: Record<string, string> = {};
        if (cursor + pageSize < all.length) {
          const next = new URL(url);
          next.searchParams.set("cursor", String(cursor + pageSize));
          headers.Link = `<${next.href}>; rel="next"`;
        }
        return json(page, 200, headers);
      }
      if (method === "POST" && sub === "preupload") {
        const denied = checkWrite(auth, seg[2]) ?? (repo ? null : apiError(404, "Repository not found", "RepoNotFound"));
        if (denied) return denied;
        const body = (await req.json()) as { files: { path: string; size: number; sample: string }[] };
        return json({
          files: body.files.map((f) => ({
            path: f.path,
            uploadMode: LFS_EXTENSIONS.test(f.path) || f.size >= LFS_MIN_SIZE ? "lfs" : "regular",
            shouldIgnore: false,
          })),
        });
      }
      if (method === "POST" && sub === "commit") {
        const denied = checkWrite(auth, seg[2]) ?? (repo ? null : apiError(404, "Repository not found", "RepoNotFound"));
        if (denied) return denied;
        const branch = seg.slice(5).join("/") || "main";
        return doCommit(repo!, branch, await req.text());
      }
    }

    // LFS batch: /{o}/{n}.git/info/lfs/objects/batch
    if (method === "POST" && seg.length === 6 && seg[1].endsWith(".git") && seg.slice(2).join("/") === "info/lfs/objects/batch") {
      const id = `${seg[0]}/${seg[1].slice(0, -4)}`;
      const denied = checkWrite(auth, seg[0]) ?? (repos.has(id) ? null : apiError(404, "Repository not found", "RepoNotFound"));
      if (denied) return denied;
      const body = (await req.json()) as { operation: string; objects: { oid: string; size: number }[] };
      if (body.operation !== "upload") return apiError(400, "fake hub: only LFS uploads");
      return json(
        {
          transfer: "basic",
          objects: body.objects.map((o) =>
            lfsStore.has(o.oid)
              ? { oid: o.oid, size: o.size }
              : { oid: o.oid, size: o.size, authenticated: true, actions: { upload: { href: `${baseUrl}/__lfs/${o.oid}?size=${o.size}`, header: {} } } },
          ),
        },
        200,
        { "Content-Type": "application/vnd.git-lfs+json" },
      );
    }

    // LFS object upload (stands in for the presigned S3 URL)
    if (method === "PUT" && seg[0] === "__lfs" && seg.length === 2) {
      const oid = seg[1];
      const bytes = new Uint8Array(await req.arrayBuffer());
      const want = Number(url.searchParams.get("size"));
      if (bytes.length !== want) return apiError(400, `size mismatch: got ${bytes.length}, expected ${want}`);
      if (sha256Hex(bytes) !== oid) return apiError(400, "sha256 mismatch");
      lfsStore.set(oid, bytes);
      return new Response(null, { status: 200, headers: { ETag: `"${oid}"` } });
    }

    // resolve: /{o}/{n}/resolve/{rev}/{path...}
    if ((method === "GET" || method === "HEAD") && seg.length >= 5 && seg[2] === "resolve") {
      const id = `${seg[0]}/${seg[1]}`;
      const repo = repos.get(id);
      const denied = checkFiles(repo, auth, id);
      if (denied) return denied;
      const c = resolveRev(repo!, seg[3]);
      if (!c) return apiError(404, `Invalid rev id: ${seg[3]}`, "RevisionNotFound");
      const filePath = seg.slice(4).join("/");
      const file = c.files.get(filePath);
      if (!file) return apiError(404, `Entry not found: ${filePath}`, "EntryNotFound");
      return serveFile(req, line, c, file);
    }

    return apiError(404, `fake hub: no route for ${method} ${path}`);
  }

  function doCommit(repo: FakeRepo, branch: string, ndjson: string): Response {
    const parentSha = repo.refs.get(branch);
    if (!parentSha) return apiError(404, `Invalid rev id: ${branch}`, "RevisionNotFound");
    const files = new Map(repo.commits.get(parentSha)!.files);
    let title = "";
    for (const line of ndjson.split("\n").filter((l) => l.trim())) {
      const op = JSON.parse(line) as { key: string; value: Record<string, unknown> };
      const v = op.value;
      const p = String(v.path ?? "");
      if (op.key !== "header" && (!p || p.startsWith("/") || p.includes("\\") || p.split("/").some((s) => s === ".." || s === "." || s === ""))) {
        return apiError(400, `invalid path ${JSON.stringify(p)}`);
      }
      if (op.key === "header") {
        title = String(v.summary ?? "");
        if (v.parentCommit && v.parentCommit !== parentSha) {
          return apiError(412, `A commit has happened since. Please refresh and try again. (parent ${String(v.parentCommit)} is not the head ${parentSha})`);
        }
      } else if (op.key === "file") {
        const content = v.encoding === "base64" ? new Uint8Array(Buffer.from(String(v.content), "base64")) : enc.encode(String(v.content));
        files.set(p, makeFakeFile(p, content, false));
      } else if (op.key === "lfsFile") {
        const blob = lfsStore.get(String(v.oid));
        if (!blob || blob.length !== Number(v.size)) return apiError(422, `LFS object ${String(v.oid)} for ${p} was not uploaded`);
        files.set(p, makeFakeFile(p, blob, true));
      } else if (op.key === "deletedFile") {
        files.delete(p);
      } else {
        return apiError(400, `fake hub: unknown commit op ${op.key}`);
      }
    }
    if (!title) return apiError(400, "commit summary is required");
    const sha = newCommit(repo, parentSha, title, files);
    repo.refs.set(branch, sha);
    return json({ success: true, commitOid: sha, commitUrl: `${baseUrl}/${repo.id}/commit/${sha}`, hookOutput: "" });
  }

  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 30,
    async fetch(req) {
      const url = new URL(req.url);
      const line = `${req.method} ${decodeURIComponent(url.pathname)}`;
      const auth = authOf(req);
      const record: FakeRequest = { method: req.method, path: url.pathname + url.search, range: req.headers.get("range"), user: auth.user?.name ?? null, status: 0 };
      requests.push(`${req.method} ${url.pathname}${url.search}`);
      log.push(record);
      const isResolve = url.pathname.includes("/resolve/");
      if (isResolve) {
        stats.inFlight++;
        stats.maxInFlight = Math.max(stats.maxInFlight, stats.inFlight);
      }
      try {
        const delay = takeFault(line, ["delay"]);
        if (delay) {
          // Stop waiting when the client gives up (as a real server would notice the closed socket).
          await new Promise<void>((done) => {
            const t = setTimeout(done, delay.delayMs ?? 1000);
            req.signal.addEventListener("abort", () => (clearTimeout(t), done()), { once: true });
          });
          if (req.signal.aborted) {
            record.status = 499;
            return new Response(null, { status: 499 });
          }
        }
        const st = takeFault(line, ["status"]);
        const res = st ? apiError(st.status ?? 500, `fake-hub: injected HTTP ${st.status ?? 500}`) : await handle(req, auth, line);
        record.status = res.status;
        return res;
      } catch (e) {
        record.status = 500;
        return apiError(500, `fake hub internal error: ${e instanceof Error ? e.message : String(e)}`);
      } finally {
        if (isResolve) stats.inFlight--;
      }
    },
  });
  baseUrl = `http://127.0.0.1:${server.port}`;
  hub.url = baseUrl;
  hub.stop = () => server.stop(true);
  return hub;
}

/** Repos for the refusal paths, under namespace "scenario" (config + tiny weights each). */
export const SCENARIO_REPOS = {
  pickleOnly: "scenario/pickle-only",
  remoteCode: "scenario/remote-code",
  traversal: "scenario/traversal",
  gated: "scenario/gated",
  private: "scenario/private",
} as const;

/** Seed SCENARIO_REPOS into a fake hub. `weights` is any small safetensors file's bytes. */
export function seedScenarioRepos(hub: FakeHub, config: string, weights: Uint8Array): void {
  hub.addRepo(SCENARIO_REPOS.pickleOnly, { "config.json": config, "pytorch_model.bin": new Uint8Array([0x80, 2, 0x7d, 0x71, 0, 0x2e]) });
  const remote = { ...(JSON.parse(config) as Record<string, unknown>), auto_map: { AutoModelForCausalLM: "modeling_evil.EvilForCausalLM" } };
  hub.addRepo(SCENARIO_REPOS.remoteCode, {
    "config.json": JSON.stringify(remote, null, 2),
    "modeling_evil.py": "import os\n",
    "model.safetensors": weights,
  });
  const trav = hub.addRepo(SCENARIO_REPOS.traversal, { "config.json": config, "model.safetensors": weights });
  trav.extraTreeEntries.push({ type: "file", path: "../../evil", size: 4, oid: "0".repeat(40) });
  hub.addRepo(SCENARIO_REPOS.gated, { "config.json": config, "model.safetensors": weights }, { gated: "manual" });
  hub.addRepo(SCENARIO_REPOS.private, { "config.json": config, "model.safetensors": weights }, { private: true });
}
