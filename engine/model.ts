// A loaded decoder: checkpoint → cached ONNX graph → session, with a typed forward pass that
// exposes logits, the KV cache and the residual stream entering every layer.
import { createHash } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { homedir, totalmem } from "node:os";
import { join } from "node:path";
import { Checkpoint, type CheckpointOptions } from "./checkpoint.ts";
import { createBuilder } from "./architectures.ts";
import { COMPUTE_DTYPES, IO, OPSETS, meanOfRows, type ComputeDType } from "./decoder.ts";
import type { DecoderConfig } from "./config.ts";
import { ExternalDataWriter, OnnxGraph } from "./onnx/graph.ts";
import { DEFAULT_ACCURACY_LEVEL, describeQuantization, type QuantizeConfig } from "./quantize.ts";
import { openSession, ort, prepackWeights, type Device } from "./session.ts";
import { graphCacheLimit, makeRoom, touchGraph } from "./graph-cache.ts";
import { numel } from "./safetensors.ts";
import { allResidualWriters } from "./writers.ts";
import { batchChunks, maxBatch } from "./batch-cap.ts";

/** Bump when the graph layout changes, so cached graphs are rebuilt. */
const GRAPH_VERSION = "10";

export interface LoadOptions extends CheckpointOptions {
  device?: Device;
  /** Build the graph with ROSI / steering inputs (see DecoderBuildOptions). */
  interventions?: boolean;
  /** int4/int8 projections: weight-only MatMulNBits, or int8-dynamic (see DecoderBuildOptions.quantize); null/absent = float32. */
  quantize?: QuantizeConfig | null;
  /** Compute type inside the graph (see DecoderBuildOptions.dtype); default float32. */
  dtype?: ComputeDType;
  /** Run ONNX Runtime's profiler; `endProfiling()` writes the trace (bench's kernel path). */
  profilePrefix?: string;
  /** Where built graphs are kept; default $REALIGN_CACHE or ~/.cache/realign. */
  cacheDir?: string;
  log?: (msg: string) => void;
}

/** One tensor per layer, [B, kv_heads, S, head_dim]; on WebGPU they stay in GPU buffers (location "gpu-buffer"). */
export interface KVCache {
  keys: ort.Tensor[];
  values: ort.Tensor[];
}

/** Frees a cache held in GPU buffers (host tensors are left to the garbage collector). */
export function releaseCache(cache: KVCache | undefined): void {
  if (!cache) return;
  for (const t of [...cache.keys, ...cache.values]) if (t.location === "gpu-buffer") t.dispose();
}

export interface ForwardInput {
  /** [B][T] token ids (already padded). */
  inputIds: number[][];
  /** [B][P+T]: 1 for real tokens, 0 for padding, covering the cached and the new tokens. */
  attentionMask: number[][];
  /** [B][T]. */
  positionIds: number[][];
  /** [B][K] positions (indices into the T new tokens) whose logits to compute. */
  logitPositions: number[][];
  past?: KVCache;
  /** Return `residual.l` for every layer plus `residual.final`. */
  residuals?: boolean;
  /** [2·layers][hidden] rank-one edit vectors (row 2l: o_proj of layer l, 2l+1: down_proj); needs interventions. */
  rosiVectors?: Float32Array;
  /** [hidden] edit vector of the embedding table (E' = E + rowmean(E)·vᵀ); needs interventions. */
  rosiEmbed?: Float32Array;
  /** [layers][hidden] additions to the residual entering each layer; needs interventions. */
  steer?: Float32Array;
  /**
   * 2·layers keys in rosiVectors row order (2l: o_proj of layer l, 2l+1: down_proj), each as long as its matrix's
   * input (writerWidths()): the edit of matrix m becomes W + vₘ·keyₘᵀ, i.e. the key replaces w̄. Absent: every key
   * is w̄. Needs interventions.
   */
  editKeys?: Float32Array[];
  /** Return each edited matrix's coefficient k·x ([B, T, 2·layers], k = its key: w̄ or editKeys); needs interventions. */
  coefficients?: boolean;
  /**
   * Return the input x of every residual writer (writerInputs) at these positions, the same count for every row
   * (indices into the T new tokens), or at every token with `true`; needs interventions.
   */
  writerInputs?: boolean | number[][];
  /** Skip fetching the KV cache (one-shot scoring). */
  noCache?: boolean;
}

