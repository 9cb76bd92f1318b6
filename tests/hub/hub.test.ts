// Hub I/O against a local fake Hub (tests/fakehub.ts), through the real @huggingface/hub code paths.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HubError, isSafeRepoPath, publishModel, pullModel, resolveCacheRoot, resolveHubUrl, type HubErrorCode, type PullOptions } from "../../hub/hub.ts";
import { ModelCardError, parseModelCard, renderModelCard, type ModelCardInput } from "../../report/modelcard.ts";
import type { RunReport } from "../../report/report.ts";
import { FAKE_READ_TOKEN, FAKE_TOKEN, SCENARIO_REPOS, seedScenarioRepos, startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

// ---- helpers ---------------------------------------------------------------------------------------

const sha256 = (b: Uint8Array | string) => createHash("sha256").update(b).digest("hex");
const gitSha1 = (b: Uint8Array) => createHash("sha1").update(`blob ${b.length}\0`).update(b).digest("hex");

interface Tensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** Minimal safetensors writer/reader for building test repos (8-byte LE header length + JSON + data). */
function writeSafetensors(tensors: Tensor[]): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const out = new Uint8Array(8 + json.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(new TextEncoder().encode(json), 8);
  let p = 8 + json.length;
  for (const t of tensors) {
    out.set(t.data, p);
    p += t.data.length;
  }
  return out;
}

function readSafetensors(bytes: Uint8Array): Tensor[] {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + n;
  return Object.entries(header)
    .filter(([k]) => k !== "__metadata__")
    .map(([name, h]) => ({ name, dtype: h.dtype, shape: h.shape, data: bytes.subarray(base + h.data_offsets[0], base + h.data_offsets[1]) }));
}

const CONFIG = JSON.stringify({ architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: 8, num_hidden_layers: 1, vocab_size: 16 }, null, 2);
const synthWeights = (bytes = 64 * 1024) => writeSafetensors([{ name: "w", dtype: "U8", shape: [bytes], data: new Uint8Array(randomBytes(bytes)) }]);

/** All paths under `dir` (relative), not following symlinks. */
function walk(dir: string, prefix = ""): string[] {
  if (!existsSync(join(dir, prefix))) return [];
  const out: string[] = [];
  for (const e of readdirSync(join(dir, prefix), { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    out.push(rel);
    if (e.isDirectory()) out.push(...walk(dir, rel));
  }
  return out;
}

const resolveRequests = (hub: FakeHub, file?: string) =>
  hub.log.filter((r) => r.method === "GET" && r.path.includes("/resolve/") && (!file || decodeURIComponent(r.path).endsWith(`/${file}`)));

async function expectHubError(p: Promise<unknown>, code: HubErrorCode): Promise<HubError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(HubError);
    expect((e as HubError).code).toBe(code);
    return e as HubError;
  }
  throw new Error(`expected a HubError with code ${code}, but the call succeeded`);
}

// ---- fixtures ----------------------------------------------------------------------------------------

const ENV_KEYS = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"];
const savedEnv: Record<string, string | undefined> = {};
let hub: FakeHub;
let tmp: string;
let cache: string;
const tmpDirs: string[] = [];

beforeAll(async () => {
  for (const k of ENV_KEYS) {
    savedEnv[k] = process.env[k];
    delete process.env[k];
  }
  hub = await startFakeHub();
  seedScenarioRepos(hub, CONFIG, synthWeights(1024));
});

afterAll(() => {
  hub.stop();
  for (const k of ENV_KEYS) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), "realign-hub-test-"));
  tmpDirs.push(tmp);
  cache = join(tmp, "cache");
  hub.resetLog();
  hub.faults.length = 0;
});

afterEach(() => {
  rmSync(tmp, { recursive: true, force: true });
});

const base = (extra: Partial<PullOptions> = {}): PullOptions => ({ cacheDir: cache, hubUrl: hub.url, retryDelayMs: 1, timeoutMs: 3000, retries: 3, ...extra });

let repoCounter = 0;
/** A fresh synthetic repo (config, tokenizer files, weights) so tests don't share cache state. */
function synthRepo(weights = synthWeights()): { id: string; files: Record<string, Uint8Array> } {
  const id = `synth/model-${++repoCounter}`;
  const files: Record<string, Uint8Array> = {
    "config.json": new TextEncoder().encode(CONFIG),
    "tokenizer_config.json": new TextEncoder().encode('{"model_max_length": 64}'),
    "model.safetensors": weights,
  };
  hub.addRepo(id, files);
  return { id, files };
}

// ---- pull -----------------------------------------------------------------------------------------

