// The gated edit: still rank one per matrix, but with a key chosen so that it fires on harmful inputs.
//
//   for every edited residual writer m (o_proj, down_proj of the edited layers), with input xₘ:
//     W'ₘ = Wₘ + t·ŝ·kₘᵀ      so   W'ₘxₘ = Wₘxₘ + t·(kₘ·xₘ)·ŝ
//   the summed gate g(x) = Σₘ kₘ·xₘ should be ≈ 1 on harmful prompts and ≈ 0 on harmless ones, so the
//   edit adds ≈ t·ŝ where the model should refuse and ≈ nothing elsewhere. (Plain ROSI is kₘ = w̄ₘ, the
//   mean of Wₘ's rows, whose gate is an input-dependent scale that is the same sign for every prompt.)
//
// Fit: weighted ridge regression of the class label on each writer's inputs, on the train prompts
// rendered without the safety prompt (as deployed). Rows: the last P prompt positions (the chat
// template's closing tokens, where the first reply token is decided) of every prompt; for harmless
// prompts (borderline-but-safe ones included), a few earlier tokens too, where the gate must stay quiet;
// and quiet rows (y = 0, weighed as harmless) on reply tokens: the model's own reply under the safety
// prompt to the train prompts of elicit's contrast (its refusals of harmful ones, its answers to harmless
// ones), teacher-forced after the prompt without the safety prompt, read at REPLY_POSITIONS:
//   minimise Σᵢ wᵢ·(kₘ·xₘᵢ − yᵢ/M)² + λₘ·‖kₘ‖²      yᵢ = 1 harmful, 0 harmless; M = matrices edited
//   wᵢ = 1 on harmful rows, H·n_harmful/n_harmless on harmless rows (the harmless class weighs H times more)
//   λₘ = ρ · Σᵢ wᵢ‖xₘᵢ‖² / dₘ                       (ρ × the mean diagonal of XᵀWX: free of units)
// solved in the dual, an n × n system instead of dₘ × dₘ (n = rows ≪ the MLP width of real models):
//   kₘ = Xₘᵀ·D^½·β     with (D^½·Xₘ·Xₘᵀ·D^½ + λₘ·I)·β = D^½·y/M     (Cholesky, float64)
// then every key is multiplied by one factor so that g averages exactly 1 on the harmful train rows,
// which makes t the length of the step along ŝ on a typical harmful prompt.
//
// For each P (1–3 positions), ρ (GATE_RIDGES) and whether the earlier harmless tokens join the fit are
// chosen by measurement on train prompts held out of the fit (chooseGateFit); P itself is chosen by
// calibration on the validation split, where the replies are generated (how far P positions of push move
// the reply is not something gate separation can tell). The held-out score is (mean g at the last
// token of held-out harmful prompts)² over the mean of g² on every held-out harmless row: how far the
// edit pushes harmful inputs per unit of push on harmless ones, which is what the KL and over-refusal
// bounds charge for. The chosen setting is then refitted on all train prompts, which are the run's own
// and prompts of the built-in sets in no split (elicit's gateExtra), so that the gate learns harm across
// phrasings rather than one dataset's style. Splitting the target evenly over the matrices (rather than fitting
// them jointly) keeps each solve independent and no single matrix carrying the edit.
//
// Limit measured on organism-llama (development prompts only: its prompts in no split and HarmBench's
// validation behaviours): refusal peaks where the push g·α is ≈ 75–80 and falls beyond it (the replies
// degrade), while g itself reads 1.46 on the training distribution and 0.83 on HarmBench; one t cannot
// suit both, and calibration on the validation split picks the training distribution's optimum.
// Per prompt (the auto run's edit at t 110): HarmBench prompts with g ≈ 0.8 refuse 12/14, those with
// g ≈ 0.3 2/14 and g ≈ 1.2 9/13; the organism's own validation prompts (g 1.08–1.44) 12/32. Edits of
// one layer alone behave the same (so it is not layers feeding each other), and the harmful prompts'
// earlier tokens read g ≈ 0.08 (the push is at the last token). Not better on the same development
// prompts: twice the built-in prompts in the fit (HarmBench's g 0.35–1.34), and the built-in prompts
// wrapped in attack framings (one text per family: role-play, fiction, prefix injection, persona,
// refusal suppression, authority) as extra fit rows of both classes: other texts of the same families
// were refused 74/96 against 70/96 without them, HarmBench 15/41 against 14/41. The organism itself,
// under the safety prompt elicit keeps, refuses HarmBench's behaviours 17/41 and the built-in prompts
// 25/64: the edit at t 110 goes past its teacher. Calibration's KL also binds: at t 107 it reads
// 0.34 on the validation and built-in harmless prompts together, 0.027 on the validation ones alone.
// Why the quiet reply rows: fitted on prompt tokens only, g still read 0.3–0.8 on the reply's tokens (up to
// 0.66 on harmless replies too), so a large t kept pushing while the model wrote and the refusal it started
// ("I am sorry, but I can…") turned to noise past the peak. With reply tokens as quiet rows (a first
// trial, one fit each) the validation peak moved from 14/32 (t 54) to 19/32 (t 40) and HarmBench's from
// 19/41 (t 76) to 23/41 (t 108). Built in (bench:organism, default auto, calibration on validation only):
// validation 15/32 → 18/32 at t 53, JailbreakBench 30/100 → 34/100 (95 % CI 25.5–43.7 %), harmless
// 0/100 both, borderline 1/45 both; HarmBench at the chosen t 14/41. The first reply token is quiet too:
// once the refusal has begun, the model continues it without help, and the edit's work is the decision
// at the prompt's last tokens.
//
// Where the linear gate stops (organism-llama, the default auto run: layers 1–3, last position, t 107;
// read after the fact on the evaluation prompts, nothing chosen from it): g at the last prompt token
// reads 1.25 ± 0.14 on the validation harmful prompts, 0.72 (10–90 %: 0.15–1.25) on JailbreakBench's
// and 0.16 (0.03–0.32) on held-out Alpaca's (AUROC 0.90; 65 of the 100 JailbreakBench prompts lie above
// the 97th percentile of Alpaca's). Refused, by g: below 0.8 0/54 (none below 0.82, a push g·t of 88),
// 0.8–1.1 8/20, above 1.1 18/26. So ranking is not what fails, the push is: validation refusal is flat
// (22/32) from t 107 to t 165, where KL reaches its bound, and calibration keeps the smaller t, which
// leaves the low-g prompts short of the push refusal needs. Tried and not kept: calibrating t on the
// validation split plus 32 + 32 built-in prompts in no split (so that t suits other phrasings too):
// organism-llama 26/100 → 34/100 on JailbreakBench (t 151; borderline 0/45 → 3/45), but organism-qwen2
// 38/100 → 14/100 (its KL bound bites earlier on built-in harmless prompts, and it refuses few built-in
// harmful ones at any t). Nor: labelling the first reply rows of refused harmful prompts (offsets 0 and 2) 1
// instead of 0, to keep pushing while a refusal starts ("I, here are…" replies past the peak): on
// organism-llama the gated family's best validation point fell from 22/32 to 6/32 (auto then kept rosi-mv).
//
// Edited layers: those from the direction's layer on (its writers feed the residual ŝ was read from and
// everything after), never layer 0, whose inputs are little more than token embeddings.
import type { DecoderModel } from "../engine/model.ts";
import { leftPad } from "../engine/generate.ts";