export interface ForwardOutput {
  /** [B, K, vocab] row-major. */
  logits: Float32Array;
  dims: { batch: number; positions: number; vocab: number };
  present?: KVCache;
  /** [B, T, 2·layers] k·x of each edited matrix (row order of rosi_vectors; k = w̄ or its editKeys entry). */
  coefficients?: Float32Array;
  /** writerInputs[m] is [B, K', writerWidths()[m]]: the input x of residual writer m (rosi_vectors row order) at the K' positions asked (K' = T for `true`). */
  writerInputs?: Float32Array[];
  /** residuals[l] is [B, T, hidden] entering layer l; residuals[layers] is the final pre-norm residual. */
  residuals?: Float32Array[];
}

export function defaultCacheDir(): string {
  return process.env.REALIGN_CACHE ?? join(homedir(), ".cache", "realign");
}

export class DecoderModel {
  private constructor(
    readonly dir: string,
    readonly checkpoint: Checkpoint,
    readonly config: DecoderConfig,
    readonly session: ort.InferenceSession,
    readonly ep: "cpu" | "cuda" | "webgpu",
    readonly fallbackReason: string | null,
    readonly interventions: boolean,
    readonly graphPath: string,
    /** e.g. "int4 (block 32)" when the projections run quantised; null for float32. */
    readonly quantization: string | null,
    /** Element type of weights, activations and the KV cache in the graph. */
    readonly dtype: ComputeDType,
  ) {}

  private rowMeans: Float32Array[] | null = null;
  /** WebGPU without interventions keeps the KV cache (and the residuals) in GPU buffers; REALIGN_KV_ON_HOST=1 turns it off. */
  private get outputsOnDevice(): boolean {
    return this.ep === "webgpu" && !this.interventions && process.env.REALIGN_KV_ON_HOST !== "1";
  }
  private zeroKeys: { attn: ort.Tensor; mlp: ort.Tensor } | null = null;

  /** Input width of every residual writer, in rosi_vectors row order (o_proj: heads·head_dim, down_proj: intermediate). */
  writerWidths(): number[] {
    return allResidualWriters(this.config).map((w) => w.inFeatures);
  }

  /**
   * w̄ of every residual writer (the mean of its rows, from the checkpoint, accumulated in float64 as the graph's
   * w̄ initializers are), in rosi_vectors row order. Computed once, on first use. Do not modify the arrays.
   */
  writerRowMeans(): Float32Array[] {
    if (!this.rowMeans) {
      const { hiddenSize } = this.config;
      this.rowMeans = allResidualWriters(this.config).map((w) => meanOfRows(this.checkpoint.readF32(w.name), hiddenSize, w.inFeatures));
    }
    return this.rowMeans;
  }

  /** The edit_keys_* feeds: key − w̄ per writer, or zeros (every key w̄). */
  private editKeyFeeds(keys: Float32Array[] | undefined): { attn: ort.Tensor; mlp: ort.Tensor } {
    const { numLayers, numHeads, headDim, intermediateSize } = this.config;
    const attnCols = numHeads * headDim;
    const dims = { attn: [numLayers, attnCols], mlp: [numLayers, intermediateSize] };
    if (!keys) {
      this.zeroKeys ??= {
        attn: new ort.Tensor("float32", new Float32Array(numLayers * attnCols), dims.attn),
        mlp: new ort.Tensor("float32", new Float32Array(numLayers * intermediateSize), dims.mlp),
      };
      return this.zeroKeys;
    }
    const widths = this.writerWidths();
    if (!Array.isArray(keys) || keys.length !== widths.length) {
      throw new Error(`editKeys must hold ${widths.length} keys (2 per layer: o_proj, down_proj), got ${Array.isArray(keys) ? keys.length : typeof keys}`);
    }
    keys.forEach((k, m) => {
      if (!(k instanceof Float32Array) || k.length !== widths[m]) {
        const kind = m % 2 === 0 ? "o_proj" : "down_proj";
        throw new Error(`editKeys[${m}] (layer ${m >> 1} ${kind}) must be a Float32Array of ${widths[m]} entries (the matrix's input width), got ${k instanceof Float32Array ? k.length : typeof k}`);
      }
    });
    const means = this.writerRowMeans();
    const attn = new Float32Array(numLayers * attnCols);
    const mlp = new Float32Array(numLayers * intermediateSize);
    for (let m = 0; m < keys.length; m++) {
      const [target, cols] = m % 2 === 0 ? [attn, attnCols] : [mlp, intermediateSize];
      const base = (m >> 1) * cols;
      const k = keys[m];
      const w = means[m];
      for (let c = 0; c < cols; c++) target[base + c] = k[c] - w[c];
    }
    return { attn: new ort.Tensor("float32", attn, dims.attn), mlp: new ort.Tensor("float32", mlp, dims.mlp) };
  }

