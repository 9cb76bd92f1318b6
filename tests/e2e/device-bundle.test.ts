// The device bundle: what is packed, what is left out, the size limit, and that unpack.sh restores
// a working tree. Fast: a synthetic node_modules with the real layout, xz at preset 0. The full
// bundle of the real node_modules (minutes at xz -9e) runs only with REALIGN_BUNDLE_TEST=1.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { BundleError, DEFAULT_LIMIT_BYTES, buildBundle, describeBundle, isElfX64, planBundle } from "../../scripts/device-bundle.ts";
import { hasShared, sharedPath, REPO_ROOT } from "../helpers/shared.ts";

const HAS_XZ = spawnSync("xz", ["--version"]).status === 0;
if (!HAS_XZ) console.warn("\n!!! xz not found on PATH: device-bundle tests are SKIPPED (apt-get install xz-utils) !!!\n");
const FULL = process.env.REALIGN_BUNDLE_TEST === "1";
if (!FULL) console.warn("\n!!! the full device bundle of the real node_modules is SKIPPED (slow: set REALIGN_BUNDLE_TEST=1) !!!\n");
const REPO = REPO_ROOT;

/** 20-byte x86-64 ELF header followed by filler, so the bundler accepts it as a linux-x64 binary. */
function elfX64(filler: string): Buffer {
  const head = Buffer.alloc(20);
  head.writeUInt32BE(0x7f454c46, 0);
  head[4] = 2;
  head[5] = 1;
  head.writeUInt16LE(0x3e, 18);
  return Buffer.concat([head, Buffer.from(filler)]);
}

function write(path: string, body: string | Buffer): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, body);
}

/** A repo root with a node_modules laid out like the real one (every platform's natives, Bun's platform package). */
function fakeRepo(root: string): void {
  const nm = join(root, "node_modules");
  // node_modules/bun/bin/bun.exe is a script (so a restored copy runs here); @oven's is an ELF look-alike.
  const fakeBun = "#!/bin/sh\necho 9.9.9-fake\n";
  write(join(nm, "bun", "package.json"), JSON.stringify({ name: "bun", version: "9.9.9" }));
  write(join(nm, "bun", "bin", "bun.exe"), fakeBun);
  write(join(nm, "bun", "bin", "bunx.exe"), fakeBun);
  chmodSync(join(nm, "bun", "bin", "bun.exe"), 0o755);
  write(join(nm, "@oven", "bun-linux-x64", "package.json"), JSON.stringify({ name: "@oven/bun-linux-x64", os: ["linux"], cpu: ["x64"] }));
  write(join(nm, "@oven", "bun-linux-x64", "bin", "bun"), elfX64("x".repeat(5000)));
  mkdirSync(join(nm, ".bin"), { recursive: true });
  symlinkSync("../bun/bin/bun.exe", join(nm, ".bin", "bun"));
  symlinkSync("../yaml/bin.mjs", join(nm, ".bin", "yaml"));
  const ort = join(nm, "onnxruntime-node");
  write(join(ort, "package.json"), JSON.stringify({ name: "onnxruntime-node", version: "1.30.0-test" }));
  write(join(ort, "dist", "index.js"), "module.exports = {};\n");
  write(join(ort, "bin", "napi-v6", "linux", "x64", "libonnxruntime.so.1"), elfX64("ort-linux-x64".repeat(100)));
  write(join(ort, "bin", "napi-v6", "linux", "x64", "onnxruntime_binding.node"), elfX64("binding"));
  write(join(ort, "bin", "napi-v6", "linux", "x64", "libonnxruntime_providers_cuda.so"), "cuda EP");
  for (const p of ["linux/arm64", "darwin/arm64", "win32/x64", "win32/arm64"]) write(join(ort, "bin", "napi-v6", p, "native.bin"), `native for ${p}`);
  write(join(nm, "yaml", "package.json"), JSON.stringify({ name: "yaml", version: "2.0.0" }));
  write(join(nm, "yaml", "bin.mjs"), "console.log('yaml');\n");
  write(join(nm, "@esbuild", "darwin-arm64", "package.json"), JSON.stringify({ name: "@esbuild/darwin-arm64", os: ["darwin"], cpu: ["arm64"] }));
  write(join(nm, "@esbuild", "darwin-arm64", "bin", "esbuild"), "darwin binary");
  write(join(nm, "@typescript", "typescript-linux-x64", "package.json"), JSON.stringify({ name: "@typescript/typescript-linux-x64", os: ["linux"], cpu: ["x64"] }));
  write(join(nm, "@typescript", "typescript-linux-x64", "lib", "tsgo"), elfX64("tsgo"));
  write(join(root, "package.json"), "{}");
}

function fakeShared(dir: string): void {
  write(join(dir, "README.md"), "# shared\n");
  write(join(dir, "fixtures", "hf-golden", "README.md"), "golden\n");
  write(join(dir, "fixtures", "hf-golden", "inputs.json"), "{}");
  write(join(dir, "fixtures", "hf-golden", "llama", "config.json"), '{"model_type": "llama"}');
}

