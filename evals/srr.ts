// Safety Representation Ranking (after Du et al., "Advancing LLM Safe Alignment with Safety
// Representation Ranking", arXiv 2505.15710), written for this project: sample several candidate
// replies, read the model's *own* hidden state at the last token of the instruction and of
// instruction + candidate at one intermediate layer, and let a small similarity scorer pick one.
//
//   features   x_q = h_ℓ(prompt)[last], x_i = h_ℓ(prompt + candidate i)[last]  (the residual entering
//              layer ℓ, i.e. HF's hidden_states[ℓ]), standardised with the training mean / std
//   scorer     q = A·x_q + a, c_i = B·x_i + b (learned affine projections to `dim`), s_i = cos(q, c_i) / τ;
//              with `pair` (the default) the candidate side reads [x_i, x_q], so it can take out what the
//              candidate's state shares with the instruction's
//   training   listwise: softmax(s) over a list against the label-derived target t (uniform over the
//              list's good candidates), loss KL(t ‖ softmax(s)) + ½·λ·(|A|² + |B|²), Adam, hand-written
//              gradients (checked against finite differences in tests/evals/srr.test.ts). The offsets a,
//              b matter: with features centred, a purely linear q could not point one way for every list.
//   baseline   a logistic probe on the same features ([x_i, x_q] → P(good)), for comparison
//
// "Good" is the caller's label: for a harmful instruction a refusal, for a harmless one an answer.
// The scorer is stored as srr.safetensors (A, B, mean, std; layer, τ and provenance in metadata).
import type { DecoderModel } from "../engine/model.ts";
import { leftPad } from "../engine/generate.ts";
import { Rng } from "../engine/sampling.ts";
import { SafetensorsFile, writeSafetensors } from "../engine/safetensors.ts";

export const SRR_FORMAT = "realign-srr/1";

export class SrrError extends Error {
  override name = "SrrError";
}

// ---- features ----------------------------------------------------------------------------------

/**
 * The last-token hidden state of every sequence at every layer boundary: result[l][s] is the residual
 * entering layer l (l = numLayers: the final pre-norm residual) at the last token of sequences[s].
 * Batched with left padding (so the last position is every row's last real token).
 */
export async function lastTokenStates(model: DecoderModel, sequences: number[][], batchSize = 32): Promise<Float32Array[][]> {
  const L = model.config.numLayers;
  const H = model.config.hiddenSize;
  const out: Float32Array[][] = Array.from({ length: L + 1 }, () => []);
  // Similar lengths together: less padding. Results go back in the caller's order.
  const order = sequences.map((_, i) => i).sort((a, b) => sequences[a]!.length - sequences[b]!.length);
  const slots: Float32Array[][] = Array.from({ length: L + 1 }, () => new Array<Float32Array>(sequences.length));
  for (let start = 0; start < order.length; start += batchSize) {
    const idx = order.slice(start, start + batchSize);
    const batch = leftPad(idx.map((i) => sequences[i]!), 0);
    const T = batch.inputIds[0]!.length;
    const r = await model.forward({ ...batch, logitPositions: idx.map(() => [T - 1]), residuals: true, noCache: true });
    for (let l = 0; l <= L; l++) {
      const res = r.residuals![l]!;
      idx.forEach((seq, b) => (slots[l]![seq] = res.slice((b * T + T - 1) * H, (b * T + T) * H)));
    }
  }
  for (let l = 0; l <= L; l++) out[l] = slots[l]!;
  return out;
}

// ---- lists and the scorer ----------------------------------------------------------------------

/** One instruction with its candidates, as features at one layer, and their labels. */
export interface SrrList {
  inst: Float32Array;
  cands: Float32Array[];
  good: boolean[];
}

export interface SrrScorer {
  layer: number;
  hidden: number;
  dim: number;
  tau: number;
  /** The candidate encoder reads [x_i, x_q] (B is [dim, 2·hidden]) instead of x_i alone. */
  pair: boolean;
  /** Feature standardisation (from the training lists). */
  mean: Float32Array;
  std: Float32Array;
  /** A [dim, hidden], B [dim, hidden or 2·hidden] row-major, and the [dim] offsets. */
  A: Float32Array;
  B: Float32Array;
  a: Float32Array;
  b: Float32Array;
  metadata: Record<string, string>;
}

