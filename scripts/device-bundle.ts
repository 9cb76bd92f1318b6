// `bun run device-bundle [--out dir] [--preset 9e] [--no-shared] [--limit-mib 60]`
//
// Packs what realign needs on a bare x86-64 Linux GPU machine that has no internet and cannot
// install anything, small enough to travel with the working tree (64 MiB in all):
//   <out>/a/bun.xz                          the Bun binary (BCJ x86 + LZMA2)
//   <out>/b/onnxruntime-linux-x64.tar.xz    onnxruntime-node's linux-x64 native files
//   <out>/b/node_modules.tar.xz             node_modules without native binaries of other
//                                           platforms, without Bun's (in a/) and dev-only natives
//   <out>/b/shared.tar.xz                   the ../shared fixtures the GPU test reads (optional)
//   <out>/a/unpack.sh, <out>/b/unpack.sh    identical; each restores the archives beside it
//   <out>/MANIFEST.json                     sizes, sha256s, versions
// Two parts because the tracked tree (the 20 MB demo model) plus the whole bundle can exceed the
// transfer limit: part a and part b can then travel in two runs on the same warm machine.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";

const MiB = 1024 * 1024;
/** What the bundle may weigh (the transfer limit is 64 MiB; the rest is headroom for scripts). */
export const DEFAULT_LIMIT_BYTES = 60 * MiB;
/** The transfer limit of a device run: tracked + untracked-not-ignored files + carried paths. */
export const TRANSFER_LIMIT_BYTES = 64 * MiB;
const ORT_NATIVE_DIR = "node_modules/onnxruntime-node/bin/napi-v6/linux/x64";
/**
 * ../shared files the GPU test needs (tests/e2e/gpu.test.ts): the hf-golden llama fixture. Not
 * shared/README.md: without it the other fixture tests skip there instead of failing on files
 * that were not shipped.
 */
export const DEFAULT_SHARED_PATHS = ["fixtures/hf-golden/llama"];
/** Names the bundler itself writes into the output folder (anything else there is refused). */
const OWN_NAMES = new Set(["a", "b", "MANIFEST.json", "env.sh"]);

export class BundleError extends Error {
  override name = "BundleError";
}

export interface BundleOptions {
  /** Repository root (default: the folder above scripts/). */
  root?: string;
  /** Output folder (default <root>/.device); replaced as a whole. */
  outDir?: string;
  /** node_modules to pack (default <root>/node_modules). */
  nodeModules?: string;
  /** The linux-x64 Bun binary (default: what node_modules/.bin/bun resolves to, else @oven/bun-linux-x64*). */
  bunBinary?: string;
  /** The shared folder the GPU test fixtures come from (default <root>/../shared); null: ship none. */
  sharedDir?: string | null;
  /** Paths inside sharedDir to ship (default DEFAULT_SHARED_PATHS). */
  sharedPaths?: string[];
  /** xz preset, "0" … "9" with an optional "e" (default "9e": slow, smallest). */
  preset?: string;
  /** Fail when the bundle weighs more (default 60 MiB). */
  limitBytes?: number;
  /** xz executable (default "xz" on PATH). */
  xz?: string;
  log?: (msg: string) => void;
}

export interface BundleFile {
  /** Path relative to the output folder, e.g. "a/bun.xz". */
  name: string;
  bytes: number;
  /** Uncompressed bytes of what it holds (0 for scripts). */
  rawBytes: number;
  sha256: string;
}

export interface BundleResult {
  outDir: string;
  files: BundleFile[];
  totalBytes: number;
  /** Per part folder ("a", "b"): bytes. */
  parts: Record<string, number>;
  /** Bytes of the files a device run sends besides carried paths (git tracked + untracked-not-ignored); null outside a git checkout. */
  workingTreeBytes: number | null;
  /** Whether git ignores the output folder (it must, or it travels with every run); null when not inside the checkout. */
  outDirIgnored: boolean | null;
  bunVersion: string | null;
  onnxruntimeVersion: string | null;
}

export interface BundlePlan {
  root: string;
  nodeModules: string;
  bunBinary: string;
  /** Files of onnxruntime-node's linux-x64 native folder that are shipped, relative to root's parent of node_modules. */
  ortFiles: string[];
  /** Left out of node_modules.tar.xz, relative to the folder holding node_modules, with the reason. */
  excluded: { path: string; why: string }[];
  shared: { dir: string; paths: string[] } | null;
}