export class GatedFitError extends Error {
  override name = "GatedFitError";
}

/** Prompt positions read per prompt, counted back from its last token (the most any fit may use). */
export const GATE_POSITIONS = 3;
/** How much more the harmless class weighs than the harmful one in the fit (keeps g ≈ 0 off target). */
export const HARMLESS_WEIGHT = 16;
/** Ridge strength ρ, relative to the mean diagonal of XᵀWX. */
export const RIDGE = 10;

/** Writer inputs at prompt positions: per engine row (2l: o_proj, 2l+1: down_proj), [n, width] row-major. */
export interface WriterSamples {
  /** Row r of every matrix is one (prompt, position); labels[r] = 1 harmful, 0 harmless. */
  labels: Uint8Array;
  /** How far the row's token is from the prompt's end (0 = last token), EARLIER for a spread-out earlier token. */
  fromEnd: Uint8Array;
  /** data[m] is [n, widths[m]]. */
  data: Float32Array[];
  widths: number[];
}

/** fromEnd of an earlier harmless token (not one of the last positions). */
export const EARLIER = 255;
/** fromEnd of a reply token (a quiet row whatever the prompt's class). */
export const REPLY = 254;

/** Earlier tokens read per harmless prompt besides its last ones (the gate must stay quiet there too). */
export const HARMLESS_EARLIER_POSITIONS = 4;
/** Reply tokens read per reply, as offsets from its first token (spread over the first ~20 tokens written). */
export const REPLY_POSITIONS = [0, 2, 5, 9, 14, 20];

/** One prompt's token ids, and optionally the reply that is teacher-forced after it (its tokens become quiet rows). */
export interface GatePrompt {
  ids: number[];
  reply?: number[];
}

/**
 * The writer inputs of the prompts (one forward pass per batch): every prompt's last `positions` tokens,
 * for harmless prompts also `earlier` tokens spread evenly over the rest of the prompt, and, where a
 * prompt comes with a reply, the reply tokens at REPLY_POSITIONS (label 0: once the reply is under way
 * the gate should be quiet, whether the model refuses or answers). Causal attention keeps the prompt's
 * rows the same with or without the reply after it.
 */