export interface TrainOptions {
  layer: number;
  dim?: number;
  tau?: number;
  epochs?: number;
  lr?: number;
  weightDecay?: number;
  seed?: number;
  /** Candidate encoder reads [x_i, x_q] (default true). */
  pair?: boolean;
  /** Scale of A's initial weights relative to B's (default 0.1). */
  instInit?: number;
  /** Held-out lists for early stopping: the parameters of the epoch with the lowest mean loss on them are kept. */
  val?: readonly SrrList[];
  /** With `val`: stop after this many epochs without a lower validation loss (default 30). */
  patience?: number;
  /** Called after each epoch with the mean training loss (and the validation loss when `val` is given). */
  onEpoch?: (epoch: number, loss: number, valLoss: number | null) => void;
}

/** Lists a listwise loss can learn from: at least one good and one bad candidate. */
export const informative = (l: SrrList): boolean => l.good.some(Boolean) && l.good.some((g) => !g);

/** Mean and standard deviation per feature over every instruction and candidate vector. */
export function featureStats(lists: readonly SrrList[], hidden: number): { mean: Float32Array; std: Float32Array } {
  const sum = new Float64Array(hidden);
  const sq = new Float64Array(hidden);
  let n = 0;
  for (const l of lists) {
    for (const v of [l.inst, ...l.cands]) {
      for (let h = 0; h < hidden; h++) {
        sum[h] += v[h]!;
        sq[h] += v[h]! * v[h]!;
      }
      n++;
    }
  }
  const mean = new Float32Array(hidden);
  const std = new Float32Array(hidden);
  for (let h = 0; h < hidden; h++) {
    mean[h] = sum[h]! / Math.max(1, n);
    std[h] = Math.sqrt(Math.max(sq[h]! / Math.max(1, n) - mean[h]! ** 2, 0)) || 1;
  }
  return { mean, std };
}

const standardise = (v: Float32Array, mean: Float32Array, std: Float32Array): Float64Array => Float64Array.from(v, (x, h) => (x - mean[h]!) / std[h]!);

type Vec = Float32Array | Float64Array;

function matVec(M: Vec, x: Float64Array, rows: number, cols: number, bias: Vec): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = bias[r]!;
    const o = r * cols;
    for (let c = 0; c < cols; c++) s += M[o + c]! * x[c]!;
    y[r] = s;
  }
  return y;
}

const dot = (a: Float64Array, b: Float64Array) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
};
const EPS = 1e-8;

/** The parameters being trained: A, B [dim, hidden], a, b [dim]. */
export interface SrrParams {
  A: Vec;
  B: Vec;
  a: Vec;
  b: Vec;
}

/** Scores s_i = cos(A·x_q + a, B·x_i + b) / τ of one list (standardised features). */
function listForward(P: SrrParams, dim: number, hidden: number, tau: number, xq: Float64Array, xs: Float64Array[]) {
  const q = matVec(P.A, xq, dim, hidden, P.a);
  const nq = Math.sqrt(dot(q, q)) + EPS;
  const cs = xs.map((x) => matVec(P.B, x, dim, x.length, P.b));
  const ncs = cs.map((c) => Math.sqrt(dot(c, c)) + EPS);
  const cos = cs.map((c, i) => dot(q, c) / (nq * ncs[i]!));
  return { q, nq, cs, ncs, cos, scores: cos.map((c) => c / tau) };
}