const defaultRoot = (): string => resolve(import.meta.dir, "..");

/** True for an x86-64 ELF file (what the target machine runs). */
export function isElfX64(path: string): boolean {
  let fd: number | null = null;
  try {
    fd = openSync(path, "r");
    const head = Buffer.alloc(20);
    const n = readSync(fd, head, 0, 20, 0);
    // \x7fELF, 64-bit class, little endian, e_machine 0x3E (EM_X86_64)
    return n === 20 && head.readUInt32BE(0) === 0x7f454c46 && head[4] === 2 && head[5] === 1 && head.readUInt16LE(18) === 0x3e;
  } catch {
    return false;
  } finally {
    if (fd !== null) closeSync(fd);
  }
}

function findBun(nodeModules: string): string {
  const candidates: string[] = [];
  const bin = join(nodeModules, ".bin", "bun");
  if (existsSync(bin)) candidates.push(realpathSync(bin));
  // glibc builds first: the target is a glibc distribution; musl/baseline as fallbacks.
  for (const pkg of ["bun-linux-x64", "bun-linux-x64-baseline", "bun-linux-x64-musl", "bun-linux-x64-musl-baseline"]) {
    candidates.push(join(nodeModules, "@oven", pkg, "bin", "bun"));
  }
  const found = candidates.find((c) => existsSync(c) && isElfX64(c));
  if (found) return found;
  throw new BundleError(
    `no linux-x64 Bun binary found (looked at ${candidates.map((c) => relative(process.cwd(), c) || c).join(", ")}); ` +
      "on another platform add it with `npm install --no-save --force @oven/bun-linux-x64@<bun version>`",
  );
}

/** Packages whose package.json restricts them (os/cpu) to a platform other than linux-x64. */
function foreignPlatformPackages(nodeModules: string): string[] {
  const out: string[] = [];
  const visit = (dir: string, rel: string) => {
    const pj = join(dir, "package.json");
    if (!existsSync(pj)) return;
    let meta: { os?: unknown; cpu?: unknown };
    try {
      meta = JSON.parse(readFileSync(pj, "utf8")) as { os?: unknown; cpu?: unknown };
    } catch {
      return;
    }
    const allows = (list: unknown, want: string) => !Array.isArray(list) || list.length === 0 || list.includes(want) || (list.every((x) => String(x).startsWith("!")) && !list.includes(`!${want}`));
    if (!allows(meta.os, "linux") || !allows(meta.cpu, "x64")) out.push(rel);
  };
  for (const name of readdirSync(nodeModules)) {
    if (name.startsWith(".")) continue;
    if (name.startsWith("@")) {
      for (const sub of readdirSync(join(nodeModules, name))) visit(join(nodeModules, name, sub), `${name}/${sub}`);
    } else visit(join(nodeModules, name), name);
  }
  return out;
}