  static async load(dir: string, opts: LoadOptions = {}): Promise<DecoderModel> {
    const checkpoint = Checkpoint.open(dir, opts);
    const interventions = opts.interventions ?? false;
    const q = opts.quantize;
    const quantize: QuantizeConfig | null = !q ? null : q.scheme === "int8-dynamic" ? { scheme: "int8-dynamic" } : { bits: q.bits, blockSize: q.blockSize, accuracyLevel: q.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL };
    const dtype = opts.dtype ?? "float32";
    if (!COMPUTE_DTYPES.includes(dtype)) throw new Error(`dtype must be one of ${COMPUTE_DTYPES.join(", ")}, got "${dtype}"`);
    let builder: ReturnType<typeof createBuilder>;
    try {
      builder = createBuilder(checkpoint.config, checkpoint, { interventions, quantize, dtype });
    } catch (e) {
      checkpoint.close(); // a refused checkpoint leaves no open files behind
      throw e;
    }
    // `quantize` is left out of the key when unset (undefined), so float32 graphs keep their cache entries.
    const key = createHash("sha256")
      // The fingerprint covers config and headers; size + mtime of each shard catch weights rewritten in place.
      .update(JSON.stringify({ v: GRAPH_VERSION, fp: checkpoint.fingerprint(), files: checkpoint.shards().map((f) => statSync(f)).map((st) => [st.size, st.mtimeMs]), interventions, dtype, quantize: quantize ?? undefined, ...int8DynamicRevision(quantize) }))
      .digest("hex")
      .slice(0, 24);
    const graphsDir = join(opts.cacheDir ?? defaultCacheDir(), "graphs");
    const graphDir = join(graphsDir, key);
    const graphPath = join(graphDir, "model.onnx");
    if (!existsSync(graphPath)) {
      const limit = graphCacheLimit();
      if (limit !== null) makeRoom(graphsDir, estimatedGraphBytes(checkpoint, dtype, quantize), limit, opts.log);
      opts.log?.(`building ONNX graph for ${dir} (cached in ${graphDir})`);
      // Build into a temporary folder and rename: a killed build never looks complete.
      const tmp = `${graphDir}.tmp-${process.pid}-${Date.now()}`;
      mkdirSync(tmp, { recursive: true });
      try {
        const external = new ExternalDataWriter(join(tmp, "weights.bin"), "weights.bin");
        const graph = builder.build(new OnnxGraph(external));
        external.close();
        writeFileSync(join(tmp, "model.onnx"), graph.encode({ opsets: OPSETS, metadata: { source: dir, fingerprint: checkpoint.fingerprint() } }));
        // Processes sharing the cache (fleet workers) may build the same graph at once: the first
        // rename wins and the others keep it; a complete graph is never removed here, only a leftover.
        if (existsSync(graphPath)) rmSync(tmp, { recursive: true, force: true });
        else {
          try {
            renameSync(tmp, graphDir);
          } catch {
            if (existsSync(graphPath)) rmSync(tmp, { recursive: true, force: true });
            else {
              rmSync(graphDir, { recursive: true, force: true });
              renameSync(tmp, graphDir);
            }
          }
        }
      } catch (e) {
        rmSync(tmp, { recursive: true, force: true });
        throw e;
      }
    }
    touchGraph(graphDir);
    const { session, ep, fallbackReason } = await openSession(graphPath, opts.device ?? "auto", {
      prepack: prepackWeights({ quantized: quantize !== null, floatWeightBytes: quantize === null ? estimatedGraphBytes(checkpoint, dtype, null) : 0, totalMemory: totalmem() }),
      profilePrefix: opts.profilePrefix,
      deviceOutputs: interventions ? [] : deviceOutputNames(builder.cfg),
    });
    return new DecoderModel(dir, checkpoint, builder.cfg, session, ep, fallbackReason, interventions, graphPath, describeQuantization(quantize), dtype);
  }