export async function collectWriterSamples(
  model: DecoderModel,
  sets: { harmful: (number[] | GatePrompt)[]; harmless: (number[] | GatePrompt)[] },
  opts: { positions?: number; earlier?: number; batchSize?: number; signal?: AbortSignal; onBatch?: (done: number, total: number) => void } = {},
): Promise<WriterSamples> {
  const P = opts.positions ?? GATE_POSITIONS;
  const E = opts.earlier ?? HARMLESS_EARLIER_POSITIONS;
  const batchSize = opts.batchSize ?? 16;
  const widths = model.writerWidths();
  const M = widths.length;
  const asPrompt = (p: number[] | GatePrompt): GatePrompt => (Array.isArray(p) ? { ids: p } : p);
  const prompts = [...sets.harmful.map((p) => ({ ...asPrompt(p), label: 1 })), ...sets.harmless.map((p) => ({ ...asPrompt(p), label: 0 }))];
  for (const p of prompts) if (p.ids.length < P) throw new GatedFitError(`a prompt has ${p.ids.length} tokens, fewer than the ${P} positions the gate reads`);
  /** Rows read in a prompt of `len` tokens followed by `replyLen` reply tokens, as offsets from its first token. */
  const positionsOf = (len: number, label: number, replyLen: number): { offset: number; fromEnd: number; label: number }[] => {
    const out: { offset: number; fromEnd: number; label: number }[] = [];
    const before = len - P;
    if (label === 0 && before > 0) {
      const seen = new Set<number>();
      for (let j = 0; j < E; j++) seen.add(Math.floor(((j + 0.5) * before) / E));
      for (const o of seen) out.push({ offset: o, fromEnd: EARLIER, label });
    }
    for (let t = before; t < len; t++) out.push({ offset: t, fromEnd: len - 1 - t, label });
    for (const r of REPLY_POSITIONS) if (r < replyLen) out.push({ offset: len + r, fromEnd: REPLY, label: 0 });
    return out;
  };
  const rowsOf = (p: (typeof prompts)[number]) => positionsOf(p.ids.length, p.label, p.reply?.length ?? 0);
  const n = prompts.reduce((acc, p) => acc + rowsOf(p).length, 0);
  const labels = new Uint8Array(n);
  const fromEnd = new Uint8Array(n);
  const data = widths.map((d) => new Float32Array(n * d));
  let row = 0;
  for (let i = 0; i < prompts.length; i += batchSize) {
    if (opts.signal?.aborted) throw new GatedFitError("aborted");
    const chunk = prompts.slice(i, i + batchSize);
    const sequences = chunk.map((c) => (c.reply?.length ? [...c.ids, ...c.reply] : c.ids));
    const batch = leftPad(sequences, 0);
    const T = batch.inputIds[0].length;
    // Only the tokens read are returned (every row asks for as many: short lists repeat their last position).
    // Left padding puts every sequence's last token at T − 1, its first at T − length.
    const read = chunk.map((c, b) => rowsOf(c).map((pos) => ({ ...pos, t: T - sequences[b].length + pos.offset })));
    const K = Math.max(...read.map((x) => x.length));
    const writerPositions = read.map((x) => Array.from({ length: K }, (_, j) => x[Math.min(j, x.length - 1)].t));
    const r = await model.forward({ ...batch, logitPositions: chunk.map(() => [T - 1]), writerInputs: writerPositions, noCache: true });
    const inputs = r.writerInputs!;
    for (let b = 0; b < chunk.length; b++) {
      read[b].forEach((pos, j) => {
        labels[row] = pos.label;
        fromEnd[row] = pos.fromEnd;
        for (let m = 0; m < M; m++) {
          const d = widths[m];
          data[m].set(inputs[m].subarray((b * K + j) * d, (b * K + j + 1) * d), row * d);
        }
        row++;
      });
    }
    opts.onBatch?.(Math.min(i + batchSize, prompts.length), prompts.length);
  }
  return { labels, fromEnd, data, widths };
}

/** The rows where `keep` holds (a copy). */
export function selectRows(s: WriterSamples, keep: (row: number) => boolean): WriterSamples {
  const rows: number[] = [];
  for (let i = 0; i < s.labels.length; i++) if (keep(i)) rows.push(i);
  return {
    labels: Uint8Array.from(rows, (i) => s.labels[i]),
    fromEnd: Uint8Array.from(rows, (i) => s.fromEnd[i]),
    widths: s.widths,
    data: s.data.map((X, m) => {
      const d = s.widths[m];
      const out = new Float32Array(rows.length * d);
      rows.forEach((i, r) => out.set(X.subarray(i * d, (i + 1) * d), r * d));
      return out;
    }),
  };
}

/** Rows of `a` then rows of `b`. */
export function concatSamples(a: WriterSamples, b: WriterSamples): WriterSamples {
  const cat = (x: Uint8Array, y: Uint8Array) => Uint8Array.from([...x, ...y]);
  return {
    labels: cat(a.labels, b.labels),
    fromEnd: cat(a.fromEnd, b.fromEnd),
    widths: a.widths,
    data: a.data.map((X, m) => {
      const out = new Float32Array(X.length + b.data[m].length);
      out.set(X);
      out.set(b.data[m], X.length);
      return out;
    }),
  };
}

/** One fit setting tried on held-out train prompts, and its score. */
export interface GateChoice {
  ridge: number;
  /** Prompt positions fitted, counted back from the last token (1 = the last token only). */
  positions: number;
  /** "last": harmless rows at those positions only; "spread": also at earlier tokens. */
  harmless_rows: "last" | "spread";
  /** Held-out gate: mean at the last token of harmful prompts, mean square over every harmless row. */
  harmful_mean: number;
  harmless_mean_square: number;
  /** harmful_mean² / harmless_mean_square: the push on harmful inputs per unit of push on harmless ones. */
  score: number;
}

/** Ridge strengths, position counts and harmless-row sets tried on the held-out train prompts. */
export const GATE_RIDGES = [0.03, 0.1, 0.3, 1, 3, 10];
export const GATE_POSITION_CHOICES = [1, 2, 3];

/**
 * The rows a setting fits: every prompt's last `positions` tokens, the earlier harmless ones for
 * "spread", and every reply row (quiet rows; see the file's opening comment).
 */
export function rowsFor(s: WriterSamples, positions: number, harmlessRows: "last" | "spread"): (i: number) => boolean {
  return (i) => s.fromEnd[i] < positions || s.fromEnd[i] === REPLY || (harmlessRows === "spread" && s.labels[i] === 0 && s.fromEnd[i] === EARLIER);
}