const tarList = (archive: string): string[] => {
  const r = spawnSync("sh", ["-c", `xz -dc '${archive}' | tar -tf -`], { encoding: "utf8" });
  expect(r.status).toBe(0);
  return r.stdout.split("\n").filter(Boolean);
};

let tmp = "";
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "realign-bundle-"));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!HAS_XZ)("device bundle (synthetic node_modules, xz -0)", () => {
  test("packs bun, the linux-x64 natives, node_modules without foreign natives, the fixtures; unpack.sh restores them", async () => {
    const root = join(tmp, "repo");
    const shared = join(tmp, "shared-src");
    fakeRepo(root);
    fakeShared(shared);
    const out = join(tmp, "bundle");
    const r = await buildBundle({ root, outDir: out, preset: "0", sharedDir: shared, bunBinary: join(root, "node_modules", "bun", "bin", "bun.exe") });

    expect(r.files.map((f) => f.name)).toEqual(["a/bun.xz", "a/unpack.sh", "b/node_modules.tar.xz", "b/onnxruntime-linux-x64.tar.xz", "b/shared.tar.xz", "b/unpack.sh"]);
    for (const f of r.files) {
      expect(existsSync(join(out, f.name))).toBe(true);
      expect(lstatSync(join(out, f.name)).size).toBe(f.bytes);
    }
    expect(r.totalBytes).toBeLessThanOrEqual(DEFAULT_LIMIT_BYTES);
    expect(r.workingTreeBytes).toBeNull(); // not a git checkout
    expect(r.onnxruntimeVersion).toBe("1.30.0-test");
    expect(r.bunVersion).toBe("9.9.9-fake");
    const manifest = JSON.parse(readFileSync(join(out, "MANIFEST.json"), "utf8")) as { files: { name: string; sha256: string }[]; preset: string };
    expect(manifest.preset).toBe("0");
    expect(manifest.files.map((f) => f.name)).toEqual(r.files.map((f) => f.name));
    expect(readFileSync(join(out, "a", "unpack.sh"), "utf8")).toBe(readFileSync(join(out, "b", "unpack.sh"), "utf8"));

    // What node_modules.tar.xz holds and leaves out.
    const nm = tarList(join(out, "b", "node_modules.tar.xz"));
    expect(nm).toContain("node_modules/yaml/bin.mjs");
    expect(nm).toContain("node_modules/onnxruntime-node/dist/index.js");
    expect(nm).toContain("node_modules/.bin/bun");
    expect(nm).toContain("node_modules/bun/package.json");
    for (const gone of ["onnxruntime-node/bin/napi-v6", "@oven", "bun/bin/bun.exe", "bun/bin/bunx.exe", "@esbuild/darwin-arm64/bin", "@typescript"]) {
      expect(nm.filter((e) => e.includes(gone))).toEqual([]);
    }
    expect(tarList(join(out, "b", "onnxruntime-linux-x64.tar.xz"))).toEqual([
      "node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime.so.1",
      "node_modules/onnxruntime-node/bin/napi-v6/linux/x64/onnxruntime_binding.node",
    ]);

    // Unpack both parts into a bare target (REALIGN_NO_SYSTEM_BUN: leave this machine's /usr/local/bin alone).
    const target = join(tmp, "target", "repo");
    mkdirSync(target, { recursive: true });
    const env = { ...process.env, REALIGN_NO_SYSTEM_BUN: "1" };
    for (const part of ["a", "b"]) {
      const u = spawnSync("sh", [join(out, part, "unpack.sh"), target], { encoding: "utf8", env });
      expect(u.stderr).toBe("");
      expect(u.status).toBe(0);
      if (part === "a") expect(u.stdout).toContain("onnxruntime-node: not unpacked yet (part b)");
      if (part === "b") {
        expect(u.stdout).toContain("bun 9.9.9-fake");
        expect(u.stdout).toContain("onnxruntime-node 1.30.0-test");
      }
    }
    const bun = join(target, "node_modules", "bun", "bin", "bun.exe");
    expect(readFileSync(bun)).toEqual(readFileSync(join(root, "node_modules", "bun", "bin", "bun.exe")));
    expect(lstatSync(bun).mode & 0o111).not.toBe(0);
    expect(spawnSync(join(target, "node_modules", ".bin", "bun"), ["--version"], { encoding: "utf8" }).stdout.trim()).toBe("9.9.9-fake");
    expect(readlinkSync(join(target, "node_modules", ".bin", "yaml"))).toBe("../yaml/bin.mjs");
    const ortLib = join(target, "node_modules", "onnxruntime-node", "bin", "napi-v6", "linux", "x64", "libonnxruntime.so.1");
    expect(readFileSync(ortLib)).toEqual(readFileSync(join(root, "node_modules", "onnxruntime-node", "bin", "napi-v6", "linux", "x64", "libonnxruntime.so.1")));
    expect(existsSync(join(target, "node_modules", "onnxruntime-node", "bin", "napi-v6", "darwin"))).toBe(false);
    expect(readFileSync(join(target, "..", "shared", "fixtures", "hf-golden", "llama", "config.json"), "utf8")).toBe('{"model_type": "llama"}');
    expect(readFileSync(join(out, "env.sh"), "utf8")).toBe(`export PATH="${target}/node_modules/.bin:$PATH"\n`);

    // A second bundle replaces the first (its env.sh is the bundler's own kind of file).
    const again = await buildBundle({ root, outDir: out, preset: "0", sharedDir: null, bunBinary: join(root, "node_modules", "bun", "bin", "bun.exe") });
    expect(again.files.map((f) => f.name)).not.toContain("b/shared.tar.xz");
    expect(describeBundle(again, root)).toContain("a/bun.xz");
  });

  test("over the size limit: a clear error, and the previous output is left as it was", async () => {
    const root = join(tmp, "repo-limit");
    fakeRepo(root);
    const out = join(tmp, "bundle-limit");
    await expect(buildBundle({ root, outDir: out, preset: "0", sharedDir: null, limitBytes: 1000 })).rejects.toThrow(/the bundle weighs .* MiB, over the 0.0 MiB limit \(a\/bun.xz/);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.tmp-${process.pid}`)).toBe(false);
  });

  test("clear errors: xz missing, bad preset, a foreign output folder, no linux-x64 natives", async () => {
    const root = join(tmp, "repo-errors");
    fakeRepo(root);
    await expect(buildBundle({ root, outDir: join(tmp, "o1"), xz: join(tmp, "no-such-xz") })).rejects.toThrow(/no-such-xz` is not available .*install xz-utils/);
    await expect(buildBundle({ root, outDir: join(tmp, "o2"), preset: "11", sharedDir: null })).rejects.toThrow(/xz preset must be 0-9/);
    write(join(tmp, "o3", "precious.txt"), "keep me");
    await expect(buildBundle({ root, outDir: join(tmp, "o3"), preset: "0", sharedDir: null })).rejects.toThrow(/refusing to replace .*precious.txt/);
    expect(readFileSync(join(tmp, "o3", "precious.txt"), "utf8")).toBe("keep me");
    await expect(buildBundle({ root, outDir: root, preset: "0", sharedDir: null })).rejects.toThrow(BundleError);
    // node_modules/.bin/bun is not an x86-64 ELF here: the @oven/bun-linux-x64 binary is taken instead.
    expect(planBundle({ root, sharedDir: null }).bunBinary).toBe(join(root, "node_modules", "@oven", "bun-linux-x64", "bin", "bun"));
    rmSync(join(root, "node_modules", "@oven"), { recursive: true });
    expect(() => planBundle({ root, sharedDir: null })).toThrow(/no linux-x64 Bun binary found .*npm install --no-save --force @oven\/bun-linux-x64/);
    rmSync(join(root, "node_modules", "onnxruntime-node", "bin", "napi-v6", "linux", "x64"), { recursive: true });
    expect(() => planBundle({ root, sharedDir: null, bunBinary: join(root, "node_modules", "bun", "bin", "bun.exe") })).toThrow(/lacks libonnxruntime.so.1/);
  });
});