  emptyCache(batch: number): KVCache {
    const { numLayers, numKvHeads, headDim } = this.config;
    const dims = [batch, numKvHeads, 0, headDim];
    const empty = () => (this.dtype === "float16" ? new ort.Tensor("float16", new Uint16Array(0), dims) : new ort.Tensor("float32", new Float32Array(0), dims));
    return { keys: Array.from({ length: numLayers }, empty), values: Array.from({ length: numLayers }, empty) };
  }

  async forward(input: ForwardInput): Promise<ForwardOutput> {
    // REALIGN_MAX_BATCH (engine/batch-cap.ts): more rows than the cap run as sequential runs of at most
    // that many rows, outputs concatenated along the batch. Rows keep their padding, but the kernels see
    // other shapes, so the last float digits can move; without the variable this is one run, as before.
    const cap = maxBatch();
    const B = input.inputIds.length;
    if (cap === null || B <= cap) return this.forwardRows(input);
    const parts: ForwardOutput[] = [];
    for (const [start, end] of batchChunks(B, cap)) {
      const rows = <T>(x: T[]) => x.slice(start, end);
      const past = input.past ? { keys: await Promise.all(input.past.keys.map((t) => sliceBatch(t, start, end))), values: await Promise.all(input.past.values.map((t) => sliceBatch(t, start, end))) } : undefined;
      const writerInputs = Array.isArray(input.writerInputs) ? rows(input.writerInputs) : input.writerInputs;
      const out = await this.forwardRows({ ...input, inputIds: rows(input.inputIds), attentionMask: rows(input.attentionMask), positionIds: rows(input.positionIds), logitPositions: rows(input.logitPositions), writerInputs, past });
      // A chunk's cache on the device (WebGPU) comes back to the host to be joined with the others.
      if (out.present) out.present = { keys: await Promise.all(out.present.keys.map(onHost)), values: await Promise.all(out.present.values.map(onHost)) };
      parts.push(out);
    }
    const first = parts[0]!;
    const result: ForwardOutput = { logits: concatF32(parts.map((p) => p.logits)), dims: { ...first.dims, batch: B } };
    if (first.present) result.present = { keys: first.present.keys.map((_, l) => concatBatch(parts.map((p) => p.present!.keys[l]!))), values: first.present.values.map((_, l) => concatBatch(parts.map((p) => p.present!.values[l]!))) };
    if (first.coefficients) result.coefficients = concatF32(parts.map((p) => p.coefficients!));
    if (first.writerInputs) result.writerInputs = first.writerInputs.map((_, m) => concatF32(parts.map((p) => p.writerInputs![m]!)));
    if (first.residuals) result.residuals = first.residuals.map((_, l) => concatF32(parts.map((p) => p.residuals![l]!)));
    return result;
  }