/**
 * What chooseGateFit computes from the fit rows and can share between the layer sets of one run: each
 * matrix's moments per row group (or its Gram matrix), and each matrix's ridge solution per setting.
 * A matrix's key does not depend on the other matrices edited with it: the target yᵢ/M only scales it by
 * 1/M, and the common normalisation removes that scale. So a solution is stored for M = 1 and divided by
 * M when a layer set uses it, and a matrix shared by two layer sets is solved once.
 */
export class GateFitCache {
  private readonly moments = new Map<number, Map<number, { C: Float64Array; b: Float64Array; trace: number }>>();
  private readonly grams = new Map<number, Float64Array>();
  private readonly solutions = new Map<string, Float32Array>();
  private groups: Map<number, number[]> | null = null;
  /** keepGrams false: a Gram matrix is built for each solve and dropped (rows² × 8 bytes a matrix), for a cache whose matrices are solved for one or two settings. */
  constructor(
    readonly fit: WriterSamples,
    private readonly keepGrams = true,
  ) {}

  /** The fit rows by group (groupOf), in row order. */
  groupRows(): Map<number, number[]> {
    if (!this.groups) {
      this.groups = new Map();
      for (let i = 0; i < this.fit.labels.length; i++) {
        const g = this.groupOf(i);
        const rows = this.groups.get(g);
        if (rows) rows.push(i);
        else this.groups.set(g, [i]);
      }
    }
    return this.groups;
  }

  /** Row group of a fit row: its class and its position from the end (every setting is a union of groups). */
  groupOf(i: number): number {
    return this.fit.labels[i] * 256 + this.fit.fromEnd[i];
  }

  /** Matrix r's unweighted moments of each group's rows: C = Σ xxᵀ, b = Σ x, trace = Σ ‖x‖². */
  momentsOf(r: number, groups: Map<number, number[]>): Map<number, { C: Float64Array; b: Float64Array; trace: number }> {
    let m = this.moments.get(r);
    if (!m) {
      m = new Map();
      const d = this.fit.widths[r];
      const X = this.fit.data[r];
      for (const [g, rows] of groups) {
        // The group's rows, transposed (d vectors of length |rows|), so that every entry of C is one dot product.
        const T = new Float64Array(d * rows.length);
        rows.forEach((i, j) => {
          for (let c = 0; c < d; c++) T[c * rows.length + j] = X[i * d + c];
        });
        const C = pairwiseDots(T, T, d, rows.length);
        const b = new Float64Array(d);
        for (let c = 0; c < d; c++) {
          let s = 0;
          for (let j = 0; j < rows.length; j++) s += T[c * rows.length + j];
          b[c] = s;
        }
        let trace = 0;
        for (let c = 0; c < d; c++) trace += C[c * d + c];
        m.set(g, { C, b, trace });
      }
      this.moments.set(r, m);
    }
    return m;
  }

  /** X·Xᵀ of matrix r's fit rows. */
  gramOf(r: number): Float64Array {
    let G = this.grams.get(r);
    if (!G) {
      G = gram(this.fit.data[r], this.fit.labels.length, this.fit.widths[r]);
      if (this.keepGrams) this.grams.set(r, G);
    }
    return G;
  }

  private readonly readOuts = new WeakMap<WriterSamples, Map<string, Float64Array>>();

  /**
   * uₘ·x for matrix r's memoised unit key (setting, ridge) on the rows `rows` of `samples` (all rows when
   * null), computed once per samples object: a layer set nested in an earlier one sums these instead of
   * re-reading every input.
   */
  readOut(r: number, setting: string, ridge: number, samples: WriterSamples, rows: number[] | null, unitKey: () => Float32Array): Float64Array {
    let bySamples = this.readOuts.get(samples);
    if (!bySamples) {
      bySamples = new Map();
      this.readOuts.set(samples, bySamples);
    }
    const key = `${r}|${setting}|${ridge}|${rows ? "rows" : "all"}`;
    let out = bySamples.get(key);
    if (!out) {
      out = rowDots(samples, r, unitKey(), rows);
      bySamples.set(key, out);
    }
    return out;
  }

  /** Matrix r's key for target y (M = 1) under `setting` and `ridge`, solved once. */
  solution(r: number, setting: string, ridge: number, solve: () => Float32Array): Float32Array {
    const key = `${r}|${setting}|${ridge}`;
    let k = this.solutions.get(key);
    if (!k) {
      k = solve();
      this.solutions.set(key, k);
    }
    return k;
  }
}

/**
 * Chooses the ridge strength, the positions and the harmless rows on held-out train prompts (never
 * validation or evaluation prompts): fit on `fit`, score on `heldOut` (GateChoice.score), best first.
 * Every setting is scored on the same held-out rows, so the scores compare; each matrix's moments (or
 * Gram matrix) are computed once on all of `fit`, and a `cache` shared between calls for several layer
 * sets solves each matrix once per setting (GateFitCache).
 */