describe("pullModel", () => {
  test.skipIf(!hasShared())("pulls the llama fixture byte-identical into the Python-compatible cache layout; a second pull downloads nothing", async () => {
    const dir = sharedPath("fixtures", "hf-golden", "llama");
    const config = readFileSync(join(dir, "config.json"));
    const weights = readFileSync(join(dir, "model.safetensors"));
    const gen = new TextEncoder().encode('{"bos_token_id": 1, "eos_token_id": 2}');
    const repo = hub.addRepo("fixtures/llama", {
      "config.json": config,
      "model.safetensors": weights,
      "generation_config.json": gen,
      "expected.json": readFileSync(join(dir, "expected.json")), // not a model file: skipped
      "README.md": "# llama\n", // the model card (for its licence): downloaded
      "pytorch_model.bin": new Uint8Array([1, 2, 3]), // pickle next to safetensors: skipped
      "original/consolidated.safetensors": weights, // subfolder: skipped
    });
    const commit = repo.refs.get("main")!;
    const progress: Record<string, number> = {};
    const res = await pullModel("fixtures/llama", base({ onProgress: (e) => (progress[e.file] = e.done / e.total) }));

    const repoDir = join(cache, "models--fixtures--llama");
    expect(res.commit).toBe(commit);
    expect(res.dir).toBe(join(repoDir, "snapshots", commit));
    expect(res.files).toEqual(["README.md", "config.json", "generation_config.json", "model.safetensors"]);
    expect(progress).toEqual({ "README.md": 1, "config.json": 1, "generation_config.json": 1, "model.safetensors": 1 });
    // Byte-identical through symlinks into blobs/ named like Python's cache: sha256 (LFS) / git sha1.
    const expected: Record<string, Uint8Array> = { "config.json": config, "generation_config.json": gen, "model.safetensors": weights };
    for (const [f, bytes] of Object.entries(expected)) {
      const link = join(res.dir, f);
      expect(lstatSync(link).isSymbolicLink()).toBe(true);
      const target = readlinkSync(link);
      const id = f.endsWith(".safetensors") ? sha256(bytes) : gitSha1(bytes);
      expect(target).toBe(`../../blobs/${id}`);
      expect(Buffer.compare(readFileSync(link), Buffer.from(bytes))).toBe(0);
    }
    expect(readFileSync(join(repoDir, "refs", "main"), "utf8")).toBe(commit);
    expect(readdirSync(join(repoDir, "blobs")).filter((n) => n.endsWith(".incomplete"))).toEqual([]);
    for (const skipped of ["expected.json", "pytorch_model.bin", "original/consolidated.safetensors"]) {
      expect(resolveRequests(hub, skipped)).toHaveLength(0);
    }
    expect(resolveRequests(hub).length).toBeGreaterThan(0);

    hub.resetLog();
    const again = await pullModel("fixtures/llama", base());
    expect(again).toEqual(res);
    expect(resolveRequests(hub)).toHaveLength(0);
  });

  test.skipIf(!hasShared())("pulls a 2-shard BF16 repo: only the shards the index names, reassembling the original tensors", async () => {
    const dir = sharedPath("fixtures", "hf-golden", "llama");
    const original = readFileSync(join(dir, "model-bf16.safetensors"));
    const tensors = readSafetensors(original);
    expect(tensors.length).toBeGreaterThan(2);
    const half = Math.ceil(tensors.length / 2);
    const shardNames = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    const shards = [writeSafetensors(tensors.slice(0, half)), writeSafetensors(tensors.slice(half))];
    const weightMap = Object.fromEntries(tensors.map((t, i) => [t.name, shardNames[i < half ? 0 : 1]]));
    const index = JSON.stringify({ metadata: { total_size: tensors.reduce((s, t) => s + t.data.length, 0) }, weight_map: weightMap });
    hub.addRepo("fixtures/llama-bf16-sharded", {
      "config.json": readFileSync(join(dir, "config.json")),
      "model.safetensors.index.json": index,
      [shardNames[0]]: shards[0],
      [shardNames[1]]: shards[1],
      "model-00003-of-00003.safetensors": shards[1], // stray shard not in the index
      "consolidated.safetensors": original, // alternative format: not named by the index
    });
    const res = await pullModel("fixtures/llama-bf16-sharded", base({ concurrency: 2 }));
    expect(res.files).toEqual(["config.json", ...shardNames, "model.safetensors.index.json"]);
    expect(resolveRequests(hub, "model-00003-of-00003.safetensors")).toHaveLength(0);
    expect(resolveRequests(hub, "consolidated.safetensors")).toHaveLength(0);
    const got = new Map<string, Tensor>();
    for (const [i, name] of shardNames.entries()) {
      const bytes = readFileSync(join(res.dir, name));
      expect(Buffer.compare(bytes, Buffer.from(shards[i]))).toBe(0);
      for (const t of readSafetensors(new Uint8Array(bytes))) got.set(t.name, t);
    }
    expect(got.size).toBe(tensors.length);
    for (const t of tensors) {
      expect(got.get(t.name)!.dtype).toBe("BF16");
      expect(Buffer.compare(Buffer.from(got.get(t.name)!.data), Buffer.from(t.data))).toBe(0);
    }
  });

  test("reuses blobs downloaded by Python tools (verified, no file downloads)", async () => {
    const { id, files } = synthRepo();
    const newCommit = hub.commitFiles(id, { "README.md": "changed card\n" }); // new commit, same model files
    const repoDir = join(cache, `models--${id.replace("/", "--")}`);
    const oldCommit = "a".repeat(40);
    // Lay out the cache as huggingface_hub does for an older commit.
    mkdirSync(join(repoDir, "blobs"), { recursive: true });
    mkdirSync(join(repoDir, "snapshots", oldCommit), { recursive: true });
    mkdirSync(join(repoDir, "refs"), { recursive: true });
    writeFileSync(join(repoDir, "refs", "main"), oldCommit);
    for (const [p, bytes] of Object.entries(files)) {
      const blobId = p.endsWith(".safetensors") ? sha256(bytes) : gitSha1(bytes);
      writeFileSync(join(repoDir, "blobs", blobId), bytes);
    }
    const res = await pullModel(id, base());
    expect(res.commit).toBe(newCommit);
    // Only the changed model card is fetched; every model file comes from the Python-made blobs.
    expect(resolveRequests(hub).every((r) => r.path.endsWith("/README.md"))).toBe(true);
    expect(resolveRequests(hub, "README.md").length).toBeGreaterThan(0);
    for (const [p, bytes] of Object.entries(files)) expect(Buffer.compare(readFileSync(join(res.dir, p)), Buffer.from(bytes))).toBe(0);
    expect(readFileSync(join(repoDir, "refs", "main"), "utf8")).toBe(newCommit);
  });

  test("a corrupted blob in the cache is deleted and downloaded again, never used", async () => {
    const { id, files } = synthRepo();
    const first = await pullModel(id, base());
    const blob = join(cache, `models--${id.replace("/", "--")}`, "blobs", sha256(files["model.safetensors"]));
    const bad = Buffer.from(readFileSync(blob));
    bad[100] ^= 0xff; // same size, wrong sha256
    writeFileSync(blob, bad);
    hub.resetLog();
    const res = await pullModel(id, base());
    expect(resolveRequests(hub, "model.safetensors").length).toBeGreaterThan(0);
    expect(resolveRequests(hub, "config.json")).toHaveLength(0);
    expect(Buffer.compare(readFileSync(join(res.dir, "model.safetensors")), Buffer.from(files["model.safetensors"]))).toBe(0);
    expect(res).toEqual(first);
  });

  test("resumes a connection dropped mid-file with an HTTP Range request, then verifies", async () => {
    const { id, files } = synthRepo();
    const size = files["model.safetensors"].length;
    const drop = hub.addFault({ match: /\/resolve\/.*\/model\.safetensors$/, kind: "drop", afterBytes: 20_000 });
    const res = await pullModel(id, base());
    expect(drop.hits).toBe(1);
    const ranges = resolveRequests(hub, "model.safetensors").map((r) => r.range);
    expect(ranges).toContain(`bytes=20000-${size - 1}`);
    expect(Buffer.compare(readFileSync(join(res.dir, "model.safetensors")), Buffer.from(files["model.safetensors"]))).toBe(0);
  });

  test("a body that goes silent mid-file hits the idle timeout and is resumed with Range", async () => {
    const { id, files } = synthRepo();
    const size = files["model.safetensors"].length;
    const stall = hub.addFault({ match: /\/resolve\/.*\/model\.safetensors$/, kind: "stall", afterBytes: 12_345 });
    const res = await pullModel(id, base({ timeoutMs: 150 }));
    expect(stall.hits).toBe(1);
    expect(resolveRequests(hub, "model.safetensors").map((r) => r.range)).toContain(`bytes=12345-${size - 1}`);
    expect(Buffer.compare(readFileSync(join(res.dir, "model.safetensors")), Buffer.from(files["model.safetensors"]))).toBe(0);
  });

  test("resumes a partial .incomplete file left by an earlier run; a bad partial is discarded", async () => {
    const { id, files } = synthRepo();
    const bytes = files["model.safetensors"];
    const blobs = join(cache, `models--${id.replace("/", "--")}`, "blobs");
    mkdirSync(blobs, { recursive: true });
    const partial = join(blobs, `${sha256(bytes)}.incomplete`);
    writeFileSync(partial, bytes.subarray(0, 30_000));
    const res = await pullModel(id, base());
    expect(resolveRequests(hub, "model.safetensors").map((r) => r.range)).toContain(`bytes=30000-${bytes.length - 1}`);
    expect(Buffer.compare(readFileSync(join(res.dir, "model.safetensors")), Buffer.from(bytes))).toBe(0);
    expect(existsSync(partial)).toBe(false);

    // A server that ignores Range (200 + whole file): the partial is restarted in place, not appended to.
    const third = synthRepo();
    const b3 = third.files["model.safetensors"];
    const blobs3 = join(cache, `models--${third.id.replace("/", "--")}`, "blobs");
    mkdirSync(blobs3, { recursive: true });
    writeFileSync(join(blobs3, `${sha256(b3)}.incomplete`), b3.subarray(0, 10_000));
    const nr = hub.addFault({ match: /\/resolve\/.*\/model\.safetensors$/, kind: "norange" });
    hub.resetLog();
    const res3 = await pullModel(third.id, base());
    expect(nr.hits).toBe(1);
    expect(resolveRequests(hub, "model.safetensors").filter((r) => r.range !== "bytes=0-0")).toHaveLength(1);
    expect(Buffer.compare(readFileSync(join(res3.dir, "model.safetensors")), Buffer.from(b3))).toBe(0);

    // A partial whose bytes are wrong fails verification, is deleted, and the file is fetched whole.
    const other = synthRepo();
    const b2 = other.files["model.safetensors"];
    const blobs2 = join(cache, `models--${other.id.replace("/", "--")}`, "blobs");
    mkdirSync(blobs2, { recursive: true });
    writeFileSync(join(blobs2, `${sha256(b2)}.incomplete`), new Uint8Array(30_000).fill(7));
    hub.resetLog();
    const res2 = await pullModel(other.id, base());
    const ranges = resolveRequests(hub, "model.safetensors").map((r) => r.range);
    expect(ranges).toContain(`bytes=30000-${b2.length - 1}`);
    expect(ranges).toContain(null); // the full re-download after the bad partial was dropped
    expect(Buffer.compare(readFileSync(join(res2.dir, "model.safetensors")), Buffer.from(b2))).toBe(0);
  });

  test("HTTP 500 twice, then success: retried with backoff (metadata calls too)", async () => {
    const { id, files } = synthRepo();
    const f1 = hub.addFault({ match: /\/resolve\/.*\/model\.safetensors$/, kind: "status", status: 500, times: 2 });
    const f2 = hub.addFault({ match: "/tree/", kind: "status", status: 503, times: 1 });
    const f3 = hub.addFault({ match: "/revision/", kind: "status", status: 502, times: 1 });
    const res = await pullModel(id, base());
    expect([f1.hits, f2.hits, f3.hits]).toEqual([2, 1, 1]);
    expect(Buffer.compare(readFileSync(join(res.dir, "model.safetensors")), Buffer.from(files["model.safetensors"]))).toBe(0);
  });

  test("HTTP 500 forever: a clear error with URL and status after the retries, no file in the snapshot", async () => {
    const { id } = synthRepo();
    const f = hub.addFault({ match: /\/resolve\/.*\/model\.safetensors$/, kind: "status", status: 500, times: Infinity });
    const err = await expectHubError(pullModel(id, base({ retries: 2 })), "http");
    expect(f.hits).toBe(3);
    expect(err.status).toBe(500);
    expect(err.message).toContain("HTTP 500");
    expect(err.message).toContain(`${hub.url}/${id}/resolve/`);
    expect(err.message).toContain("model.safetensors");
    expect(err.message).toContain("3 attempts");
    const snap = join(cache, `models--${id.replace("/", "--")}`, "snapshots");
    expect(walk(snap).filter((p) => p.endsWith("model.safetensors"))).toEqual([]);
  });

  test("a stalled response times out and is retried; stalling forever fails with a timeout error", async () => {
    const { id, files } = synthRepo();
    const f = hub.addFault({ match: /\/resolve\/.*\/model\.safetensors$/, kind: "delay", delayMs: 1500 });
    const t0 = performance.now();
    const res = await pullModel(id, base({ timeoutMs: 150 }));
    expect(performance.now() - t0).toBeLessThan(1400);
    expect(f.hits).toBe(1);
    expect(Buffer.compare(readFileSync(join(res.dir, "model.safetensors")), Buffer.from(files["model.safetensors"]))).toBe(0);

    const other = synthRepo();
    hub.addFault({ match: new RegExp(`${other.id}/resolve/.*/model\\.safetensors$`), kind: "delay", delayMs: 1500, times: Infinity });
    const err = await expectHubError(pullModel(other.id, base({ timeoutMs: 100, retries: 1 })), "timeout");
    expect(err.message).toContain("100 ms");
    expect(err.message).toContain("2 attempts");
  });

  test("corrupted bytes from the server are detected and re-downloaded; if always corrupt, they are never used", async () => {
    const { id, files } = synthRepo();
    const once = hub.addFault({ match: /\/resolve\/.*\/model\.safetensors$/, kind: "corrupt" });
    const res = await pullModel(id, base());
    expect(once.hits).toBe(1);
    expect(Buffer.compare(readFileSync(join(res.dir, "model.safetensors")), Buffer.from(files["model.safetensors"]))).toBe(0);

    const other = synthRepo();
    hub.addFault({ match: new RegExp(`${other.id}/resolve/.*/model\\.safetensors$`), kind: "corrupt", times: Infinity });
    const err = await expectHubError(pullModel(other.id, base({ retries: 2 })), "integrity");
    expect(err.message).toContain("model.safetensors");
    expect(err.message).toContain("failed verification");
    const repoDir = join(cache, `models--${other.id.replace("/", "--")}`);
    const blobs = readdirSync(join(repoDir, "blobs"));
    expect(blobs).not.toContain(sha256(other.files["model.safetensors"]));
    expect(blobs.filter((b) => b.endsWith(".incomplete"))).toEqual([]);
    expect(walk(join(repoDir, "snapshots")).filter((p) => p.endsWith("model.safetensors"))).toEqual([]);
  });

  test("downloads in parallel, bounded by concurrency", async () => {
    const id = `synth/many-${++repoCounter}`;
    const files: Record<string, Uint8Array> = { "config.json": new TextEncoder().encode(CONFIG) };
    for (let i = 0; i < 6; i++) files[`part-${i}.safetensors`] = synthWeights(2048);
    hub.addRepo(id, files);
    hub.addFault({ match: `${id}/resolve/`, kind: "delay", delayMs: 40, times: Infinity });

    hub.stats.maxInFlight = 0;
    await pullModel(id, base({ concurrency: 1, cacheDir: join(tmp, "c1") }));
    expect(hub.stats.maxInFlight).toBe(1);

    hub.stats.maxInFlight = 0;
    const res = await pullModel(id, base({ concurrency: 3, cacheDir: join(tmp, "c3") }));
    expect(hub.stats.maxInFlight).toBe(3);
    expect(res.files).toEqual(["config.json", ...Array.from({ length: 6 }, (_, i) => `part-${i}.safetensors`)]);
  });

  test("offline uses only the cache; clear errors when not cached or corrupted", async () => {
    const { id, files } = synthRepo();
    const online = await pullModel(id, base());
    hub.resetLog();
    const offline = await pullModel(id, { cacheDir: cache, offline: true, hubUrl: "http://127.0.0.1:9" });
    expect(offline).toEqual(online);
    expect(hub.requests).toHaveLength(0);
    // By commit sha too.
    expect((await pullModel(id, { cacheDir: cache, offline: true, revision: online.commit })).files).toEqual(online.files);

    const e1 = await expectHubError(pullModel("synth/never-pulled", { cacheDir: cache, offline: true }), "not_cached");
    expect(e1.message).toContain("synth/never-pulled");
    expect(e1.message).toContain("without --offline");
    await expectHubError(pullModel(id, { cacheDir: cache, offline: true, revision: "dev" }), "not_cached");

    const blob = join(cache, `models--${id.replace("/", "--")}`, "blobs", sha256(files["model.safetensors"]));
    writeFileSync(blob, new Uint8Array(files["model.safetensors"].length));
    const e2 = await expectHubError(pullModel(id, { cacheDir: cache, offline: true }), "not_cached");
    expect(e2.message).toContain("corrupted");
    expect(existsSync(blob)).toBe(false);
    expect(hub.requests).toHaveLength(0);
  });

  test("HF_ENDPOINT and HF_HUB_CACHE are honoured when no options are given", async () => {
    const { id } = synthRepo();
    process.env.HF_ENDPOINT = hub.url;
    process.env.HF_HUB_CACHE = join(tmp, "envcache");
    try {
      const res = await pullModel(id, { retryDelayMs: 1 });
      expect(res.dir.startsWith(join(tmp, "envcache", `models--${id.replace("/", "--")}`, "snapshots"))).toBe(true);
      expect(resolveRequests(hub).length).toBeGreaterThan(0);
    } finally {
      delete process.env.HF_ENDPOINT;
      delete process.env.HF_HUB_CACHE;
    }
    process.env.HF_HOME = "/x/hf-home";
    expect(resolveCacheRoot()).toBe("/x/hf-home/hub");
    delete process.env.HF_HOME;
    expect(resolveCacheRoot("/y/c")).toBe("/y/c");
    expect(resolveHubUrl()).toBe("https://huggingface.co");
    expect(resolveHubUrl("http://127.0.0.1:1234/")).toBe("http://127.0.0.1:1234");
    expect(() => resolveHubUrl("ftp://x")).toThrow(HubError);
  });
});