describe("device bundle plan of this repository's node_modules", () => {
  test("finds a linux-x64 Bun binary and onnxruntime-node's linux-x64 natives; names what it leaves out", () => {
    const plan = planBundle({ root: REPO, sharedDir: null });
    expect(isElfX64(plan.bunBinary)).toBe(true);
    expect(plan.ortFiles).toContain("node_modules/onnxruntime-node/bin/napi-v6/linux/x64/libonnxruntime.so.1");
    expect(plan.ortFiles).toContain("node_modules/onnxruntime-node/bin/napi-v6/linux/x64/onnxruntime_binding.node");
    for (const f of plan.ortFiles) expect(isElfX64(join(REPO, f))).toBe(true);
    const excluded = plan.excluded.map((e) => e.path);
    expect(excluded).toContain("node_modules/onnxruntime-node/bin/napi-v6");
    expect(excluded).toContain("node_modules/@oven");
    expect(excluded).toContain("node_modules/bun/bin/bun.exe");
  });

  test.skipIf(!hasShared())("the GPU test fixtures are found in ../shared", () => {
    const plan = planBundle({ root: REPO });
    expect(plan.shared?.dir).toBe(sharedPath());
    expect(plan.shared?.paths).toContain("fixtures/hf-golden/llama");
  });
});

describe.skipIf(!HAS_XZ || !FULL)("full device bundle of the real node_modules (REALIGN_BUNDLE_TEST=1)", () => {
  test(
    "fits in 60 MiB at xz -9e",
    async () => {
      const out = join(tmp, "full");
      const r = await buildBundle({ root: REPO, outDir: out, log: console.error });
      console.log(describeBundle(r, REPO));
      expect(r.totalBytes).toBeLessThanOrEqual(DEFAULT_LIMIT_BYTES);
      expect(r.files.find((f) => f.name === "a/bun.xz")!.rawBytes).toBeGreaterThan(50 * 1024 * 1024);
    },
    600_000,
  );
});