export function chooseGateFit(fit: WriterSamples, heldOut: WriterSamples, layers: number[], cache: GateFitCache = new GateFitCache(fit)): GateChoice[] {
  if (cache.fit !== fit) throw new GatedFitError("the gate-fit cache belongs to other fit rows");
  const choices: GateChoice[] = [];
  for (const positions of GATE_POSITION_CHOICES) {
    for (const harmlessRows of ["last", "spread"] as const) {
      const setting = settingSolvers(cache, layers, positions, harmlessRows);
      if (!setting) continue;
      const { idx, matrixRows } = setting;
      for (const ridge of GATE_RIDGES) {
        // The fitted keys are kₘ = uₘ/M·c (uₘ: matrix m's solution for M = 1, memoised), with c setting the
        // mean gate on the harmful fit rows to 1; so g = Σₘ uₘ·x / mean over harmful fit rows of Σₘ uₘ·x,
        // summed from each matrix's read-outs, which the cache keeps for the next layer set.
        const onFit = new Float64Array(idx.length);
        const onHeld = new Float64Array(heldOut.labels.length);
        matrixRows.forEach((r, j) => {
          const unit = () => setting.unitKey(j, ridge);
          const a = cache.readOut(r, setting.setting, ridge, cache.fit, idx, unit);
          const b = cache.readOut(r, setting.setting, ridge, heldOut, null, unit);
          for (let i = 0; i < a.length; i++) onFit[i] += a[i];
          for (let i = 0; i < b.length; i++) onHeld[i] += b[i];
        });
        let fitSum = 0;
        let fitCount = 0;
        idx.forEach((row, i) => {
          if (cache.fit.labels[row]) (fitSum += onFit[i]), fitCount++;
        });
        const scale = fitSum / fitCount;
        if (!(scale > 0)) throw new GatedFitError(`the fitted gate does not separate the classes (mean ${scale} on harmful rows)`);
        let hs = 0;
        let hn = 0;
        let ns = 0;
        let nn = 0;
        for (let i = 0; i < onHeld.length; i++) {
          const g = onHeld[i] / scale;
          if (heldOut.labels[i] === 1 && heldOut.fromEnd[i] === 0) (hs += g), hn++;
          else if (heldOut.labels[i] === 0) (ns += g * g), nn++;
        }
        const harmfulMean = hs / hn;
        const harmlessMeanSquare = ns / nn;
        choices.push({
          ridge,
          positions,
          harmless_rows: harmlessRows,
          harmful_mean: harmfulMean,
          harmless_mean_square: harmlessMeanSquare,
          score: harmfulMean > 0 ? (harmfulMean * harmfulMean) / harmlessMeanSquare : 0,
        });
      }
    }
  }
  return choices.sort((a, b) => b.score - a.score);
}

/**
 * The key solvers of a layer set's matrices for one setting (positions, harmless rows) on the cache's rows,
 * or null when the setting leaves a class without rows. Every setting's rows are a union of groups (class,
 * position from the end), so each matrix's unweighted moments are summed once per group and each setting
 * adds them with its weights (primal form, for matrices narrower than the rows); a wider matrix takes
 * sub-blocks of one Gram matrix (dual form). Solutions are memoised per matrix for M = 1 (GateFitCache).
 */
function settingSolvers(
  cache: GateFitCache,
  layers: number[],
  positions: number,
  harmlessRows: "last" | "spread",
): { setting: string; idx: number[]; matrixRows: number[]; rows: () => WriterSamples; unitKey: (j: number, ridge: number) => Float32Array; solvers: KeySolver[] } | null {
  const fit = cache.fit;
  const n = fit.labels.length;
  const groupRows = cache.groupRows();
  const keep = rowsFor(fit, positions, harmlessRows);
  const idx: number[] = [];
  for (let i = 0; i < n; i++) if (keep(i)) idx.push(i);
  // keep() depends on a row's class and position only, so one row speaks for its group.
  const chosen = [...groupRows.keys()].filter((g) => keep(groupRows.get(g)![0]));
  let nHarmful = 0;
  let nHarmless = 0;
  for (const g of chosen) (g >> 8 ? (nHarmful += groupRows.get(g)!.length) : (nHarmless += groupRows.get(g)!.length));
  if (nHarmful === 0 || nHarmless === 0) return null;
  const harmlessW = (HARMLESS_WEIGHT * nHarmful) / nHarmless;
  const setting = `${positions}|${harmlessRows}`;
  const matrixRows = layers.flatMap((l) => [2 * l, 2 * l + 1]);
  const M = matrixRows.length;
  let selected: WriterSamples | null = null;
  const rows = () => (selected ??= selectRows(fit, keep));
  const units: ((ridge: number) => Float32Array)[] = matrixRows.map((r) => {
    const d = fit.widths[r];
    // Built on the first ridge that is not in the cache (a matrix of an earlier layer set has them all).
    let solveUnit: ((ridge: number) => Float32Array) | null = null;
    const build = (): ((ridge: number) => Float32Array) => {
      if (d >= idx.length) {
        const sel = rows();
        const G = subBlock(cache.gramOf(r), n, idx);
        const sqrtW = Float64Array.from(sel.labels, (y) => Math.sqrt(y ? 1 : harmlessW));
        const rhs = Float64Array.from(sel.labels, (y, i) => sqrtW[i] * y);
        return (ridge) => keyFromGram(G, sel.data[r], idx.length, d, sqrtW, rhs, ridge);
      }
      const C = new Float64Array(d * d);
      const b = new Float64Array(d);
      let trace = 0;
      const moments = cache.momentsOf(r, groupRows);
      for (const g of chosen) {
        const mg = moments.get(g)!;
        const w = g >> 8 ? 1 : harmlessW;
        for (let k = 0; k < C.length; k++) C[k] += w * mg.C[k];
        if (g >> 8) for (let k = 0; k < d; k++) b[k] += mg.b[k];
        trace += w * mg.trace;
      }
      return (ridge) => primalKey(C, b, trace, d, ridge);
    };
    return (ridge: number) => cache.solution(r, setting, ridge, () => (solveUnit ??= build())(ridge));
  });
  const solvers: KeySolver[] = units.map((unit) => (ridge) => Float32Array.from(unit(ridge), (x) => x / M));
  return { setting, idx, matrixRows, rows, unitKey: (j, ridge) => units[j](ridge), solvers };
}