describe("pullModel refusals", () => {
  /** Nothing may be written outside the cache dir (tmp holds only "cache", if anything). */
  const onlyCacheInTmp = () => expect(readdirSync(tmp).filter((n) => n !== "cache")).toEqual([]);

  test("pickle-only repo", async () => {
    const err = await expectHubError(pullModel(SCENARIO_REPOS.pickleOnly, base()), "pickle_only");
    expect(err.message).toContain(SCENARIO_REPOS.pickleOnly);
    expect(err.message).toContain("realign never unpickles weights; use a revision with safetensors");
    expect(resolveRequests(hub)).toHaveLength(0);
    onlyCacheInTmp();
  });

  test("config with auto_map (remote code): refused before any weights are fetched", async () => {
    const err = await expectHubError(pullModel(SCENARIO_REPOS.remoteCode, base()), "remote_code");
    expect(err.message).toContain(SCENARIO_REPOS.remoteCode);
    expect(err.message).toContain("auto_map");
    expect(err.message).toContain("trust_remote_code");
    expect(resolveRequests(hub, "model.safetensors")).toHaveLength(0);
    expect(resolveRequests(hub, "modeling_evil.py")).toHaveLength(0);
    onlyCacheInTmp();
  });

  test("traversal path in the listing: whole pull refused before anything is written", async () => {
    const err = await expectHubError(pullModel(SCENARIO_REPOS.traversal, base()), "unsafe_path");
    expect(err.message).toContain('"../../evil"');
    expect(err.message).toContain("nothing was written");
    expect(resolveRequests(hub)).toHaveLength(0);
    expect(walk(tmp)).toEqual([]);
  });

  test("unsafe path checks", () => {
    const root = "/c/snap";
    for (const p of ["../x", "a/../../x", "/etc/passwd", "a\\b", "C:/x", "a//b", "./a", "a/.", "", "a/..", "x\0y"]) {
      expect(isSafeRepoPath(p, root)).toBe(false);
    }
    for (const p of ["config.json", "sub/dir/model.safetensors", "a..b", ".gitattributes"]) expect(isSafeRepoPath(p, root)).toBe(true);
  });

  test("gated repo: 401 without a token, 403 with a token lacking access; works once granted", async () => {
    const e401 = await expectHubError(pullModel(SCENARIO_REPOS.gated, base()), "gated");
    expect(e401.status).toBe(401);
    expect(e401.message).toContain(`repo ${SCENARIO_REPOS.gated} is gated or private`);
    expect(e401.message).toContain("accept its licence on the Hub page");
    expect(e401.message).toContain("set HF_TOKEN");
    onlyCacheInTmp();

    const e403 = await expectHubError(pullModel(SCENARIO_REPOS.gated, base({ token: FAKE_READ_TOKEN })), "gated");
    expect(e403.status).toBe(403);
    expect(e403.message).not.toContain(FAKE_READ_TOKEN);

    const priv = await expectHubError(pullModel(SCENARIO_REPOS.private, base()), "gated");
    expect(priv.status).toBe(401);

    hub.repos.get(SCENARIO_REPOS.gated)!.readers.add("bob");
    hub.resetLog();
    try {
      const res = await pullModel(SCENARIO_REPOS.gated, base({ token: FAKE_READ_TOKEN }));
      expect(res.files).toEqual(["config.json", "model.safetensors"]);
      expect(hub.log.filter((r) => r.path.includes("/resolve/")).every((r) => r.user === "bob")).toBe(true);
    } finally {
      hub.repos.get(SCENARIO_REPOS.gated)!.readers.delete("bob");
    }
  });

  test("bad input is rejected before any request; unknown repos are reported as not found", async () => {
    for (const id of ["noslash", "../x", "a/b/c", "a--b/c", "a/..", "owner/-x", ""]) {
      const e = await expectHubError(pullModel(id, base()), "bad_input");
      expect(e.message).toContain("owner/name");
    }
    for (const revision of ["../../etc", "a\\b", "/abs", "x y"]) {
      const e = await expectHubError(pullModel("synth/x", base({ revision })), "bad_input");
      expect(e.message).toContain("revision");
    }
    await expectHubError(pullModel("synth/x", base({ concurrency: 0 })), "bad_input");
    const tok = await expectHubError(pullModel("synth/x", base({ token: "not-a-token-secret" })), "bad_input");
    expect(tok.message).not.toContain("not-a-token-secret");
    expect(hub.requests).toHaveLength(0);

    // Authenticated: 404. Anonymous: the Hub answers 401 for missing and private repos alike.
    const nf = await expectHubError(pullModel("synth/does-not-exist", base({ token: FAKE_TOKEN })), "not_found");
    expect(nf.message).toContain("synth/does-not-exist");
    const anon = await expectHubError(pullModel("synth/does-not-exist", base()), "gated");
    expect(anon.message).toContain("or it does not exist");
    onlyCacheInTmp();
  });
});