/** Resolves every input and decides what goes where; compresses nothing. */
export function planBundle(opts: BundleOptions = {}): BundlePlan {
  const root = resolve(opts.root ?? defaultRoot());
  const nodeModules = resolve(opts.nodeModules ?? join(root, "node_modules"));
  if (!existsSync(nodeModules)) throw new BundleError(`${nodeModules} not found: run \`npm install\` first`);
  const bunBinary = opts.bunBinary ? resolve(opts.bunBinary) : findBun(nodeModules);
  if (!existsSync(bunBinary)) throw new BundleError(`Bun binary ${bunBinary} not found`);

  const base = dirname(nodeModules);
  const ortDir = join(base, ORT_NATIVE_DIR);
  if (!existsSync(join(ortDir, "libonnxruntime.so.1")) || !existsSync(join(ortDir, "onnxruntime_binding.node"))) {
    throw new BundleError(`${ortDir} lacks libonnxruntime.so.1 / onnxruntime_binding.node: is onnxruntime-node installed?`);
  }
  const excluded: { path: string; why: string }[] = [];
  const ortFiles: string[] = [];
  for (const f of readdirSync(ortDir).sort()) {
    // The CUDA/TensorRT EP libraries (ONNXRUNTIME_NODE_INSTALL=cuda12) are hundreds of MB and need CUDA + cuDNN there.
    if (/providers_(cuda|tensorrt)/.test(f)) excluded.push({ path: `${ORT_NATIVE_DIR}/${f}`, why: "CUDA EP library: too large to ship" });
    else ortFiles.push(`${ORT_NATIVE_DIR}/${f}`);
  }

  excluded.push(
    { path: "node_modules/onnxruntime-node/bin/napi-v6", why: "native binaries: darwin, win32, linux/arm64 dropped; linux/x64 shipped in onnxruntime-linux-x64.tar.xz" },
    { path: "node_modules/@oven", why: "Bun platform packages: the binary is shipped in bun.xz" },
    { path: "node_modules/node-llama-cpp", why: "dev-only: llama.cpp for the GGUF tests (they skip without it)" },
    { path: "node_modules/@node-llama-cpp", why: "dev-only: llama.cpp binaries for the GGUF tests" },
    { path: "node_modules/bun/bin/bun.exe", why: "the Bun binary: shipped in bun.xz" },
    { path: "node_modules/bun/bin/bunx.exe", why: "a copy of the Bun binary: restored as a link" },
  );
  for (const pkg of foreignPlatformPackages(nodeModules)) {
    const path = `node_modules/${pkg}`;
    if (!excluded.some((e) => path === e.path || path.startsWith(`${e.path}/`))) excluded.push({ path, why: "package for another platform (os/cpu)" });
  }
  // tsgo, TypeScript 7's native compiler: only `tsc` type checking needs it, never a run.
  if (existsSync(join(nodeModules, "@typescript"))) excluded.push({ path: "node_modules/@typescript", why: "native TypeScript compiler: type checking only" });

  let shared: BundlePlan["shared"] = null;
  const sharedDir = opts.sharedDir === undefined ? resolve(root, "..", "shared") : opts.sharedDir;
  if (sharedDir !== null) {
    const paths = opts.sharedPaths ?? DEFAULT_SHARED_PATHS;
    const missing = paths.filter((p) => !existsSync(join(sharedDir, p)));
    if (missing.length === 0) shared = { dir: resolve(sharedDir), paths };
    else if (opts.sharedDir !== undefined) throw new BundleError(`${sharedDir} lacks ${missing.join(", ")}`);
    // The default ../shared being absent only means the GPU test will skip there; say so.
    else opts.log?.(`note: ${sharedDir} lacks ${missing.join(", ")}: the GPU test's fixtures are not bundled (it will skip)`);
  }
  return { root, nodeModules, bunBinary, ortFiles, excluded, shared };
}

function checkXz(xz: string): void {
  const r = spawnSync(xz, ["--version"], { encoding: "utf8" });
  if (r.error || r.status !== 0) {
    throw new BundleError(`\`${xz}\` is not available (${r.error?.message ?? r.stderr.trim()}): install xz-utils (apt-get install xz-utils) or pass --xz <path>`);
  }
}

function xzArgs(preset: string, executable: boolean): string[] {
  if (!/^\d(e)?$/.test(preset)) throw new BundleError(`xz preset must be 0-9 with an optional "e", got "${preset}"`);
  // The BCJ x86 filter rewrites relative call/jump targets to absolute ones: about 6 % smaller
  // for machine code. One thread: one LZMA2 block, the smallest output, deterministic.
  return [...(executable ? ["--x86"] : []), `--lzma2=preset=${preset}`, "-T1", "-c"];
}

/** Runs `producer | xz … > out` (or `xz … file > out`), with every exit code checked. */
function compress(producer: { cmd: string; args: string[]; cwd?: string } | { file: string }, out: string, xz: string, xzOpts: string[]): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const fd = openSync(out, "w");
    let settled = false;
    const done = (err?: Error) => {
      if (settled) return; // "error" and "close" can both fire
      settled = true;
      closeSync(fd);
      if (err) reject(err);
      else resolvePromise();
    };
    const xzArgv = "file" in producer ? [...xzOpts, producer.file] : xzOpts;
    const xzp = spawn(xz, xzArgv, { stdio: ["file" in producer ? "ignore" : "pipe", fd, "pipe"] });
    let xzErr = "";
    xzp.stderr?.on("data", (d: Buffer) => (xzErr += d.toString()));
    xzp.on("error", (e) => done(e));
    if ("file" in producer) {
      xzp.on("close", (code) => done(code === 0 ? undefined : new BundleError(`xz ${producer.file} failed (${code}): ${xzErr.trim()}`)));
      return;
    }
    const src = spawn(producer.cmd, producer.args, { cwd: producer.cwd, stdio: ["ignore", "pipe", "pipe"] });
    let srcErr = "";
    src.stderr?.on("data", (d: Buffer) => (srcErr += d.toString()));
    if (src.stdout && xzp.stdin) src.stdout.pipe(xzp.stdin);
    src.on("error", (e) => {
      xzp.kill();
      done(e);
    });
    // Both processes must have exited before the archive is judged complete.
    const exited = Promise.all([new Promise<number | null>((r) => src.on("close", r)), new Promise<number | null>((r) => xzp.on("close", r))]);
    void exited.then(([srcCode, xzCode]) => {
      if (srcCode !== 0) done(new BundleError(`${producer.cmd} ${producer.args.slice(0, 3).join(" ")}… failed (${srcCode}): ${srcErr.trim().slice(0, 500)}`));
      else if (xzCode !== 0) done(new BundleError(`xz failed (${xzCode}): ${xzErr.trim()}`));
      else done();
    });
  });
}