  private async forwardRows(input: ForwardInput): Promise<ForwardOutput> {
    const B = input.inputIds.length;
    const K = input.logitPositions[0]?.length ?? 0;
    const { numLayers, hiddenSize, vocabSize } = this.config;
    const past = input.past ?? this.emptyCache(B);
    const feeds: Record<string, ort.Tensor> = {
      [IO.inputIds]: int64Tensor(input.inputIds),
      [IO.attentionMask]: int64Tensor(input.attentionMask),
      [IO.positionIds]: int64Tensor(input.positionIds, "position_ids"),
      [IO.logitPositions]: int64Tensor(input.logitPositions),
    };
    for (let l = 0; l < numLayers; l++) {
      feeds[IO.pastKey(l)] = nativeHalf(past.keys[l]);
      feeds[IO.pastValue(l)] = nativeHalf(past.values[l]);
    }
    if (!this.interventions) {
      const asked = (["rosiVectors", "rosiEmbed", "steer", "editKeys", "coefficients", "writerInputs"] as const).filter((k) => input[k]);
      if (asked.length) throw new Error(`${asked.join(", ")} need${asked.length === 1 ? "s" : ""} interventions, but this model was loaded without them; load it with { interventions: true }`);
    }
    if (this.interventions) {
      const keys = this.editKeyFeeds(input.editKeys);
      feeds[IO.editKeysAttn] = keys.attn;
      feeds[IO.editKeysMlp] = keys.mlp;
      feeds[IO.rosiVectors] = new ort.Tensor("float32", input.rosiVectors ?? new Float32Array(2 * numLayers * hiddenSize), [2 * numLayers, hiddenSize]);
      feeds[IO.steer] = new ort.Tensor("float32", input.steer ?? new Float32Array(numLayers * hiddenSize), [numLayers, hiddenSize]);
      feeds[IO.rosiEmbed] = new ort.Tensor("float32", input.rosiEmbed ?? new Float32Array(hiddenSize), [hiddenSize]);
      feeds[IO.writerPositions] = int64Tensor(writerPositionRows(input.writerInputs, B, input.inputIds[0]?.length ?? 0));
    }
    const fetches: string[] = [IO.logits];
    if (!input.noCache) for (let l = 0; l < numLayers; l++) fetches.push(IO.presentKey(l), IO.presentValue(l));
    if (input.residuals) {
      for (let l = 0; l < numLayers; l++) fetches.push(IO.residual(l));
      fetches.push(IO.residualFinal);
    }
    if (input.coefficients) fetches.push(IO.rosiCoefficients);
    const writers = 2 * numLayers;
    if (input.writerInputs) for (let m = 0; m < writers; m++) fetches.push(IO.writerInput(m));
    const out = this.outputsOnDevice ? await this.runDevice(feeds, fetches) : await this.session.run(feeds, fetches);
    forwardLog?.record(input, K);
    const result: ForwardOutput = {
      logits: out[IO.logits].data as Float32Array,
      dims: { batch: B, positions: K, vocab: vocabSize },
    };
    if (!input.noCache) {
      result.present = {
        keys: Array.from({ length: numLayers }, (_, l) => out[IO.presentKey(l)]),
        values: Array.from({ length: numLayers }, (_, l) => out[IO.presentValue(l)]),
      };
    }
    if (input.coefficients) result.coefficients = out[IO.rosiCoefficients].data as Float32Array;
    if (input.writerInputs) result.writerInputs = Array.from({ length: writers }, (_, m) => out[IO.writerInput(m)].data as Float32Array);
    if (input.residuals) {
      result.residuals = [...Array.from({ length: numLayers }, (_, l) => out[IO.residual(l)].data as Float32Array), out[IO.residualFinal].data as Float32Array];
    }
    return result;
  }

  /**
   * WebGPU: every output but the logits lives in GPU buffers (deviceOutputNames). onnxruntime-node 1.30 returns
   * them there only when the run fetches all outputs (with a list of names it returns host copies, and binds the
   * previous run's buffers to the outputs left out, which then fail on a new shape), so all are fetched: the
   * KV cache stays on the device for the next step, outputs asked for are downloaded, the rest freed at once.
   */
  private async runDevice(feeds: Record<string, ort.Tensor>, fetches: string[]): Promise<Record<string, ort.Tensor>> {
    const all = await this.session.run(feeds);
    const wanted = new Set(fetches);
    const out: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(all)) {
      if (!wanted.has(name)) {
        if (t.location === "gpu-buffer") t.dispose();
      } else if (t.location === "gpu-buffer" && !name.startsWith("present.")) {
        out[name] = new ort.Tensor(t.type as "float32", (await t.getData(true)) as Float32Array, t.dims);
      } else out[name] = t;
    }
    return out;
  }

  /** Ends ONNX Runtime's profiling (loaded with `profilePrefix`) and writes its trace to `<profilePrefix>_<date>.json`. */
  async endProfiling(): Promise<void> {
    await this.session.endProfiling();
  }

  async close(): Promise<void> {
    forwardLog?.flush();
    await this.session.release();
    this.checkpoint.close();
  }
}