export function softmax(s: readonly number[]): number[] {
  const m = Math.max(...s);
  const e = s.map((x) => Math.exp(x - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}

/** KL(t ‖ softmax(s)) of one list and its gradients with respect to every parameter (accumulated into g). */
export function listLossAndGrad(P: SrrParams, dim: number, hidden: number, tau: number, xq: Float64Array, xs: Float64Array[], target: number[], g: SrrParams | null): number {
  const f = listForward(P, dim, hidden, tau, xq, xs);
  const p = softmax(f.scores);
  let loss = 0;
  target.forEach((t, i) => {
    if (t > 0) loss += t * (Math.log(t) - Math.log(Math.max(p[i]!, 1e-300)));
  });
  if (!g) return loss;
  // dL/ds_i = p_i − t_i; s_i = cos_i / τ.
  const gq = new Float64Array(dim);
  f.cs.forEach((c, i) => {
    const gs = (p[i]! - target[i]!) / tau;
    if (gs === 0) return;
    const cos = f.cos[i]!;
    // ∂cos/∂q = (c/|c| − cos·q/|q|) / |q|;  ∂cos/∂c = (q/|q| − cos·c/|c|) / |c|.
    const gc = new Float64Array(dim);
    for (let d = 0; d < dim; d++) {
      gq[d] += (gs * (c[d]! / f.ncs[i]! - (cos * f.q[d]!) / f.nq)) / f.nq;
      gc[d] = (gs * (f.q[d]! / f.nq - (cos * c[d]!) / f.ncs[i]!)) / f.ncs[i]!;
    }
    const x = xs[i]!;
    const hc = x.length;
    for (let d = 0; d < dim; d++) {
      const o = d * hc;
      const gd = gc[d]!;
      g.b[d] += gd;
      for (let h = 0; h < hc; h++) g.B[o + h] += gd * x[h]!;
    }
  });
  for (let d = 0; d < dim; d++) {
    const o = d * hidden;
    const gd = gq[d]!;
    g.a[d] += gd;
    for (let h = 0; h < hidden; h++) g.A[o + h] += gd * xq[h]!;
  }
  return loss;
}

/** The label-derived target: uniform over the good candidates. */
export const targetOf = (good: readonly boolean[]): number[] => {
  const k = good.filter(Boolean).length;
  return good.map((g) => (g ? 1 / k : 0));
};

class Adam {
  private m: Float64Array;
  private v: Float64Array;
  private t = 0;
  constructor(
    readonly n: number,
    private readonly lr: number,
  ) {
    this.m = new Float64Array(n);
    this.v = new Float64Array(n);
  }
  step(w: Float64Array, g: Float64Array): void {
    this.t++;
    const b1 = 0.9;
    const b2 = 0.999;
    const c1 = 1 - b1 ** this.t;
    const c2 = 1 - b2 ** this.t;
    for (let i = 0; i < this.n; i++) {
      this.m[i] = b1 * this.m[i]! + (1 - b1) * g[i]!;
      this.v[i] = b2 * this.v[i]! + (1 - b2) * g[i]! * g[i]!;
      w[i] -= (this.lr * (this.m[i]! / c1)) / (Math.sqrt(this.v[i]! / c2) + 1e-8);
    }
  }
}

function gaussianInit(n: number, scale: number, rng: Rng): Float64Array {
  const w = new Float64Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rng.nextFloat(), 1e-300);
    const v = rng.nextFloat();
    const r = Math.sqrt(-2 * Math.log(u)) * scale;
    w[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) w[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return w;
}

/** Trains the scorer on lists (only informative ones contribute); full-batch Adam, deterministic for a seed. */
export function trainSrr(lists: readonly SrrList[], opts: TrainOptions): SrrScorer {
  const useful = lists.filter(informative);
  if (useful.length === 0) throw new SrrError("SRR training needs lists with at least one good and one bad candidate; none were given");
  const hidden = useful[0]!.inst.length;
  const dim = opts.dim ?? 32;
  const tau = opts.tau ?? 0.1;
  const epochs = opts.epochs ?? 200;
  const lr = opts.lr ?? 0.01;
  const wd = opts.weightDecay ?? 1e-3;
  const rng = new Rng(opts.seed ?? 0, 0x5e1);
  const pair = opts.pair ?? true;
  const { mean, std } = featureStats(useful, hidden);
  const data = useful.map((l) => {
    const xq = standardise(l.inst, mean, std);
    return { xq, xs: l.cands.map((c) => candidateInput(standardise(c, mean, std), xq, pair)), t: targetOf(l.good) };
  });
  // One flat parameter vector [A, B, a, b] with views, for Adam.
  const M = dim * hidden;
  const MB = pair ? 2 * M : M;
  const w = new Float64Array(M + MB + 2 * dim);
  w.set(gaussianInit(w.length, 1 / Math.sqrt(hidden), rng));
  // The instruction encoder starts near its offset (q ≈ a): a ranking that holds for every list is
  // the easy thing to learn first; what depends on the instruction grows from there.
  for (let i = 0; i < M; i++) w[i] = w[i]! * (opts.instInit ?? 0.1);
  const views = (v: Float64Array): { A: Float64Array; B: Float64Array; a: Float64Array; b: Float64Array } => ({ A: v.subarray(0, M), B: v.subarray(M, M + MB), a: v.subarray(M + MB, M + MB + dim), b: v.subarray(M + MB + dim) });
  const P = views(w);
  const opt = new Adam(w.length, lr);
  const valData = (opts.val ?? []).filter(informative).map((l) => {
    const xq = standardise(l.inst, mean, std);
    return { xq, xs: l.cands.map((c) => candidateInput(standardise(c, mean, std), xq, pair)), t: targetOf(l.good) };
  });
  let best = { loss: Infinity, w: w.slice(), epoch: -1 };
  for (let e = 0; e < epochs; e++) {
    const gw = new Float64Array(w.length);
    const g = views(gw);
    let loss = 0;
    for (const d of data) loss += listLossAndGrad(P, dim, hidden, tau, d.xq, d.xs, d.t, g);
    const n = data.length;
    // Weight decay on the matrices only.
    for (let i = 0; i < gw.length; i++) gw[i] = gw[i]! / n + (i < M + MB ? wd * w[i]! : 0);
    opt.step(w, gw);
    let valLoss: number | null = null;
    if (valData.length) {
      valLoss = valData.reduce((acc, d) => acc + listLossAndGrad(P, dim, hidden, tau, d.xq, d.xs, d.t, null), 0) / valData.length;
      if (valLoss < best.loss) best = { loss: valLoss, w: w.slice(), epoch: e };
    }
    opts.onEpoch?.(e, loss / n, valLoss);
    if (valData.length && e - best.epoch >= (opts.patience ?? 30)) break;
  }
  if (valData.length) w.set(best.w);
  return { layer: opts.layer, hidden, dim, tau, pair, mean, std, A: Float32Array.from(P.A), B: Float32Array.from(P.B), a: Float32Array.from(P.a), b: Float32Array.from(P.b), metadata: { lists: String(useful.length), epochs: String(valData.length ? best.epoch + 1 : epochs), ...(valData.length ? { val_loss: best.loss.toFixed(6) } : {}) } };
}

/** The scorer's scores for one list of raw (unstandardised) features; the top-ranked is the argmax. */
export function srrScores(s: SrrScorer, inst: Float32Array, cands: readonly Float32Array[]): number[] {
  const xq = standardise(inst, s.mean, s.std);
  return listForward(s, s.dim, s.hidden, s.tau, xq, cands.map((c) => candidateInput(standardise(c, s.mean, s.std), xq, s.pair))).scores;
}

function candidateInput(xc: Float64Array, xq: Float64Array, pair: boolean): Float64Array {
  if (!pair) return xc;
  const x = new Float64Array(xc.length + xq.length);
  x.set(xc, 0);
  x.set(xq, xc.length);
  return x;
}

/** Index of the largest value (first on ties). */
export const argmaxOf = (xs: readonly number[]): number => xs.reduce((best, x, i) => (x > xs[best]! ? i : best), 0);

// ---- the logistic-probe baseline ---------------------------------------------------------------

export interface LogisticProbe {
  mean: Float32Array;
  std: Float32Array;
  /** Weights over [x_cand, x_inst] (standardised), then the bias. */
  w: Float64Array;
}

/** L2-regularised logistic regression of "good" on [x_cand, x_inst], full-batch Adam. */
export function trainProbe(lists: readonly SrrList[], opts: { epochs?: number; lr?: number; l2?: number } = {}): LogisticProbe {
  const hidden = lists[0]!.inst.length;
  const { mean, std } = featureStats(lists, hidden);
  const rows: { x: Float64Array; y: number }[] = [];
  for (const l of lists) {
    const q = standardise(l.inst, mean, std);
    l.cands.forEach((c, i) => {
      const x = new Float64Array(2 * hidden);
      x.set(standardise(c, mean, std), 0);
      x.set(q, hidden);
      rows.push({ x, y: l.good[i] ? 1 : 0 });
    });
  }
  const D = 2 * hidden;
  const w = new Float64Array(D + 1);
  const opt = new Adam(D + 1, opts.lr ?? 0.01);
  const l2 = opts.l2 ?? 1e-2;
  for (let e = 0; e < (opts.epochs ?? 300); e++) {
    const g = new Float64Array(D + 1);
    for (const r of rows) {
      let z = w[D]!;
      for (let j = 0; j < D; j++) z += w[j]! * r.x[j]!;
      const err = 1 / (1 + Math.exp(-z)) - r.y;
      for (let j = 0; j < D; j++) g[j] += err * r.x[j]!;
      g[D] += err;
    }
    for (let j = 0; j <= D; j++) g[j] = g[j]! / rows.length + (j < D ? l2 * w[j]! : 0);
    opt.step(w, g);
  }
  return { mean, std, w };
}

export function probeScores(p: LogisticProbe, inst: Float32Array, cands: readonly Float32Array[]): number[] {
  const H = inst.length;
  const q = standardise(inst, p.mean, p.std);
  return cands.map((c) => {
    const x = standardise(c, p.mean, p.std);
    let z = p.w[2 * H]!;
    for (let h = 0; h < H; h++) z += p.w[h]! * x[h]! + p.w[H + h]! * q[h]!;
    return z;
  });
}

// ---- the artefact ------------------------------------------------------------------------------

const f32Bytes = (a: Float32Array) => new Uint8Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));