function tarArgs(base: string, paths: string[], excludes: string[] = []): string[] {
  // Sorted, root-owned entries: the same inputs give the same archive, and extraction as root
  // does not hand files to the packer's uid.
  return ["-C", base, "--sort=name", "--owner=0", "--group=0", "--numeric-owner", ...excludes.map((e) => `--exclude=${e}`), "-cf", "-", ...paths];
}

function duBytes(path: string, skip: (p: string) => boolean = () => false): number {
  if (skip(path)) return 0;
  const st = lstatSync(path);
  if (!st.isDirectory()) return st.isFile() ? st.size : 0;
  let sum = 0;
  for (const n of readdirSync(path)) sum += duBytes(join(path, n), skip);
  return sum;
}

function sha256File(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** True when git ignores `path` in the checkout at `root` (null outside git or outside the checkout). */
export function gitIgnored(root: string, path: string): boolean | null {
  const rel = relative(root, path);
  if (rel.startsWith("..") || isAbsolute(rel)) return null;
  const r = spawnSync("git", ["-C", root, "check-ignore", "-q", `${rel}/`]);
  return r.status === 0 ? true : r.status === 1 ? false : null;
}

/**
 * Bytes of the files a device run sends besides carried paths (git tracked + untracked-not-ignored),
 * leaving out `except` (the bundle, counted separately); null outside a git checkout.
 */
export function workingTreeBytes(root: string, except?: string): number | null {
  const r = spawnSync("git", ["-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"], { encoding: "utf8", maxBuffer: 64 * MiB });
  if (r.error || r.status !== 0) return null;
  let sum = 0;
  const skip = except ? relative(root, except) : null;
  for (const f of r.stdout.split("\0")) {
    if (!f || (skip && (f === skip || f.startsWith(`${skip}/`)))) continue;
    try {
      const st = lstatSync(join(root, f));
      if (st.isFile()) sum += st.size;
    } catch {
      // deleted but still in the index
    }
  }
  return sum;
}

function bunVersion(bin: string): string | null {
  const r = spawnSync(bin, ["--version"], { encoding: "utf8", timeout: 10_000 });
  return r.status === 0 ? r.stdout.trim() : null;
}

function packageVersion(nodeModules: string, name: string): string | null {
  try {
    return (JSON.parse(readFileSync(join(nodeModules, name, "package.json"), "utf8")) as { version?: string }).version ?? null;
  } catch {
    return null;
  }
}

/** The unpack script; identical in a/ and b/, each restores the archives found beside it. */
export const UNPACK_SH = `#!/bin/sh
# Restores the realign device bundle part in this folder into the repository root
# (default: two folders up, i.e. the checkout that holds .device/<part>/), on a bare x86-64 Linux
# machine: no network, nothing installed. Usage: sh .device/a/unpack.sh [repo-root]
# Parts can be unpacked in separate runs on the same machine; each one is restored independently.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "\${1:-$HERE/../..}" && pwd)
BUNDLE=$(dirname "$HERE")

unxz_to_stdout() {
  if command -v xz >/dev/null 2>&1; then xz -dc "$1"
  elif command -v python3 >/dev/null 2>&1; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  else echo "unpack: neither xz nor python3 is available to decompress $1" >&2; exit 1
  fi
}

if [ -f "$HERE/bun.xz" ]; then
  mkdir -p "$ROOT/node_modules/bun/bin" "$ROOT/node_modules/.bin"
  unxz_to_stdout "$HERE/bun.xz" > "$ROOT/node_modules/bun/bin/bun.exe.tmp"
  chmod 755 "$ROOT/node_modules/bun/bin/bun.exe.tmp"
  mv -f "$ROOT/node_modules/bun/bin/bun.exe.tmp" "$ROOT/node_modules/bun/bin/bun.exe"
  ln -sf bun.exe "$ROOT/node_modules/bun/bin/bunx.exe"
  ln -sf ../bun/bin/bun.exe "$ROOT/node_modules/.bin/bun"
  ln -sf ../bun/bin/bunx.exe "$ROOT/node_modules/.bin/bunx"
  echo "unpack: bun -> $ROOT/node_modules/bun/bin/bun.exe"
fi
if [ -f "$HERE/node_modules.tar.xz" ]; then
  unxz_to_stdout "$HERE/node_modules.tar.xz" | tar -xf - --no-same-owner -C "$ROOT"
  echo "unpack: node_modules -> $ROOT/node_modules"
fi
if [ -f "$HERE/onnxruntime-linux-x64.tar.xz" ]; then
  unxz_to_stdout "$HERE/onnxruntime-linux-x64.tar.xz" | tar -xf - --no-same-owner -C "$ROOT"
  echo "unpack: onnxruntime-node linux-x64 native files -> $ROOT/${ORT_NATIVE_DIR}"
fi
if [ -f "$HERE/shared.tar.xz" ]; then
  # tests find their fixtures in ../shared beside the checkout; an existing one is left alone.
  SHARED="$ROOT/../shared"
  if [ -f "$SHARED/README.md" ] && [ ! -f "$SHARED/.from-device-bundle" ]; then
    echo "unpack: $SHARED exists; fixtures not restored over it"
  else
    mkdir -p "$SHARED"
    unxz_to_stdout "$HERE/shared.tar.xz" | tar -xf - --no-same-owner -C "$SHARED"
    touch "$SHARED/.from-device-bundle"
    echo "unpack: test fixtures -> $SHARED"
  fi
fi

# Bun on PATH: an env file to source, and (as root, unless REALIGN_NO_SYSTEM_BUN=1) /usr/local/bin/bun.
printf 'export PATH="%s/node_modules/.bin:$PATH"\\n' "$ROOT" > "$BUNDLE/env.sh"
if [ -x "$ROOT/node_modules/bun/bin/bun.exe" ] && [ "\${REALIGN_NO_SYSTEM_BUN:-0}" != 1 ] && [ -w /usr/local/bin ]; then
  ln -sf "$ROOT/node_modules/bun/bin/bun.exe" /usr/local/bin/bun
fi
echo "unpack: put bun on PATH with: . $BUNDLE/env.sh"

# Versions of what is there now (parts may still be missing).
if [ -x "$ROOT/node_modules/bun/bin/bun.exe" ]; then echo "bun $("$ROOT/node_modules/bun/bin/bun.exe" --version)"; else echo "bun: not unpacked yet (part a)"; fi
if [ -f "$ROOT/node_modules/onnxruntime-node/package.json" ]; then
  echo "onnxruntime-node $(sed -n 's/.*"version": *"\\([^"]*\\)".*/\\1/p' "$ROOT/node_modules/onnxruntime-node/package.json" | head -n 1)"
else echo "onnxruntime-node: not unpacked yet (part b)"; fi
if [ -x "$ROOT/node_modules/bun/bin/bun.exe" ] && [ -f "$ROOT/${ORT_NATIVE_DIR}/libonnxruntime.so.1" ]; then
  (cd "$ROOT" && "$ROOT/node_modules/bun/bin/bun.exe" -e 'const o = require("onnxruntime-node"); console.log("onnxruntime backends: " + o.listSupportedBackends().map((b) => b.name).join(", "))') || echo "unpack: warning: onnxruntime-node did not load"
fi
`;

/** Builds the bundle (see the file header). Replaces opts.outDir. */
export async function buildBundle(opts: BundleOptions = {}): Promise<BundleResult> {
  const log = opts.log ?? (() => {});
  const xz = opts.xz ?? "xz";
  checkXz(xz);
  const plan = planBundle(opts);
  const preset = opts.preset ?? "9e";
  const limit = opts.limitBytes ?? DEFAULT_LIMIT_BYTES;
  const outDir = resolve(opts.outDir ?? join(plan.root, ".device"));
  if (plan.root === outDir || !relative(outDir, plan.root).startsWith("..") || outDir === dirname(plan.nodeModules)) {
    throw new BundleError(`refusing output folder ${outDir}: it holds the repository`);
  }
  if (existsSync(outDir)) {
    const foreign = readdirSync(outDir).filter((n) => !OWN_NAMES.has(n));
    if (foreign.length > 0) throw new BundleError(`refusing to replace ${outDir}: it holds files the bundler did not write (${foreign.slice(0, 5).join(", ")})`);
  }
  const tmp = `${outDir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(join(tmp, "a"), { recursive: true });
  mkdirSync(join(tmp, "b"), { recursive: true });
  const base = dirname(plan.nodeModules);
  const nmName = basename(plan.nodeModules);
  // Exclusions are written relative to the folder holding node_modules, under its real name.
  const excludes = plan.excluded.map((e) => e.path.replace(/^node_modules\//, `${nmName}/`));
  const raw: Record<string, number> = {};

  try {
    log(`compressing with xz -${preset} (bun.xz takes minutes at 9e) …`);
    const t0 = performance.now();
    const jobs: Promise<void>[] = [];
    raw["a/bun.xz"] = statSync(plan.bunBinary).size;
    jobs.push(compress({ file: plan.bunBinary }, join(tmp, "a", "bun.xz"), xz, xzArgs(preset, true)));
    raw["b/onnxruntime-linux-x64.tar.xz"] = plan.ortFiles.reduce((s, f) => s + statSync(join(base, f)).size, 0);
    const ortPaths = plan.ortFiles.map((f) => f.replace(/^node_modules\//, `${nmName}/`));
    jobs.push(compress({ cmd: "tar", args: tarArgs(base, ortPaths) }, join(tmp, "b", "onnxruntime-linux-x64.tar.xz"), xz, xzArgs(preset, true)));
    const skip = new Set(excludes.map((e) => join(base, e)));
    raw["b/node_modules.tar.xz"] = duBytes(plan.nodeModules, (p) => skip.has(p));
    jobs.push(compress({ cmd: "tar", args: tarArgs(base, [nmName], excludes) }, join(tmp, "b", "node_modules.tar.xz"), xz, xzArgs(preset, false)));
    if (plan.shared) {
      raw["b/shared.tar.xz"] = plan.shared.paths.reduce((s, p) => s + duBytes(join(plan.shared!.dir, p)), 0);
      jobs.push(compress({ cmd: "tar", args: tarArgs(plan.shared.dir, plan.shared.paths) }, join(tmp, "b", "shared.tar.xz"), xz, xzArgs(preset, false)));
    }
    // Settle every job before cleaning up, so no xz still writes into the folder being removed.
    const settled = await Promise.allSettled(jobs);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) throw failed.reason;
    log(`compressed in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    for (const part of ["a", "b"]) {
      writeFileSync(join(tmp, part, "unpack.sh"), UNPACK_SH);
      chmodSync(join(tmp, part, "unpack.sh"), 0o755);
    }

    const files: BundleFile[] = [];
    for (const part of ["a", "b"]) {
      for (const n of readdirSync(join(tmp, part)).sort()) {
        const name = `${part}/${n}`;
        const p = join(tmp, part, n);
        files.push({ name, bytes: statSync(p).size, rawBytes: raw[name] ?? 0, sha256: sha256File(p) });
      }
    }
    const parts: Record<string, number> = { a: 0, b: 0 };
    for (const f of files) parts[f.name.split("/")[0]] += f.bytes;
    const result: BundleResult = {
      outDir,
      files,
      totalBytes: files.reduce((s, f) => s + f.bytes, 0),
      parts,
      outDirIgnored: null,
      workingTreeBytes: null, // measured once the bundle is in place (its temporary folder is not git-ignored)
      bunVersion: bunVersion(plan.bunBinary),
      onnxruntimeVersion: packageVersion(plan.nodeModules, "onnxruntime-node"),
    };
    const manifest = { ...result, outDir: undefined, workingTreeBytes: undefined, outDirIgnored: undefined, preset, excluded: plan.excluded, shared: plan.shared ? plan.shared.paths : [] };
    writeFileSync(join(tmp, "MANIFEST.json"), `${JSON.stringify(manifest, null, 2)}\n`);
    result.totalBytes += statSync(join(tmp, "MANIFEST.json")).size;

    if (result.totalBytes > limit) {
      throw new BundleError(`the bundle weighs ${fmtMiB(result.totalBytes)}, over the ${fmtMiB(limit)} limit (${files.map((f) => `${f.name} ${fmtMiB(f.bytes)}`).join(", ")})`);
    }
    rmSync(outDir, { recursive: true, force: true });
    renameSync(tmp, outDir);
    result.workingTreeBytes = workingTreeBytes(plan.root, outDir);
    result.outDirIgnored = gitIgnored(plan.root, outDir);
    return result;
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

export const fmtMiB = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;

/** The size table and how to carry the parts, for the CLI. */
export function describeBundle(r: BundleResult, root: string): string {
  const rel = relative(root, r.outDir) || ".";
  const lines = [`device bundle in ${r.outDir} (bun ${r.bunVersion ?? "?"}, onnxruntime-node ${r.onnxruntimeVersion ?? "?"})`];
  for (const f of r.files) lines.push(`  ${f.name.padEnd(34)} ${fmtMiB(f.bytes).padStart(10)}${f.rawBytes ? `  (from ${fmtMiB(f.rawBytes)})` : ""}`);
  lines.push(`  ${"total".padEnd(34)} ${fmtMiB(r.totalBytes).padStart(10)}  (part a ${fmtMiB(r.parts.a)}, part b ${fmtMiB(r.parts.b)})`);
  if (r.outDirIgnored === false) lines.push(`WARNING: git does not ignore ${rel}/: it would travel with every device run (add /${rel}/ to .gitignore)`);
  if (r.workingTreeBytes !== null) {
    const tree = r.workingTreeBytes;
    lines.push(`working tree that travels with every device run: ${fmtMiB(tree)}`);
    if (tree + r.totalBytes <= TRANSFER_LIMIT_BYTES) {
      lines.push(`one run fits (${fmtMiB(tree + r.totalBytes)} ≤ 64 MiB): carry ["${rel}"], then run  sh ${rel}/a/unpack.sh && sh ${rel}/b/unpack.sh && sh scripts/gpu-smoke.sh`);
    } else {
      lines.push(
        `tree + whole bundle = ${fmtMiB(tree + r.totalBytes)} > 64 MiB: use two runs on the same warm machine (it keeps ignored files for ~30 s between runs):`,
        `  1. carry ["${rel}/a"]  (${fmtMiB(tree + r.parts.a)}):  sh ${rel}/a/unpack.sh`,
        `  2. carry ["${rel}/b"]  (${fmtMiB(tree + r.parts.b)}):  sh ${rel}/b/unpack.sh && sh scripts/gpu-smoke.sh`,
      );
      for (const [part, bytes] of Object.entries(r.parts)) {
        if (tree + bytes > TRANSFER_LIMIT_BYTES) lines.push(`  WARNING: part ${part} alone with the tree is ${fmtMiB(tree + bytes)} > 64 MiB`);
      }
    }
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const { default: cac } = await import("cac");
  const cli = cac("device-bundle");
  cli
    .option("--out <dir>", "output folder (default .device at the repo root; replaced)")
    .option("--preset <p>", "xz preset 0-9[e]", { default: "9e" })
    .option("--limit-mib <n>", "fail above this many MiB", { default: 60 })
    .option("--shared <dir>", "shared folder with the GPU test fixtures (default ../shared)")
    .option("--no-shared", "ship no test fixtures")
    .option("--xz <path>", "xz executable", { default: "xz" })
    .help();
  const { options } = cli.parse();
  if (options.help) process.exit(0);
  const root = defaultRoot();
  try {
    const sharedDir = options.shared === false ? null : typeof options.shared === "string" ? (isAbsolute(options.shared) ? options.shared : resolve(options.shared)) : undefined;
    const r = await buildBundle({
      root,
      outDir: options.out ? resolve(String(options.out)) : undefined,
      preset: String(options.preset),
      limitBytes: Number(options.limitMib) * MiB,
      sharedDir,
      xz: String(options.xz),
      log: (m) => console.error(m),
    });
    console.log(describeBundle(r, root));
  } catch (e) {
    console.error(`device-bundle: ${(e as Error).message}`);
    process.exit(e instanceof BundleError ? 2 : 1);
  }
}