/**
 * REALIGN_FORWARD_LOG=<file>: one JSON line per forward pass, for bench:pipeline's per-step counts:
 *   {"t": epoch ms at its end, "B": rows, "T": new tokens per row, "past": cached tokens, "K": logit positions per row, "real": unpadded new tokens}
 * Lines are buffered and appended in chunks and at exit; without the variable nothing is recorded.
 */
class ForwardLog {
  private lines: string[] = [];
  constructor(private readonly path: string) {
    process.on("exit", () => this.flush());
  }
  record(input: ForwardInput, K: number): void {
    const B = input.inputIds.length;
    const T = input.inputIds[0]?.length ?? 0;
    const S = input.attentionMask[0]?.length ?? 0;
    let real = 0;
    for (const row of input.attentionMask) for (let j = S - T; j < S; j++) real += row[j];
    this.lines.push(JSON.stringify({ t: Date.now(), B, T, past: S - T, K, real }));
    if (this.lines.length >= 512) this.flush();
  }
  flush(): void {
    if (!this.lines.length) return;
    appendFileSync(this.path, this.lines.join("\n") + "\n");
    this.lines = [];
  }
}
const forwardLog = process.env.REALIGN_FORWARD_LOG ? new ForwardLog(process.env.REALIGN_FORWARD_LOG) : null;

/**
 * The outputs other than the logits of a graph without interventions (WebGPU keeps them in GPU buffers; see
 * runDevice). Graphs with interventions keep the host round trip: fetching every output there would also
 * compute every writer input (2·layers tensors as wide as the MLP) at each step.
 */
function deviceOutputNames(cfg: DecoderConfig): string[] {
  const L = cfg.numLayers;
  const names = Array.from({ length: L }, (_, l) => [IO.presentKey(l), IO.presentValue(l), IO.residual(l)]).flat();
  names.push(IO.residualFinal);
  return names;
}

/** Layout revision of int8-dynamic graphs (2: int8 lm_head, 3: MatMulIntegerToFloat), in their cache key only: other graphs keep their entries. */
function int8DynamicRevision(q: QuantizeConfig | null): { i8dyn?: number } {
  return q?.scheme === "int8-dynamic" ? { i8dyn: 3 } : {};
}

/** About how many bytes a built graph's weights take (for the cache cap). */
function estimatedGraphBytes(checkpoint: Checkpoint, dtype: ComputeDType, quantize: QuantizeConfig | null): number {
  const element = dtype === "float16" ? 2 : 4;
  let bytes = 0;
  for (const n of checkpoint.names()) {
    const count = numel(checkpoint.info(n).shape);
    // Quantised projection matrices: bits/8 per weight plus one scale per block; everything else at `element`.
    const quantised = quantize !== null && /(proj|lm_head)\.weight$/.test(n);
    if (!quantised) bytes += count * element;
    else if (quantize.scheme === "int8-dynamic") bytes += count;
    else bytes += count * (quantize.bits / 8 + element / quantize.blockSize);
  }
  // int8-dynamic gives a tied head its own int8 copy of the embedding table.
  if (quantize?.scheme === "int8-dynamic" && !checkpoint.has("lm_head.weight") && checkpoint.has("model.embed_tokens.weight")) bytes += numel(checkpoint.info("model.embed_tokens.weight").shape);
  return bytes;
}

/**
 * Where the runtime has Float16Array (Bun), onnxruntime-common stores float16 data as one, even when given
 * a Uint16Array, but the native binding reads a Float16Array as empty ("expected N bytes, got 0"). The
 * tensor is handed over with a Uint16Array view of the same bytes as its `data` (no copy).
 */
