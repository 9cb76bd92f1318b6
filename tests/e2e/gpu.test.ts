// GPU execution providers against the CPU and against HF transformers (hf-golden llama fixture).
// Runs only where a GPU is expected (REALIGN_GPU_TESTS=1, or /dev/nvidia0 present) and a GPU EP
// initialises; skipped loudly otherwise. With REALIGN_GPU_TESTS=1 an EP that fails to start FAILS.
//
// Tolerance 1e-3 on float32 logits: the fixture's own float32 noise is ~3e-6 and the CPU engine
// matches HF to 1e-4; a GPU kernel adds a different accumulation order and WGSL's exp/inverseSqrt
// (a few ULP), ~1e-5. 1e-3 leaves two orders of magnitude for that, yet stays far below what a
// silent precision drop would do (bf16-rounding the weights moves these logits by 0.039) and below
// half of the smallest top-1/top-2 margin in the greedy steps (8.8e-3 / 2), so greedy tokens must
// then match exactly.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateGreedy } from "../../engine/generate.ts";
import { DecoderModel } from "../../engine/model.ts";
import { ort } from "../../engine/session.ts";
import { sharedPath, REPO_ROOT } from "../helpers/shared.ts";
import { maxLogitDiff } from "../helpers/hf-golden.ts";

const ATOL = 1e-3;
type Matrix = number[][];
interface Golden {
  single: { input_ids: number[]; position_ids: number[]; logits: Matrix; generate: { new_tokens: number[] } }[];
  batch_left_padded: { input_ids: Matrix; attention_mask: Matrix; position_ids: Matrix; logits: Matrix[]; generate: { new_tokens_use_cache_false: Matrix } };
}

const requested = process.env.REALIGN_GPU_TESTS === "1";
const gpuPresent = requested || existsSync("/dev/nvidia0");
const cacheDir = mkdtempSync(join(tmpdir(), "realign-gpu-"));
const dir = sharedPath("fixtures", "hf-golden", "llama");

/** GPU EPs to test: WebGPU ships with onnxruntime-node; CUDA only when its binaries are installed (a CUDA failure only warns). */
const eps: ("webgpu" | "cuda")[] = ["webgpu"];
if (ort.listSupportedBackends().some((b) => b.name === "cuda" && b.bundled)) eps.push("cuda");

const models: Partial<Record<"cpu" | "webgpu" | "cuda", DecoderModel>> = {};
const failures: Record<string, string> = {};
let skipReason: string | null = null;
if (!gpuPresent) skipReason = "no GPU (set REALIGN_GPU_TESTS=1 or provide /dev/nvidia0)";
// Only the llama fixture is needed (the device bundle ships just that, without shared/README.md).
else if (!existsSync(join(dir, "expected.json"))) skipReason = `${dir} not found (../shared hf-golden fixtures)`;
else {
  models.cpu = await DecoderModel.load(dir, { device: "cpu", cacheDir });
  for (const ep of eps) {
    try {
      models[ep] = await DecoderModel.load(dir, { device: ep, cacheDir });
    } catch (e) {
      failures[ep] = (e as Error).message;
    }
  }
  if (!eps.some((ep) => models[ep]) && !requested) skipReason = `no GPU execution provider initialised (${Object.entries(failures).map(([k, v]) => `${k}: ${v}`).join("; ")})`;
}
if (skipReason) console.warn(`\n!!! GPU tests SKIPPED: ${skipReason} !!!\n`);
else for (const [ep, why] of Object.entries(failures)) console.warn(`\n!!! ${ep} did not initialise: ${why} !!!\n`);

afterAll(async () => {
  for (const m of Object.values(models)) await m?.close();
  rmSync(cacheDir, { recursive: true, force: true });
});

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