/** Writes srr.safetensors: tensors srr.A, srr.B [dim, hidden], srr.a, srr.b [dim], srr.mean, srr.std [hidden]; layer, τ and the rest in metadata. */
export function saveSrr(path: string, s: SrrScorer): void {
  writeSafetensors(
    path,
    [
      { name: "srr.A", dtype: "F32", shape: [s.dim, s.hidden], data: f32Bytes(s.A) },
      { name: "srr.B", dtype: "F32", shape: [s.dim, s.pair ? 2 * s.hidden : s.hidden], data: f32Bytes(s.B) },
      { name: "srr.a", dtype: "F32", shape: [s.dim], data: f32Bytes(s.a) },
      { name: "srr.b", dtype: "F32", shape: [s.dim], data: f32Bytes(s.b) },
      { name: "srr.mean", dtype: "F32", shape: [s.hidden], data: f32Bytes(s.mean) },
      { name: "srr.std", dtype: "F32", shape: [s.hidden], data: f32Bytes(s.std) },
    ],
    { ...s.metadata, format: SRR_FORMAT, layer: String(s.layer), tau: String(s.tau), pair: String(s.pair) },
  );
}

export function loadSrr(path: string): SrrScorer {
  let f: SafetensorsFile;
  try {
    f = SafetensorsFile.open(path);
  } catch (e) {
    throw new SrrError(`${path}: cannot be read as an SRR scorer (${e instanceof Error ? e.message.split("\n")[0] : String(e)})`);
  }
  try {
    const meta = f.metadata;
    if (meta.format !== SRR_FORMAT) throw new SrrError(`${path}: not an SRR scorer (metadata format is ${JSON.stringify(meta.format ?? null)}, expected "${SRR_FORMAT}")`);
    const layer = Number(meta.layer);
    const tau = Number(meta.tau);
    if (!Number.isInteger(layer) || layer < 0) throw new SrrError(`${path}: metadata layer ${JSON.stringify(meta.layer)} is not a layer index`);
    if (!(tau > 0)) throw new SrrError(`${path}: metadata tau ${JSON.stringify(meta.tau)} is not a positive number`);
    for (const n of ["srr.A", "srr.B", "srr.a", "srr.b", "srr.mean", "srr.std"]) if (!f.names().includes(n)) throw new SrrError(`${path}: tensor ${n} is missing`);
    const [dim, hidden] = f.info("srr.A").shape as [number, number];
    const same = (n: string, shape: number[]) => {
      const s = f.info(n).shape;
      if (s.length !== shape.length || s.some((x, i) => x !== shape[i])) throw new SrrError(`${path}: ${n} has shape [${s}], expected [${shape}]`);
    };
    const pair = meta.pair === "true";
    same("srr.B", [dim, pair ? 2 * hidden : hidden]);
    same("srr.a", [dim]);
    same("srr.b", [dim]);
    same("srr.mean", [hidden]);
    same("srr.std", [hidden]);
    const { format: _f, layer: _l, tau: _t, pair: _p, ...rest } = meta;
    return { layer, tau, dim, hidden, pair, A: f.readF32("srr.A"), B: f.readF32("srr.B"), a: f.readF32("srr.a"), b: f.readF32("srr.b"), mean: f.readF32("srr.mean"), std: f.readF32("srr.std"), metadata: rest };
  } finally {
    f.close();
  }
}

/** Ranks candidate replies to one prompt with the model's own hidden states; returns the scores (argmax = top-ranked). */
export async function rankWithSrr(model: DecoderModel, scorer: SrrScorer, promptIds: number[], candidates: number[][]): Promise<number[]> {
  if (scorer.hidden !== model.config.hiddenSize) throw new SrrError(`the SRR scorer reads hidden states of width ${scorer.hidden}, but ${model.dir} has hidden size ${model.config.hiddenSize}: it was trained on another model`);
  if (scorer.layer > model.config.numLayers) throw new SrrError(`the SRR scorer reads layer ${scorer.layer}, but ${model.dir} has ${model.config.numLayers} layers`);
  const states = await lastTokenStates(model, [promptIds, ...candidates.map((c) => [...promptIds, ...c])]);
  const at = states[scorer.layer]!;
  return srrScores(scorer, at[0]!, at.slice(1));
}