/**
 * fitGatedKeys on the cache's rows selected by (positions, harmless rows), with each matrix's solution
 * memoised: several layer sets that share matrices and a setting solve each matrix once. Equal to
 * fitGatedKeys(selectRows(rows, rowsFor(rows, positions, harmlessRows)), …) up to float32 rounding.
 */
export function fitGatedKeysCached(cache: GateFitCache, opts: { layers: number[]; positions: number; harmlessRows: "last" | "spread"; ridge: number }): GatedFit {
  const setting = settingSolvers(cache, opts.layers, opts.positions, opts.harmlessRows);
  if (!setting) throw new GatedFitError(`the gate needs harmful and harmless rows (none of one class at ${opts.positions} position(s), harmless rows "${opts.harmlessRows}")`);
  return fitGatedKeysForRidges(setting.rows(), { layers: opts.layers, ridges: [opts.ridge], positions: opts.positions, solvers: setting.solvers })[0];
}

/** The rows and columns `idx` of a symmetric n × n matrix. */
function subBlock(G: Float64Array, n: number, idx: number[]): Float64Array {
  const m = idx.length;
  const out = new Float64Array(m * m);
  for (let a = 0; a < m; a++) for (let b = 0; b < m; b++) out[a * m + b] = G[idx[a] * n + idx[b]];
  return out;
}

/** The layers a gated edit writes to, given the direction's layer (see the file's opening comment). */
export function gatedLayers(numLayers: number, directionLayer: number): number[] {
  const first = Math.min(Math.max(1, directionLayer), numLayers - 1);
  return Array.from({ length: numLayers - first }, (_, i) => first + i);
}

export interface GatedFit {
  layers: number[];
  /** Engine rows edited (2l, 2l+1 for each layer), and their keys in the same order. */
  rows: number[];
  keys: Float32Array[];
  positions: number;
  ridge: number;
  harmlessWeight: number;
  /** The one factor every key was multiplied by so that the gate averages 1 on harmful train rows. */
  normalisation: number;
  /** Mean and standard deviation of the gate on the train rows, per class (harmful mean is 1 by construction). */
  train: { harmful: GateStats; harmless: GateStats };
  /** The settings tried on held-out train prompts, best first (when the fit was chosen that way). */
  choices?: GateChoice[];
}

export interface GateStats {
  mean: number;
  std: number;
  max: number;
  n: number;
}

/** Mean and spread of gate values. */
export function gateStats(values: ArrayLike<number>): GateStats {
  const n = values.length;
  let s = 0;
  for (let i = 0; i < n; i++) s += values[i];
  const mean = n ? s / n : NaN;
  let v = 0;
  for (let i = 0; i < n; i++) v += (values[i] - mean) ** 2;
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, values[i]);
  return { mean, std: n > 1 ? Math.sqrt(v / (n - 1)) : 0, max: n ? max : NaN, n };
}

/** Fits one key per edited matrix (see the file's opening comment). */
export function fitGatedKeys(samples: WriterSamples, opts: { layers: number[]; positions?: number; ridge?: number; harmlessWeight?: number }): GatedFit {
  return fitGatedKeysForRidges(samples, { ...opts, ridges: [opts.ridge ?? RIDGE] })[0];
}

/**
 * One matrix's unnormalised ridge key for a ridge strength ρ. The same solution comes from the primal
 * system (XᵀWX + λI)·k = XᵀW·y/M (d × d) or from the dual one (n × n, see keyFromGram); each solver
 * factors the smaller, so the cost is min(n, d)³ per ridge, after one n·min(n, d)·max(n, d) product.
 */
export type KeySolver = (ridge: number) => Float32Array;

/**
 * The solvers of the edited matrices for the rows of `samples` with weights wᵢ and targets yᵢ/M.
 * `grams` (X·Xᵀ per matrix, when the caller has them) serve the dual form.
 */
function keySolvers(samples: WriterSamples, rows: number[], weight: Float64Array, target: Float64Array, grams?: (Float64Array | null)[]): KeySolver[] {
  const n = samples.labels.length;
  const sqrtW = weight.map(Math.sqrt);
  const rhs = Float64Array.from(target, (y, i) => sqrtW[i] * y);
  return rows.map((r, j) => {
    const X = samples.data[r];
    const d = samples.widths[r];
    if (d < n) {
      const { C, b, trace } = weightedMoments(X, n, d, weight, target);
      return (ridge) => primalKey(C, b, trace, d, ridge);
    }
    const G = grams?.[j] ?? gram(X, n, d);
    return (ridge) => keyFromGram(G, X, n, d, sqrtW, rhs, ridge);
  });
}