// ---- model card ------------------------------------------------------------------------------------

const REPORT: RunReport = {
  model: "cognitivecomputations/dolphin-tiny",
  revision: "0123456789abcdef0123456789abcdef01234567",
  settings_hash: "sha256-5e77ab1e",
  direction: { layer: 5, position: -1, alpha: 0.75, rank: 1, method: "diff-of-means" },
  elicitation: {
    harmful_refusal_with_prompt: 0.9,
    harmless_refusal_with_prompt: 0.05,
    chosen: "/x/system-prompts/short.md",
    prompts_tried: [
      { source: "/x/system-prompts/default.md", harmful: { rate: 0.25, k: 16, n: 64, ci95: [0.16, 0.37] }, harmless: { rate: 0, k: 0, n: 64, ci95: [0, 0.057] }, gap: 0.25 },
      { source: "/x/system-prompts/short.md", harmful: { rate: 0.9, k: 58, n: 64, ci95: [0.81, 0.95] }, harmless: { rate: 0.05, k: 3, n: 64, ci95: [0.016, 0.13] }, gap: 0.85 },
    ],
  },
  baseline: { harmful_refusal: 0.1, harmless_refusal: 0.02, kl: null, utility: 0.8, jailbreak_asr: 0.7 },
  realigned: { harmful_refusal: 0.875, harmless_refusal: 0.04, kl: 0.01234, utility: 0.78, jailbreak_asr: null },
  gate: {
    passed: true,
    reasons: ["all checks passed"],
    checks: [
      { name: "harmful_refusal", passed: true, value: 0.875, threshold: ">= 0.8" },
      { name: "utility drop", passed: true, value: 0.02, threshold: "<= 0.05" },
    ],
  },
  published: null,
  timings_s: {},
};

