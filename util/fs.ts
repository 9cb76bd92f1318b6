// Small filesystem helpers for crash-safe artefacts: canonical hashing, atomic writes, fsync.
import { createHash, randomBytes } from "node:crypto";
import { closeSync, fsyncSync, lstatSync, openSync, readdirSync, renameSync, rmSync, writeSync, existsSync } from "node:fs";
import { basename, dirname, join } from "node:path";

/** JSON with object keys sorted at every level, so equal values always hash equally. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[k];
      if (v !== undefined) out[k] = sortKeys(v);
    }
    return out;
  }
  if (typeof value === "number" && !Number.isFinite(value)) throw new TypeError(`cannot hash non-finite number ${value}`);
  return value;
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

export function randomSuffix(): string {
  return randomBytes(6).toString("hex");
}

/** fsync a directory so a rename inside it survives a crash (no-op where directories cannot be opened). */
export function fsyncDir(dir: string): void {
  let fd: number | null = null;
  try {
    fd = openSync(dir, "r");
    fsyncSync(fd);
  } catch {
    // Some platforms/filesystems refuse fsync on directories; a kill -9 does not need it anyway.
  } finally {
    if (fd !== null) closeSync(fd);
  }
}

function fsyncFile(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Write a file so readers see either the old or the new content, never a torn one. */
export function atomicWriteFile(path: string, data: string | Uint8Array): void {
  const tmp = join(dirname(path), `.${basename(path)}.${randomSuffix()}.tmp`);
  const fd = openSync(tmp, "w");
  try {
    const buf = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  closeSync(fd);
  renameSync(tmp, path);
  fsyncDir(dirname(path));
}

export function atomicWriteJson(path: string, value: unknown): void {
  atomicWriteFile(path, JSON.stringify(value, null, 2) + "\n");
}

/** fsync every regular file and directory under `dir` (the step's outputs before the commit rename). */
export function fsyncTree(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) fsyncTree(p);
    else if (entry.isFile()) fsyncFile(p);
  }
  fsyncDir(dir);
}

/** Bytes of a file, or the sum over a directory tree; null when it does not exist. Symlinks count as 0. */
export function pathSize(path: string): { kind: "file" | "dir"; bytes: number } | null {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return null;
  }
  if (st.isDirectory()) {
    let bytes = 0;
    for (const name of readdirSync(path)) bytes += pathSize(join(path, name))?.bytes ?? 0;
    return { kind: "dir", bytes };
  }
  return { kind: "file", bytes: st.isFile() ? st.size : 0 };
}

export function removePath(path: string): void {
  if (existsSync(path)) rmSync(path, { recursive: true, force: true });
}
