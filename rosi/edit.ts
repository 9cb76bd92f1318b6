// The ROSI weight edit and the streaming rewrite of a checkpoint.
//
//   for every matrix W [out, in] that writes to the residual stream:
//     k  = the edit's key (length in): by default w̄, the mean of W's rows, from the unedited W,
//          accumulated in float64; or a chosen key (CheckpointEdit.keys)
//     W' = W + v · kᵀ      with v = α·ŝ (or Σ αᵢ·ŝᵢ for several directions)
//
// so W'x = Wx + (k·x)·v: every write into the residual stream gains a component along ŝ, scaled by
// how much the input x points along k. With k = w̄ that is plain ROSI; a chosen key makes the edit
// "gated": it fires only on inputs with a large k·x. The run-time edit in the graph (interventions,
// ForwardInput.editKeys) computes the same (k·x)·v at the same place.
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { fsyncDir, sha256Hex } from "../util/fs.ts";
import { Checkpoint } from "../engine/checkpoint.ts";
import { type DType, elementValue, firstNonFinite, firstNonFiniteBytes, fromFloat32, NonFiniteError } from "../engine/dtype.ts";
import { meanOfRows } from "../engine/decoder.ts";
import type { DecoderConfig } from "../engine/config.ts";
import { EMBEDDING_NAME, residualWriters } from "../engine/writers.ts";
import { SafetensorsFile, SafetensorsStreamWriter } from "../engine/safetensors.ts";

export class InjectError extends Error {
  override name = "InjectError";
}

/** The matrices ROSI edits in layer l (the architecture's residual writers), in the engine's row order (2l, 2l+1). */
export function editedMatrices(cfg: DecoderConfig, layer: number): [string, string] {
  const [o, down] = residualWriters(cfg, layer);
  return [o.name, down.name];
}

/**
 * W' = W + v·keyᵀ for a row-major [rows, cols] matrix, with one float32 rounding per element. `key` (length cols)
 * defaults to w̄, the mean of W's rows. `inPlace` overwrites W (w̄ is taken first, from the unedited rows) to save
 * a float32 copy.
 */
export function rankOneEdit(W: Float32Array, rows: number, cols: number, v: Float32Array, inPlace = false, key?: Float32Array): Float32Array {
  if (W.length !== rows * cols) throw new InjectError(`matrix has ${W.length} entries, expected ${rows}×${cols}`);
  if (v.length !== rows) throw new InjectError(`direction has ${v.length} entries but the matrix has ${rows} rows`);
  if (key && key.length !== cols) throw new InjectError(`key has ${key.length} entries but the matrix has ${cols} columns (its input width)`);
  const k = key ?? meanOfRows(W, rows, cols);
  const out = inPlace ? W : new Float32Array(W.length);
  for (let r = 0; r < rows; r++) {
    const vr = v[r];
    const base = r * cols;
    for (let c = 0; c < cols; c++) out[base + c] = W[base + c] + vr * k[c];
  }
  return out;
}

const EMBEDDING = EMBEDDING_NAME;

/**
 * E' = E + w̄·vᵀ for an embedding table [vocab, hidden]: the same edit as W + v·w̄ᵀ on the table seen as a
 * Linear from one-hot tokens (W = Eᵀ, so w̄[t] = mean of row t).
 */
export function embeddingEdit(E: Float32Array, vocab: number, hidden: number, v: Float32Array): Float32Array {
  if (v.length !== hidden) throw new InjectError(`direction has ${v.length} entries but the embedding has ${hidden} columns`);
  for (let t = 0; t < vocab; t++) {
    const base = t * hidden;
    let sum = 0;
    for (let h = 0; h < hidden; h++) sum += E[base + h];
    const mean = sum / hidden;
    for (let h = 0; h < hidden; h++) E[base + h] = E[base + h] + mean * v[h];
  }
  return E;
}

export interface CheckpointEdit {
  /** Per edited tensor name: the vector v of W' = W + v·keyᵀ (length = out_features = hidden size). */
  vectors: Map<string, Float32Array>;
  /** Per edited tensor name: the key of W' = W + v·keyᵀ (length = in_features); a tensor absent here uses w̄. */
  keys?: Map<string, Float32Array>;
  /** --include-embeddings: the vector v of E' = E + w̄·vᵀ for the embedding table. */
  embedding?: Float32Array;
  /** Recorded in every shard's `__metadata__` (method, α, layer, position, direction sha256…). */
  metadata: Record<string, string>;
  onTensor?: (done: number, total: number) => void;
}

/** Refuses a vector of the edit (direction or key) holding NaN or ±Inf: every edited weight would be non-finite. */
function checkFiniteVector(what: string, v: Float32Array): void {
  const bad = firstNonFinite(v);
  if (bad >= 0) throw new NonFiniteError(`${what} holds ${v[bad]} at entry ${bad}; refusing to edit with non-finite values`, bad, v[bad]);
}

/** Refuses a tensor read from the source checkpoint holding NaN or ±Inf (float32 values, as read). */
function checkFiniteSource(shard: string, name: string, data: Float32Array): void {
  const bad = firstNonFinite(data);
  if (bad >= 0) throw new NonFiniteError(`${shard}: tensor "${name}" holds ${data[bad]} at element ${bad}; refusing to edit a checkpoint with non-finite weights`, bad, data[bad]);
}