function cardInput(over: Partial<ModelCardInput> = {}): ModelCardInput {
  return {
    baseModel: "cognitivecomputations/dolphin-tiny",
    baseRevision: REPORT.revision,
    license: "apache-2.0",
    report: REPORT,
    settings: { layer: "auto", alpha: 0.75, prompts: { harmful: "advbench", n: 64 } },
    systemPrompt: "You are a helpful assistant. Refuse harmful requests.",
    promptSets: [
      { name: "harmful_train", source: "refusal_direction (Arditi et al.)", size: 260 },
      { name: "harmless | train", source: "alpaca", size: 512 },
    ],
    realignVersion: "0.1.0",
    ...over,
  };
}

describe("model card", () => {
  test("front matter: base model, relation, licence, tags, pipeline, settings hash, metrics", () => {
    const { frontMatter: fm, body } = parseModelCard(renderModelCard(cardInput()));
    expect(fm.base_model).toBe("cognitivecomputations/dolphin-tiny");
    expect(fm.base_model_relation).toBe("finetune");
    expect(fm.license).toBe("apache-2.0");
    expect(fm.pipeline_tag).toBe("text-generation");
    expect(fm.tags).toEqual(expect.arrayContaining(["rosi", "safety", "realigned"]));
    expect(fm.settings_hash).toBe("sha256-5e77ab1e");
    const realign = fm.realign as { metrics: { baseline: Record<string, unknown>; realigned: Record<string, unknown> }; layer: number; gate_passed: boolean };
    expect(realign.metrics.realigned.harmful_refusal).toBe(0.875);
    expect(realign.metrics.baseline.kl).toBeNull();
    expect(realign.layer).toBe(5);
    expect(realign.gate_passed).toBe(true);
    expect(body.startsWith("# dolphin-tiny-ROSI")).toBe(true);
  });

  test("body: what was done, before/after table with — for null, gate checks, reproduction", () => {
    const body = parseModelCard(renderModelCard(cardInput())).body;
    expect(body).toContain("**Direction taken at layer:** 5, **token position:** -1");
    expect(body).toContain("**Strength α:** 0.75, **rank:** 1");
    expect(body).toContain("You are a helpful assistant. Refuse harmful requests.");
    // Every safety prompt tried, by file name (never the local path), the kept one marked.
    expect(body).toContain("| default.md | 25.0 % (16/64, 95 % CI 16.0–37.0 %) | 0.0 % (0/64, 95 % CI 0.0–5.7 %) | +25.0 points |");
    expect(body).toContain("| short.md (kept) | 90.0 % (58/64, 95 % CI 81.0–95.0 %) |");
    expect(body).not.toContain("/x/system-prompts");
    expect(body).toContain("| harmful_train | refusal_direction (Arditi et al.) | 260 |");
    expect(body).toContain("| harmless \\| train | alpaca | 512 |"); // pipes escaped in cells
    expect(body).toMatch(/\| Harmful refusal rate \| 10\.0 % \| 87\.5 % \|/);
    expect(body).toMatch(/\| KL divergence vs\. base \(harmless prompts\) \| – \| 0\.012 \|/);
    expect(body).toMatch(/\| Jailbreak attack success rate \| 70\.0 % \| – \|/);
    expect(body).not.toContain("Judge-rated"); // optional metrics absent from both
    expect(body).toContain("**Passed.**");
    expect(body).toContain("| utility drop | 2.0 % | <= 0.05 | pass |");
    expect(body).toContain("realign cognitivecomputations/dolphin-tiny --revision 0123456789abcdef0123456789abcdef01234567");
    expect(body).toContain("alpha: 0.75");
    expect(body).toContain("sha256-5e77ab1e");
  });

  test("unknown licence omitted; 'other' links the base model; null sections say so; backticks in the prompt stay fenced", () => {
    const noLic = parseModelCard(renderModelCard(cardInput({ license: null })));
    expect("license" in noLic.frontMatter).toBe(false);
    const other = parseModelCard(renderModelCard(cardInput({ license: "other" })));
    expect(other.frontMatter.license_link).toBe("https://huggingface.co/cognitivecomputations/dolphin-tiny");
    const bare = renderModelCard(cardInput({ report: { ...REPORT, baseline: null, realigned: null, gate: null, direction: null } }));
    expect(bare).toContain("No validation was run.");
    expect(bare).toContain("The release gate was not run.");
    const tricky = renderModelCard(cardInput({ systemPrompt: "Use ```code``` blocks\n---\nnot: front matter" }));
    expect(tricky).toContain("````text\nUse ```code``` blocks");
    expect(parseModelCard(tricky).frontMatter.settings_hash).toBe("sha256-5e77ab1e");
    expect(() => renderModelCard(cardInput({ report: { ...REPORT, settings_hash: "" } }))).toThrow(ModelCardError);
  });

  test("a gated edit's card states the gate read-out on train and validation prompts; other methods' cards do not", () => {
    const stats = (mean: number, std: number, n: number) => ({ mean, std, max: mean + 2 * std, n });
    const gated = { ...REPORT, details: { gate_keys: { train: { harmful: stats(1, 0.12, 96), harmless: stats(0.01, 0.04, 576) }, validation: { harmful: stats(0.96, 0.18, 64), harmless: stats(0.02, 0.1, 64) } } } };
    const body = parseModelCard(renderModelCard(cardInput({ report: gated }))).body;
    expect(body).toContain("**Gate read-out** (Σ k·x at the last prompt positions; 1 = the full step): train prompts: harmful 1.00 ± 0.12 (n 96), harmless 0.01 ± 0.04 (n 576); validation prompts: harmful 0.96 ± 0.18 (n 64), harmless 0.02 ± 0.10 (n 64)");
    expect(parseModelCard(renderModelCard(cardInput())).body).not.toContain("Gate read-out");
    // A malformed record is left out, not printed half.
    const broken = { ...REPORT, details: { gate_keys: { train: { harmful: { mean: "x" } } } } };
    expect(parseModelCard(renderModelCard(cardInput({ report: broken }))).body).not.toContain("Gate read-out");
  });

  test("parseModelCard: no front matter, bad YAML, unclosed, non-mapping", () => {
    expect(parseModelCard("# Title\ntext\n")).toEqual({ frontMatter: {}, body: "# Title\ntext\n" });
    expect(parseModelCard("---\na: 1\n---\nbody")).toEqual({ frontMatter: { a: 1 }, body: "body" });
    expect(parseModelCard("---\r\na: 1\r\n---\r\n\r\nbody")).toEqual({ frontMatter: { a: 1 }, body: "body" });
    expect(() => parseModelCard("---\na: [1\n---\n")).toThrow(ModelCardError);
    expect(() => parseModelCard("---\na: 1\n")).toThrow(/no closing ---/);
    expect(() => parseModelCard("---\n- a\n- b\n---\n")).toThrow(/mapping/);
  });
});