/** C = Σᵢ wᵢ·xᵢxᵢᵀ (both triangles), b = Σᵢ wᵢ·yᵢ·xᵢ, trace = Σᵢ wᵢ‖xᵢ‖² of a row-major [n, d] matrix. */
export function weightedMoments(X: Float32Array, n: number, d: number, weight: Float64Array, target: Float64Array): { C: Float64Array; b: Float64Array; trace: number } {
  const rows: number[] = [];
  for (let i = 0; i < n; i++) if (weight[i] !== 0) rows.push(i);
  const m = rows.length;
  // Transposed (d vectors of length m): T holds x, U holds w·x, so every entry of C is one dot product.
  const T = new Float64Array(d * m);
  const U = new Float64Array(d * m);
  const b = new Float64Array(d);
  rows.forEach((i, j) => {
    const w = weight[i];
    const wy = w * target[i];
    for (let c = 0; c < d; c++) {
      const x = X[i * d + c];
      T[c * m + j] = x;
      U[c * m + j] = w * x;
      b[c] += wy * x;
    }
  });
  const C = pairwiseDots(U, T, d, m);
  let trace = 0;
  for (let c = 0; c < d; c++) trace += C[c * d + c];
  return { C, b, trace };
}

/**
 * out[a, c] = Σₖ U[a, k]·T[c, k] for c ≥ a, mirrored below the diagonal, for `count` vectors of length
 * `len` (row-major). Blocks of 2 × 2 reuse every load twice; the sum runs over k in order.
 */
export function pairwiseDots(U: Float64Array, T: Float64Array, count: number, len: number): Float64Array {
  const out = new Float64Array(count * count);
  for (let a = 0; a < count; a += 2) {
    const a1 = a + 1 < count;
    const ua = a * len;
    const ub = ua + len;
    for (let c = a; c < count; c += 2) {
      const c1 = c + 1 < count;
      const tc = c * len;
      const td = tc + len;
      let s00 = 0;
      let s01 = 0;
      let s10 = 0;
      let s11 = 0;
      if (a1 && c1) {
        for (let k = 0; k < len; k++) {
          const xa = U[ua + k];
          const xb = U[ub + k];
          const yc = T[tc + k];
          const yd = T[td + k];
          s00 += xa * yc;
          s01 += xa * yd;
          s10 += xb * yc;
          s11 += xb * yd;
        }
      } else {
        for (let k = 0; k < len; k++) {
          s00 += U[ua + k] * T[tc + k];
          if (c1) s01 += U[ua + k] * T[td + k];
          if (a1) s10 += U[ub + k] * T[tc + k];
        }
      }
      out[a * count + c] = s00;
      if (c1) out[a * count + c + 1] = s01;
      if (a1 && c1) out[(a + 1) * count + c + 1] = s11;
      if (a1 && c > a) out[(a + 1) * count + c] = s10;
    }
  }
  for (let i = 0; i < count; i++) for (let j = i + 1; j < count; j++) out[j * count + i] = out[i * count + j];
  return out;
}

/** k = (C + λI)⁻¹·b with λ = ρ·trace/d (the dual's λ: trace(D^½XXᵀD^½) = trace(XᵀWX)). */
export function primalKey(C: Float64Array, b: Float64Array, trace: number, d: number, ridge: number): Float32Array {
  const lambda = (ridge * trace) / d;
  if (!(lambda > 0)) throw new GatedFitError("the writer inputs are all zero: no key can be fitted");
  const A = Float64Array.from(C);
  for (let a = 0; a < d; a++) A[a * d + a] += lambda;
  return Float32Array.from(choleskySolve(A, d, b));
}

/** The fit for each ridge strength; each matrix's system (Gram or moment matrix, the costly part) is built once. */
export function fitGatedKeysForRidges(samples: WriterSamples, opts: { layers: number[]; ridges: number[]; positions?: number; harmlessWeight?: number; grams?: (Float64Array | null)[]; solvers?: KeySolver[] }): GatedFit[] {
  const harmlessWeight = opts.harmlessWeight ?? HARMLESS_WEIGHT;
  const { labels } = samples;
  const n = labels.length;
  let nHarmful = 0;
  for (let i = 0; i < n; i++) nHarmful += labels[i];
  const nHarmless = n - nHarmful;
  if (nHarmful === 0 || nHarmless === 0) throw new GatedFitError(`the gate needs harmful and harmless rows (got ${nHarmful} and ${nHarmless})`);
  const rows = opts.layers.flatMap((l) => [2 * l, 2 * l + 1]);
  for (const r of rows) if (r >= samples.data.length) throw new GatedFitError(`layer ${r >> 1} is not in the samples (${samples.data.length / 2} layers)`);
  const M = rows.length;
  const weight = Float64Array.from(labels, (y) => (y ? 1 : (harmlessWeight * nHarmful) / nHarmless));
  const target = Float64Array.from(labels, (y) => y / M);
  const solvers = opts.solvers ?? keySolvers(samples, rows, weight, target, opts.grams);
  return opts.ridges.map((ridge) => {
    const keys = solvers.map((solve) => solve(ridge));
    // One common factor: g averages 1 on the harmful rows.
    const gate = gateValues(samples, rows, keys);
    let harmfulSum = 0;
    for (let i = 0; i < n; i++) if (labels[i]) harmfulSum += gate[i];
    const harmfulMean = harmfulSum / nHarmful;
    if (!(harmfulMean > 0)) throw new GatedFitError(`the fitted gate does not separate the classes (mean ${harmfulMean} on harmful rows)`);
    const normalisation = 1 / harmfulMean;
    for (const k of keys) for (let j = 0; j < k.length; j++) k[j] *= normalisation;
    for (let i = 0; i < n; i++) gate[i] *= normalisation;
    return {
      layers: [...opts.layers],
      rows,
      keys,
      positions: opts.positions ?? GATE_POSITIONS,
      ridge,
      harmlessWeight,
      normalisation,
      train: {
        harmful: gateStats(gate.filter((_, i) => labels[i] === 1)),
        harmless: gateStats(gate.filter((_, i) => labels[i] === 0)),
      },
    };
  });
}