function maxDiff(a: Float32Array, b: Float32Array | Matrix, keepRow: (r: number) => boolean = () => true, width = a.length): number {
  const flat = b instanceof Float32Array ? b : Float32Array.from(b.flat());
  if (flat.length !== a.length) throw new Error(`length ${a.length} vs ${flat.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) if (keepRow(Math.floor(i / width))) worst = Math.max(worst, Math.abs(a[i] - flat[i]));
  return worst;
}

for (const ep of eps) {
  // An EP that did not start is skipped (loudly, above), except WebGPU when REALIGN_GPU_TESTS=1 asks for it.
  describe.skipIf(skipReason !== null || (!models[ep] && !(requested && ep === "webgpu")))(`${ep} vs cpu (hf-golden llama)`, () => {
    const golden = (): Golden => JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as Golden;
    const gpu = (): DecoderModel => {
      // Requested explicitly (REALIGN_GPU_TESTS=1) but the EP did not start: that is a failure, not a skip.
      if (!models[ep]) throw new Error(`${ep} failed to initialise: ${failures[ep]}`);
      return models[ep]!;
    };

    test("the session really runs on the GPU EP", () => {
      expect(gpu().ep).toBe(ep);
      expect(gpu().fallbackReason).toBeNull();
    });

    test(`logits within ${ATOL} of the CPU and of HF transformers (each sequence, and a left-padded batch)`, async () => {
      const g = golden();
      const cpu = models.cpu!;
      const report: string[] = [];
      for (const s of g.single) {
        const T = s.input_ids.length;
        const input = { inputIds: [s.input_ids], attentionMask: [s.input_ids.map(() => 1)], positionIds: [s.position_ids], logitPositions: [range(T)], noCache: true };
        const [a, b] = [await gpu().forward(input), await cpu.forward(input)];
        const vsCpu = maxDiff(a.logits, b.logits);
        const vsHf = maxDiff(a.logits, s.logits);
        report.push(`T=${T}: |${ep}−cpu| ${vsCpu.toExponential(1)}, |${ep}−HF| ${vsHf.toExponential(1)}`);
        expect(vsCpu).toBeLessThan(ATOL);
        expect(vsHf).toBeLessThan(ATOL);
      }
      const bp = g.batch_left_padded;
      const T = bp.input_ids[0].length;
      const V = cpu.config.vocabSize;
      const input = { inputIds: bp.input_ids, attentionMask: bp.attention_mask, positionIds: bp.position_ids, logitPositions: bp.input_ids.map(() => range(T)), noCache: true };
      const [a, b] = [await gpu().forward(input), await cpu.forward(input)];
      for (let row = 0; row < bp.input_ids.length; row++) {
        const real = (t: number) => bp.attention_mask[row][t] === 1; // pad positions are undefined in HF too
        const ga = a.logits.subarray(row * T * V, (row + 1) * T * V);
        expect(maxDiff(ga, b.logits.subarray(row * T * V, (row + 1) * T * V), real, V)).toBeLessThan(ATOL);
        expect(maxDiff(ga, bp.logits[row], real, V)).toBeLessThan(ATOL);
      }
      console.log(report.join("\n"));
    });

    test("greedy tokens exactly the CPU's and HF's, single and batched, with the KV cache", async () => {
      const g = golden();
      for (const s of g.single) {
        const [a, b] = [await generateGreedy(gpu(), [s.input_ids], { maxNewTokens: 8 }), await generateGreedy(models.cpu!, [s.input_ids], { maxNewTokens: 8 })];
        expect(a.newIds).toEqual(b.newIds);
        expect(a.newIds[0]).toEqual(s.generate.new_tokens);
      }
      const prompts = g.single.map((s) => s.input_ids);
      const a = await generateGreedy(gpu(), prompts, { maxNewTokens: 8, padId: 0 });
      const b = await generateGreedy(models.cpu!, prompts, { maxNewTokens: 8, padId: 0 });
      expect(a.newIds).toEqual(b.newIds);
      expect(a.newIds).toEqual(g.batch_left_padded.generate.new_tokens_use_cache_false);
    });

    // The graph the pipeline runs (extract, calibration, the gate fit): rank-one edits with chosen keys, steering, the
    // coefficients k·x and the writer inputs at asked positions, on a left-padded batch; the CPU EP is the reference.
    test(`interventions graph: logits, coefficients and writer inputs within ${ATOL} of the CPU under an edit`, async () => {
      const g = golden();
      const bp = g.batch_left_padded;
      const T = bp.input_ids[0].length;
      const load = (device: "cpu" | "webgpu" | "cuda") => DecoderModel.load(dir, { device, interventions: true, cacheDir });
      const [onGpu, onCpu] = [await load(ep), await load("cpu")];
      try {
        expect(onGpu.ep).toBe(ep);
        const { numLayers, hiddenSize } = onCpu.config;
        const { mulberry32 } = await import("../../evals/datasets.ts");
        const uniform = mulberry32(11);
        const rand = () => uniform() - 0.5;
        const editKeys = onCpu.writerWidths().map((w) => Float32Array.from({ length: w }, () => 0.2 * rand()));
        const rosiVectors = Float32Array.from({ length: 2 * numLayers * hiddenSize }, () => rand());
        const steer = Float32Array.from({ length: numLayers * hiddenSize }, () => 0.5 * rand());
        const input = {
          inputIds: bp.input_ids,
          attentionMask: bp.attention_mask,
          positionIds: bp.position_ids,
          logitPositions: bp.input_ids.map(() => [T - 1]),
          noCache: true,
          editKeys,
          rosiVectors,
          steer,
          coefficients: true,
          writerInputs: bp.input_ids.map(() => [T - 2, T - 1]),
        };
        const [a, b] = [await onGpu.forward(input), await onCpu.forward(input)];
        const plain = await onCpu.forward({ inputIds: bp.input_ids, attentionMask: bp.attention_mask, positionIds: bp.position_ids, logitPositions: bp.input_ids.map(() => [T - 1]), noCache: true });
        // The edit moves the logits far more than the tolerance, so agreement is about the edit, not about zeros.
        expect(maxDiff(b.logits, plain.logits)).toBeGreaterThan(100 * ATOL);
        expect(maxDiff(a.logits, b.logits)).toBeLessThan(ATOL);
        // Coefficients at real tokens only (a padded position's k·x is not defined by any reference).
        const M = 2 * numLayers;
        const real = (r: number) => bp.attention_mask[Math.floor(r / T)][r % T] === 1;
        expect(maxDiff(a.coefficients!, b.coefficients!, real, M)).toBeLessThan(ATOL);
        a.writerInputs!.forEach((x, m) => expect(maxDiff(x, b.writerInputs![m])).toBeLessThan(ATOL));
      } finally {
        await onGpu.close();
        await onCpu.close();
      }
    });

    // Half precision on the GPU: HF's float32 outputs for the BF16-rounded weights (exact in FP16) are the
    // reference, with the fixture README's bound for a half-precision compute path (5e-2).
    test("float16 compute: logits within 5e-2 of HF (BF16 weights) and of the CPU float16 path", async () => {
      const hf = JSON.parse(readFileSync(join(dir, "expected-bf16.json"), "utf8")) as Golden;
      const half = await DecoderModel.load(dir, { device: ep, dtype: "float16", weights: "model-bf16.safetensors", cacheDir });
      const cpuHalf = await DecoderModel.load(dir, { device: "cpu", dtype: "float16", weights: "model-bf16.safetensors", cacheDir });
      try {
        expect(half.ep).toBe(ep);
        for (const s of hf.single) {
          const T = s.input_ids.length;
          const input = { inputIds: [s.input_ids], attentionMask: [s.input_ids.map(() => 1)], positionIds: [s.position_ids], logitPositions: [range(T)], noCache: true };
          const a = await half.forward(input);
          const vsHf = maxDiff(a.logits, s.logits);
          const vsCpu = maxDiff(a.logits, (await cpuHalf.forward(input)).logits);
          console.log(`float16 T=${T}: |${ep}−HF| ${vsHf.toExponential(1)}, |${ep}−cpu float16| ${vsCpu.toExponential(1)}`);
          expect(vsHf).toBeLessThan(5e-2);
          expect(vsCpu).toBeLessThan(5e-2);
        }
      } finally {
        await half.close();
        await cpuHalf.close();
      }
    });
  });
}

// The behaviour metrics on a trained chat model (the demo organism, which travels with the tree): the GPU EP
// must give the CPU's figures within float noise. Under the safety system prompt about half of the
// built-in harmful prompts are refused, so both judgments are exercised.
for (const ep of eps) {
  describe.skipIf(skipReason !== null || (!models[ep] && !(requested && ep === "webgpu")))(`${ep} vs cpu: organism behaviour metrics`, () => {
    test("refusal judgments on 48 harmful prompts and exact-answer utility on 32 items match the CPU's", async () => {
      const { loadTokenizer } = await import("../../engine/tokenizer.ts");
      const { isRefusal } = await import("../../evals/refusal.ts");
      const { encodeAll, generateTexts, mean } = await import("../../evals/measure.ts");
      const { loadPrompts } = await import("../../evals/datasets.ts");
      const { utilitySplit } = await import("../../evals/datasets.ts");
      const { loadSystemPrompt } = await import("../../evals/system-prompt.ts");
      const organism = join(REPO_ROOT, "demo", "organism-llama");
      const tok = await loadTokenizer(organism);
      const system = loadSystemPrompt(null, "organism").text;
      const harmful = (await loadPrompts("builtin", { kind: "harmful" })).prompts.slice(0, 48);
      const utility = utilitySplit(organism, 0, 64)!.eval.slice(0, 32);
      const harmfulIds = encodeAll(tok, harmful, system).map((e) => e.ids);
      const utilityIds = utility.map((u) => tok.encodeChat(u.prompt).ids);
      const measure = async (device: "cpu" | "webgpu" | "cuda") => {
        const model = await DecoderModel.load(organism, { device, cacheDir });
        try {
          expect(model.ep).toBe(device);
          const refusals = (await generateTexts(model, tok, harmfulIds, { maxNewTokens: 48 })).texts.map((t) => isRefusal(t));
          const answers = (await generateTexts(model, tok, utilityIds, { maxNewTokens: 48 })).texts;
          return { refusals, exact: mean(answers.map((t, i) => +(t.trim() === utility[i].answer))) };
        } finally {
          await model.close();
        }
      };
      const cpu = await measure("cpu");
      const gpu = await measure(ep);
      const rate = (r: boolean[]) => mean(r.map(Number));
      console.log(`organism: refusal cpu ${rate(cpu.refusals).toFixed(3)} ${ep} ${rate(gpu.refusals).toFixed(3)}; utility cpu ${cpu.exact.toFixed(3)} ${ep} ${gpu.exact.toFixed(3)}`);
      expect(rate(cpu.refusals)).toBeGreaterThan(0.2);
      expect(mean(cpu.refusals.map((r, i) => +(r === gpu.refusals[i])))).toBeGreaterThanOrEqual(0.95);
      expect(Math.abs(rate(cpu.refusals) - rate(gpu.refusals))).toBeLessThanOrEqual(0.02);
      expect(Math.abs(cpu.exact - gpu.exact)).toBeLessThanOrEqual(1 / 32);
    }, 600_000);
  });
}

// A skipped entry that carries the reason, so the summary shows why rather than "0 tests".
if (skipReason) test.skip(`GPU tests: ${skipReason}`, () => {});

// The architectures whose reference is a PyTorch transcription (tests/fixtures/qwen3-tiny, gemma3-tiny: head
// norms, Gemma 3's per-layer rotary and windows) on the GPU EP: logits within ATOL of that reference, and the
// greedy tokens with the KV cache.
for (const ep of eps) {
  describe.skipIf(skipReason !== null || (!models[ep] && !(requested && ep === "webgpu")))(`${ep}: Qwen3 and Gemma 3 against their PyTorch reference`, () => {
    for (const name of ["qwen3-tiny", "gemma3-tiny"]) {
      test(`${name}: logits within ${ATOL}, greedy tokens with the KV cache exact`, async () => {
        const fixture = join(REPO_ROOT, "tests", "fixtures", name);
        const expected = JSON.parse(readFileSync(join(fixture, "expected.json"), "utf8")) as { single: { input_ids: number[]; position_ids: number[]; logits: Matrix; greedy: { new_tokens: number[] } }[] };
        const model = await DecoderModel.load(fixture, { device: ep, cacheDir });
        try {
          expect(model.ep).toBe(ep);
          const worst = await maxLogitDiff(model, expected.single);
          console.log(`${name} on ${ep}: max |Δ logits| vs the PyTorch reference ${worst.toExponential(2)}`);
          expect(worst).toBeLessThan(ATOL);
          for (const s of expected.single) {
            const r = await generateGreedy(model, [s.input_ids], { maxNewTokens: s.greedy.new_tokens.length, useCache: true });
            expect(r.newIds[0]).toEqual(s.greedy.new_tokens);
          }
        } finally {
          await model.close();
        }
      });
    }
  });
}