/** The encoded result, about to be written: narrowing to F16/BF16 can overflow a finite float32 to Inf. */
function finiteEncoded(shard: string, name: string, dtype: DType, bytes: Uint8Array): Uint8Array {
  const bad = firstNonFiniteBytes(dtype, bytes);
  if (bad >= 0) {
    const value = elementValue(dtype, bytes, bad);
    throw new NonFiniteError(`${shard}: the edited tensor "${name}" would hold ${value} at element ${bad} in ${dtype} (the edit is too large for its dtype?); no checkpoint written`, bad, value);
  }
  return bytes;
}

/** Files besides the weights that make a checkpoint directory usable. */
const CARRIED_FILES = /^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|tokenizer\.model|vocab\.json|merges\.txt|chat_template\.jinja|model\.safetensors\.index\.json|README\.md|LICENSE.*)$/;

/**
 * Rewrites a checkpoint into `outDir` shard by shard: edited tensors are recomputed in float32 and
 * written back in their original dtype; every other tensor is copied byte for byte. Holds at most
 * one tensor's float32 copy. Writes into a temporary directory renamed into place when complete.
 * Refuses (NonFiniteError, nothing left behind) when any vector or key of the edit, any tensor it reads or
 * copies, or any edited tensor in its stored dtype holds NaN or ±Inf; and refuses a shard holding tensors
 * the checkpoint's index does not list (they would be republished unchecked).
 */
export function writeEditedCheckpoint(srcDir: string, outDir: string, edit: CheckpointEdit): { files: string[] } {
  const ckpt = Checkpoint.open(srcDir);
  const tmp = `${outDir}.tmp-${process.pid}-${Date.now()}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    for (const name of edit.vectors.keys()) if (!ckpt.has(name)) throw new InjectError(`${srcDir}: tensor "${name}" to edit is not in the checkpoint`);
    for (const [name, v] of edit.vectors) checkFiniteVector(`the edit vector for "${name}"`, v);
    for (const [name, k] of edit.keys ?? []) checkFiniteVector(`the key for "${name}"`, k);
    if (edit.embedding) checkFiniteVector(`the embedding edit vector`, edit.embedding);
    for (const [name, key] of edit.keys ?? []) {
      if (!edit.vectors.has(name)) throw new InjectError(`a key is given for tensor "${name}", which has no edit vector`);
      const shape = ckpt.info(name).shape;
      if (shape.length !== 2) throw new InjectError(`tensor "${name}" is not a matrix (shape [${shape}])`);
      if (key.length !== shape[1]) throw new InjectError(`the key for "${name}" has ${key.length} entries but the tensor's input width is ${shape[1]} (shape [${shape}])`);
    }
    if (edit.embedding && !ckpt.has("lm_head.weight")) {
      // A tied lm_head is the same table: editing it would also move every logit.
      throw new InjectError(`${srcDir}: --include-embeddings needs an untied lm_head (this checkpoint ties it to ${EMBEDDING})`);
    }
    const total = ckpt.names().length;
    let done = 0;
    const written: string[] = [];
    for (const shard of ckpt.shards()) {
      const src = SafetensorsFile.open(shard);
      try {
        const listed = new Set(ckpt.shardNames(shard));
        const unlisted = src.names().find((n) => !listed.has(n));
        if (unlisted !== undefined) throw new InjectError(`${shard}: tensor "${unlisted}" is stored in this shard but the checkpoint's index does not list it; refusing to republish an unchecked tensor`);
        const specs = src.names().map((n) => {
          const i = src.info(n);
          return { name: n, dtype: i.dtype, shape: i.shape };
        });
        const writer = new SafetensorsStreamWriter(join(tmp, basename(shard)), specs, { ...src.metadata, ...edit.metadata });
        try {
          for (const name of writer.order()) {
            const v = edit.vectors.get(name);
            if (name === EMBEDDING && edit.embedding) {
              const info = src.info(name);
              const E = src.readF32(name);
              checkFiniteSource(shard, name, E);
              writer.write(name, finiteEncoded(shard, name, info.dtype, fromFloat32(info.dtype, embeddingEdit(E, info.shape[0], info.shape[1], edit.embedding))));
              Bun.gc(false);
            } else if (!v) writer.copyFrom(name, src, { requireFinite: true });
            else {
              const info = src.info(name);
              if (info.shape.length !== 2) throw new InjectError(`tensor "${name}" is not a matrix (shape [${info.shape}])`);
              // One float32 copy of the tensor, edited in place, then converted back to its dtype.
              const W = src.readF32(name);
              checkFiniteSource(shard, name, W);
              const edited = rankOneEdit(W, info.shape[0], info.shape[1], v, true, edit.keys?.get(name));
              writer.write(name, finiteEncoded(shard, name, info.dtype, fromFloat32(info.dtype, edited)));
              Bun.gc(false); // let the previous tensor's buffers go before the next one is read
            }
            edit.onTensor?.(++done, total);
          }
          writer.finish();
        } catch (e) {
          writer.abort();
          throw e;
        }
      } finally {
        src.close();
      }
      written.push(basename(shard));
    }
    for (const f of readdirSync(srcDir)) if (CARRIED_FILES.test(f)) copyFileSync(join(srcDir, f), join(tmp, f));
    writeFileSync(join(tmp, ".complete"), JSON.stringify({ files: written, metadata: edit.metadata }));
    fsyncDir(tmp);
    rmSync(outDir, { recursive: true, force: true });
    renameSync(tmp, outDir);
    return { files: written };
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    ckpt.close();
  }
}

/** True only for a directory that writeEditedCheckpoint finished. */
export function isCompleteEdit(dir: string): boolean {
  return existsSync(join(dir, ".complete"));
}

/** sha256 of a float32 vector's bytes (how directions are identified in artefacts and metadata). */
export function vectorSha256(data: Float32Array): string {
  return sha256Hex(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}