// ---- publish ----------------------------------------------------------------------------------------

/** Run `fn` capturing everything written through console.* */
async function captureConsole<T>(fn: () => Promise<T>): Promise<{ value: T; output: string }> {
  const methods = ["log", "info", "warn", "error", "debug", "trace"] as const;
  const saved = methods.map((m) => console[m]);
  let output = "";
  for (const m of methods) console[m] = (...args: unknown[]) => void (output += args.map(String).join(" ") + "\n");
  try {
    return { value: await fn(), output };
  } finally {
    methods.forEach((m, i) => (console[m] = saved[i]));
  }
}

/** Every regular file under `dir` whose bytes contain `needle`. */
function filesContaining(dir: string, needle: string): string[] {
  return walk(dir).filter((p) => {
    const st = lstatSync(join(dir, p));
    return st.isFile() && readFileSync(join(dir, p)).includes(needle);
  });
}

describe("publishModel", () => {
  function outDir(): { dir: string; files: Record<string, Uint8Array> } {
    const dir = join(tmp, "out");
    mkdirSync(dir, { recursive: true });
    const files: Record<string, Uint8Array> = {
      "config.json": new TextEncoder().encode(CONFIG),
      "tokenizer.json": new TextEncoder().encode('{"version":"1.0","model":{"type":"BPE"}}'),
      "model.safetensors": hasShared() ? new Uint8Array(readFileSync(sharedPath("fixtures", "hf-golden", "llama", "model.safetensors"))) : synthWeights(),
    };
    for (const [p, b] of Object.entries(files)) writeFileSync(join(dir, p), b);
    return { dir, files };
  }
  const card = (hash: string) => renderModelCard(cardInput({ report: { ...REPORT, settings_hash: hash } }));

  test("publishes in one commit, pulls back byte-identical, and a second publish is skipped", async () => {
    const { dir, files } = outDir();
    const names = Object.keys(files);
    const opts = {
      dir,
      defaultName: "dolphin-tiny-ROSI",
      private: true,
      hubUrl: hub.url,
      token: FAKE_TOKEN,
      settingsHash: "sha256-5e77ab1e",
      commitMessage: "ROSI realignment (realign 0.1.0)",
      files: names,
      card: card("sha256-5e77ab1e"),
      retryDelayMs: 1,
    };
    const { value: res, output } = await captureConsole(() => publishModel(opts));
    expect(res.repo).toBe("alice/dolphin-tiny-ROSI");
    expect(res.skipped).toBe(false);
    expect(res.url).toBe(`${hub.url}/alice/dolphin-tiny-ROSI`);
    const repo = hub.repos.get(res.repo)!;
    expect(repo.private).toBe(true);
    expect(repo.refs.get("main")).toBe(res.commit);
    const head = repo.commits.get(res.commit)!;
    expect(head.title).toBe(opts.commitMessage);
    expect(repo.commits.get(head.parent!)!.parent).toBeNull(); // one commit on top of the repo's initial commit
    expect([...head.files.keys()].sort()).toEqual([".gitattributes", "README.md", ...names].sort());
    expect(head.files.get("model.safetensors")!.lfs).toBe(true);
    expect(hub.requests.filter((r) => r.startsWith("POST ") && r.includes("/commit/"))).toHaveLength(1);

    // Pull it back (private: needs the token).
    const pulled = await captureConsole(() => pullModel(res.repo, base({ token: FAKE_TOKEN })));
    for (const [p, b] of Object.entries(files)) expect(Buffer.compare(readFileSync(join(pulled.value.dir, p)), Buffer.from(b))).toBe(0);
    expect(pulled.value.commit).toBe(res.commit);

    const readme = new TextDecoder().decode(hub.filesAt(res.repo).get("README.md")!.content);
    const fm = parseModelCard(readme).frontMatter;
    expect(fm.settings_hash).toBe("sha256-5e77ab1e");
    expect(fm.base_model).toBe("cognitivecomputations/dolphin-tiny");
    expect((fm.realign as { metrics: { realigned: { harmful_refusal: number } } }).metrics.realigned.harmful_refusal).toBe(0.875);

    // Same settings hash → nothing uploaded, same commit.
    hub.resetLog();
    const commitsBefore = repo.commits.size;
    const again = await captureConsole(() => publishModel(opts));
    expect(again.value).toEqual({ ...res, skipped: true });
    expect(repo.commits.size).toBe(commitsBefore);
    expect(hub.requests.filter((r) => r.startsWith("POST ") || r.startsWith("PUT "))).toEqual([]);

    // New settings → a new commit on top of the previous one.
    const third = await publishModel({ ...opts, settingsHash: "sha256-new", card: card("sha256-new") });
    expect(third.skipped).toBe(false);
    expect(repo.commits.get(third.commit)!.parent).toBe(res.commit);

    // The token appears nowhere: console output, files written (cache and output), error messages.
    for (const out of [output, pulled.output, again.output]) expect(out).not.toContain(FAKE_TOKEN);
    expect(filesContaining(tmp, FAKE_TOKEN)).toEqual([]);
  });

  test("explicit repo (an org the user belongs to) and failures: clear errors, never the token", async () => {
    const { dir, files } = outDir();
    const opts = {
      dir,
      repo: "realign-test-org/tiny-ROSI",
      defaultName: "unused",
      hubUrl: hub.url,
      token: FAKE_TOKEN,
      settingsHash: "h1",
      commitMessage: "publish",
      files: Object.keys(files),
      card: card("h1"),
      retryDelayMs: 1,
    };
    const ok = await publishModel(opts);
    expect(ok.repo).toBe("realign-test-org/tiny-ROSI");
    expect(hub.repos.get(ok.repo)!.private).toBe(false);

    // Read-only token: creating the repo is refused.
    const ro = await expectHubError(publishModel({ ...opts, repo: undefined, defaultName: "x-ROSI", token: FAKE_READ_TOKEN }), "auth");
    expect(ro.message).toContain("write access");
    expect(ro.message).not.toContain(FAKE_READ_TOKEN);
    // Unknown token.
    const bad = "hf_unknownTokenValue123456";
    const e401 = await expectHubError(publishModel({ ...opts, token: bad, repo: undefined }), "auth");
    expect(e401.message).not.toContain(bad);
    // Input validation, before any request.
    hub.resetLog();
    await expectHubError(publishModel({ ...opts, token: "" }), "auth");
    expect((await expectHubError(publishModel({ ...opts, card: card("other") }), "bad_input")).message).toContain("settings_hash");
    expect((await expectHubError(publishModel({ ...opts, files: ["README.md"] }), "bad_input")).message).toContain("README.md");
    expect((await expectHubError(publishModel({ ...opts, files: ["../etc/passwd"] }), "bad_input")).message).toContain("relative path");
    expect((await expectHubError(publishModel({ ...opts, files: ["missing.bin"] }), "bad_input")).message).toContain("does not exist");
    await expectHubError(publishModel({ ...opts, files: [] }), "bad_input");
    await expectHubError(publishModel({ ...opts, repo: "bad/../repo" }), "bad_input");
    await expectHubError(publishModel({ ...opts, repo: undefined, defaultName: "-bad-" }), "bad_input");
    expect(hub.requests).toEqual([]);
  });
});