function nativeHalf(t: ort.Tensor): ort.Tensor {
  if (t.location !== "cpu" || t.type !== "float16" || t.data instanceof Uint16Array) return t;
  const d = t.data as unknown as ArrayBufferView;
  const bits = new Uint16Array(d.buffer, d.byteOffset, d.byteLength / 2);
  const view = new ort.Tensor("float16", bits, t.dims);
  Object.defineProperty(view, "data", { value: bits });
  return view;
}

type Rows = Float32Array | Uint16Array | Float64Array | BigInt64Array;

/** A host copy of a tensor kept on the device (the device buffer is freed); host tensors as they are. */
async function onHost(t: ort.Tensor): Promise<ort.Tensor> {
  if (t.location !== "gpu-buffer") return t;
  const data = (await t.getData(true)) as Rows;
  return new ort.Tensor(t.type as "float32", data as Float32Array, t.dims);
}

/** Rows [start, end) of a batch-major tensor ([B, …]), on the host (a device tensor is copied, not freed). */
async function sliceBatch(t: ort.Tensor, start: number, end: number): Promise<ort.Tensor> {
  const data = (t.location === "gpu-buffer" ? await t.getData(false) : t.data) as Rows;
  const row = t.dims[0] ? data.length / t.dims[0] : 0;
  return new ort.Tensor(t.type as "float32", data.slice(start * row, end * row) as Float32Array, [end - start, ...t.dims.slice(1)]);
}

/** Host tensors ([B_i, …], same trailing dims and type) joined along the batch. */
function concatBatch(ts: ort.Tensor[]): ort.Tensor {
  const datas = ts.map((t) => t.data as Rows);
  const total = datas.reduce((n, d) => n + d.length, 0);
  const out = new (datas[0]!.constructor as new (n: number) => Rows)(total);
  let at = 0;
  for (const d of datas) {
    (out as Float32Array).set(d as Float32Array, at);
    at += d.length;
  }
  return new ort.Tensor(ts[0]!.type as "float32", out as Float32Array, [ts.reduce((n, t) => n + t.dims[0]!, 0), ...ts[0]!.dims.slice(1)]);
}

function concatF32(xs: Float32Array[]): Float32Array {
  const out = new Float32Array(xs.reduce((n, x) => n + x.length, 0));
  let at = 0;
  for (const x of xs) {
    out.set(x, at);
    at += x.length;
  }
  return out;
}

/** The writer_positions feed: every token for `true`, none when absent (K' = 0), else the rows given, checked. */
function writerPositionRows(asked: boolean | number[][] | undefined, B: number, T: number): number[][] {
  if (!asked) return Array.from({ length: B }, () => []);
  if (asked === true) return Array.from({ length: B }, () => Array.from({ length: T }, (_, t) => t));
  if (asked.length !== B) throw new RangeError(`writerInputs: ${asked.length} rows of positions for a batch of ${B}`);
  const K = asked[0]?.length ?? 0;
  for (const row of asked) {
    if (row.length !== K) throw new RangeError(`writerInputs: every row needs the same number of positions (${K}), got ${row.length}`);
    for (const t of row) if (!Number.isInteger(t) || t < 0 || t >= T) throw new RangeError(`writerInputs: position ${t} is outside the ${T} new tokens`);
  }
  return asked;
}

/**
 * [B][T] numbers as an int64 tensor. `indexOf` names a tensor whose entries index a table (position_ids: the
 * RotaryEmbedding kernel reads row p of the rotary table unchecked): its entries must be whole numbers ≥ 0,
 * checked in the same pass.
 */
function int64Tensor(rows: number[][], indexOf?: string): ort.Tensor {
  const B = rows.length;
  const T = rows[0]?.length ?? 0;
  const data = new BigInt64Array(B * T);
  for (let b = 0; b < B; b++) {
    const row = rows[b];
    if (row.length !== T) throw new Error(`ragged batch: row ${b} has ${row.length} entries, expected ${T}`);
    for (let t = 0; t < T; t++) {
      const v = row[t];
      if (indexOf && (!Number.isSafeInteger(v) || v < 0)) throw new RangeError(`${indexOf} must be whole numbers ≥ 0; row ${b} has ${v} at index ${t}`);
      data[b * T + t] = BigInt(v);
    }
  }
  return new ort.Tensor("int64", data, [B, T]);
}