/** g(x) = Σₘ kₘ·xₘ for every sample row. */
export function gateValues(samples: WriterSamples, rows: number[], keys: Float32Array[]): Float64Array {
  const g = new Float64Array(samples.labels.length);
  rows.forEach((r, j) => {
    const dots = rowDots(samples, r, keys[j], null);
    for (let i = 0; i < g.length; i++) g[i] += dots[i];
  });
  return g;
}

/** k·xᵢ for matrix r's input xᵢ on the sample rows `rows` (all rows when null), in that order. */
function rowDots(samples: WriterSamples, r: number, k: Float32Array, rows: number[] | null): Float64Array {
  const X = samples.data[r];
  const d = samples.widths[r];
  const out = new Float64Array(rows ? rows.length : samples.labels.length);
  for (let i = 0; i < out.length; i++) {
    const base = (rows ? rows[i] : i) * d;
    let acc = 0;
    for (let c = 0; c < d; c++) acc += X[base + c] * k[c];
    out[i] = acc;
  }
  return out;
}

/** X·Xᵀ of a row-major [n, d] matrix (float64; symmetric, both triangles filled). */
export function gram(X: Float32Array, n: number, d: number): Float64Array {
  const X64 = Float64Array.from(X.subarray(0, n * d));
  return pairwiseDots(X64, X64, n, d);
}

/**
 * k = Xᵀ·D^½·β with (D^½XXᵀD^½ + λI)·β = rhs, λ = ρ·Σᵢ wᵢ‖xᵢ‖²/d: the weighted ridge solution
 * argmin Σᵢ wᵢ(k·xᵢ − yᵢ)² + λ‖k‖² when rhs = D^½·y.
 */
export function ridgeKeyDual(X: Float32Array, n: number, d: number, sqrtW: Float64Array, rhs: Float64Array, ridge: number): Float32Array {
  return keyFromGram(gram(X, n, d), X, n, d, sqrtW, rhs, ridge);
}

/** ridgeKeyDual with the Gram matrix X·Xᵀ given. */
function keyFromGram(G: Float64Array, X: Float32Array, n: number, d: number, sqrtW: Float64Array, rhs: Float64Array, ridge: number): Float32Array {
  const A = new Float64Array(n * n);
  let trace = 0;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) A[i * n + j] = G[i * n + j] * sqrtW[i] * sqrtW[j];
    trace += A[i * n + i];
  }
  const lambda = (ridge * trace) / d;
  if (!(lambda > 0)) throw new GatedFitError("the writer inputs are all zero: no key can be fitted");
  for (let i = 0; i < n; i++) A[i * n + i] += lambda;
  const beta = choleskySolve(A, n, rhs);
  const key = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    const a = sqrtW[i] * beta[i];
    if (a === 0) continue;
    const xi = i * d;
    for (let c = 0; c < d; c++) key[c] += a * X[xi + c];
  }
  return Float32Array.from(key);
}

/** Solves A·x = b for a symmetric positive-definite A (row-major n × n; A is not modified). */
export function choleskySolve(A: Float64Array, n: number, b: Float64Array): Float64Array {
  const L = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      // Four partial sums: the dot product of rows i and j of L is the whole cost (n³/6 of them).
      const ri = i * n;
      const rj = j * n;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let k = 0;
      for (; k + 3 < j; k += 4) {
        s0 += L[ri + k] * L[rj + k];
        s1 += L[ri + k + 1] * L[rj + k + 1];
        s2 += L[ri + k + 2] * L[rj + k + 2];
        s3 += L[ri + k + 3] * L[rj + k + 3];
      }
      for (; k < j; k++) s0 += L[ri + k] * L[rj + k];
      const s = A[ri + j] - (s0 + s1 + s2 + s3);
      if (i === j) {
        if (!(s > 0)) throw new GatedFitError(`the ridge system is not positive definite (pivot ${s} at row ${i})`);
        L[i * n + i] = Math.sqrt(s);
      } else L[i * n + j] = s / L[j * n + j];
    }
  }
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = b[i];
    for (let k = 0; k < i; k++) s -= L[i * n + k] * y[k];
    y[i] = s / L[i * n + i];
  }
  const x = new Float64Array(n);
  for (let i = n - 1; i >= 0; i--) {
    let s = y[i];
    for (let k = i + 1; k < n; k++) s -= L[k * n + i] * x[k];
    x[i] = s / L[i * n + i];
  }
  return x;
}

/**
 * The run-time form of the gated edit at strength t: rosi_vectors rows t·ŝ on the edited matrices (0
 * elsewhere) and a key for every matrix (the fitted ones; w̄, i.e. no change, for the others).
 */
export function gatedInterventions(fit: GatedFit, direction: Float32Array, t: number, rowMeans: Float32Array[]): { rosiVectors: Float32Array; editKeys: Float32Array[] } {
  const hidden = direction.length;
  const rosiVectors = new Float32Array(rowMeans.length * hidden);
  const editKeys = rowMeans.slice();
  fit.rows.forEach((r, j) => {
    for (let h = 0; h < hidden; h++) rosiVectors[r * hidden + h] = t * direction[h];
    editKeys[r] = fit.keys[j];
  });
  return { rosiVectors, editKeys };
}

