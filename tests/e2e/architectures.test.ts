// The whole pipeline on each architecture besides Llama (Qwen2: q/k/v biases and a tied head; Mistral: a
// sliding window shorter than the prompts; Gemma 2: sandwich norms, softcaps, GELU, alternating windows, and a
// chat template without a system role, as Gemma's; Gemma 3: head norms, sliding layers with their own rotary,
// and attention 512 wide in a 256-wide model, so o_proj's key w̄ is not hidden-sized), on a
// random tiny checkpoint of that architecture with the demo organism's tokenizer and chat template. A random
// model refuses nothing under the safety prompt, so the elicitation check is relaxed and the gate is expected
// to fail (exit 3): what is checked is that every step runs on the architecture, and that the checkpoint it
// writes is the recorded edit. Independent check of the written tensors: every tensor but the edited residual
// writers (o_proj, down_proj) is byte-identical to the source, and each edited writer is W + v·kᵀ, recomputed
// here from the source tensor and the recorded α, per-matrix weight, direction and key (w̄ when none), within
// one BF16 rounding (half its spacing).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SHAPES, writeChatTokenizer, writeRandomCheckpoint } from "../../bench/random-checkpoint.ts";
import { readDecoderConfig } from "../../engine/architectures.ts";
import { SafetensorsFile } from "../../engine/safetensors.ts";
import { editedMatrices } from "../../rosi/edit.ts";
import type { RunReport } from "../../report/report.ts";
import { callerEnv, CLI, PIPELINE_TEST_TIMEOUT, REPO_ROOT } from "../helpers/shared.ts";

const work = mkdtempSync(join(tmpdir(), "realign-architectures-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

// One safety prompt (auto's trial of each is tested on the organisms): a random model refuses under none.
const SIZES = ["--n-train", "16", "--n-val", "8", "--n-eval", "8", "--max-new-tokens", "16", "--system-prompt", join(REPO_ROOT, "system-prompts", "short.md")];
/** Smaller for the plain edits (keeps the suite under its 10 minutes); the gated run keeps SIZES, since its key fit holds part of the train prompts out. */
const SMALL = ["--n-train", "8", "--n-val", "4", "--n-eval", "4", "--max-new-tokens", "8", "--system-prompt", join(REPO_ROOT, "system-prompts", "short.md")];

/** Gemma's chat-template structure, written for this test: turns as text markers, a system message raises. */
const GEMMA_STYLE_TEMPLATE =
  "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
  "{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}" +
  "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/**
 * The largest |W′ − (W + v·kᵀ)| over the entries of a writer, in units of BF16's spacing at each entry (at most
 * 2⁻⁷ of its magnitude; rounding once moves an entry by half of that): v = α·weight·ŝ as recorded (calibration.json, edit.safetensors), k the recorded key or,
 * without one, w̄ (the mean of W's rows, summed in float64, rounded to float32). ≤ 1/2 means the tensor is the recorded edit, rounded once.
 */
function editError(W: Float32Array, W2: Float32Array, rows: number, cols: number, v: Float64Array, key: Float32Array | null): number {
  const k = key ? Float64Array.from(key) : new Float64Array(cols);
  if (!key) {
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) k[c] += W[r * cols + c] / rows;
    // A key is float32 (as the edit writes it): where W + v·k nearly cancels, k's last bit shows in W′.
    for (let c = 0; c < cols; c++) k[c] = Math.fround(k[c]);
  }
  let worst = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const expected = W[r * cols + c] + v[r] * k[c];
      const step = Math.max(Math.abs(expected) * 2 ** -7, 1e-30);
      worst = Math.max(worst, Math.abs(W2[r * cols + c] - expected) / step);
    }
  }
  return worst;
}

/**
 * One edit method per architecture, so that each kind of key is checked in the written tensors (gated: a fitted
 * key per matrix; rosi and rosi-mv: w̄) at a third of auto's cost (auto calibrates every family; the organism
 * and demo tests run it).
 */
const METHODS = { "qwen2-tiny": "gated", "mistral-tiny": "rosi", "gemma2-tiny": "rosi-mv", "gemma3-tiny": "rosi" } as const;

describe("the pipeline on every supported architecture (random tiny checkpoints)", () => {
  for (const shape of ["qwen2-tiny", "mistral-tiny", "gemma2-tiny", "gemma3-tiny"] as const) {
    test(
      `${shape} (--method ${METHODS[shape]}): elicit → extract → inject → validate run; the gate fails (random model); the checkpoint written is the recorded rank-one edit`,
      async () => {
        const dir = join(work, shape);
        writeRandomCheckpoint(dir, SHAPES[shape]);
        writeChatTokenizer(join(REPO_ROOT, "demo", "organism-llama"), dir, SHAPES[shape].vocab_size);
        if (shape === "gemma2-tiny") {
          // Gemma's kind of template: no system role (it raises), so the safety prompt must go into the user turn.
          const file = join(dir, "tokenizer_config.json");
          writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, "utf8")), chat_template: GEMMA_STYLE_TEMPLATE }));
        }
        const out = join(work, `${shape}-run`);
        const proc = Bun.spawn([process.execPath, CLI, dir, "--out", out, "--device", "cpu", "--no-publish", "--offline", "--yes", "--elicit-min-gap", "0", "--method", METHODS[shape], ...(METHODS[shape] === "gated" ? SIZES : SMALL)], {
          cwd: REPO_ROOT,
          env: { ...callerEnv(), REALIGN_CACHE: join(work, "cache") },
          stdout: "pipe",
          stderr: "pipe",
        });
        const text = (await new Response(proc.stdout).text()) + (await new Response(proc.stderr).text());
        const code = await proc.exited;
        if (code !== 3) console.error(text.slice(-3000));
        expect(code).toBe(3);
        expect(text).toContain("gate failed");
        expect(text).not.toMatch(/\n\s+at .*\.ts:\d+/); // no stack trace
        if (shape === "gemma2-tiny") expect(text).toContain("the chat template has no system role: the safety prompt is prepended to the user turn");

        const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as RunReport;
        expect(report.gate?.passed).toBe(false);
        const layers = SHAPES[shape].num_hidden_layers;
        expect(report.direction!.layer).toBeGreaterThanOrEqual(0);
        expect(report.direction!.layer).toBeLessThan(layers);

        const calibration = JSON.parse(readFileSync(join(out, "inject", "calibration.json"), "utf8")) as { alpha: number; weights: number[]; method: string };
        expect(calibration.method).toBe(METHODS[shape]);
        const edit = SafetensorsFile.open(join(out, "inject", "edit.safetensors"));
        const direction = edit.readF32("direction");
        const keyOf = (name: string) => (edit.names().includes(`key.${name}`) ? edit.readF32(`key.${name}`) : null);
        expect(direction.length).toBe(SHAPES[shape].hidden_size);
        // Tensor name → engine row (2l o_proj, 2l+1 down_proj), the order of calibration.json's weights.
        const cfg = readDecoderConfig(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")));
        const writers = new Map(Array.from({ length: layers }, (_, l) => editedMatrices(cfg, l).map((name, k) => [name, 2 * l + k] as const)).flat());
        const src = SafetensorsFile.open(join(dir, "model.safetensors"));
        const dst = SafetensorsFile.open(join(out, "inject", "model", "model.safetensors"));
        try {
          expect(dst.names().sort()).toEqual(src.names().sort());
          let edited = 0;
          let worst = 0;
          for (const name of src.names()) {
            const row = writers.get(name);
            const same = Buffer.from(src.readBytes(name)).equals(Buffer.from(dst.readBytes(name)));
            if (row === undefined || calibration.weights[row] === 0) {
              expect({ name, same }).toEqual({ name, same: true });
              continue;
            }
            const [rows, cols] = src.info(name).shape;
            const v = Float64Array.from(Float32Array.from(direction, (x) => calibration.alpha * calibration.weights[row] * x));
            const err = editError(src.readF32(name), dst.readF32(name), rows, cols, v, keyOf(name));
            worst = Math.max(worst, err);
            expect(err).toBeLessThanOrEqual(0.5 + 1e-3);
            edited++;
          }
          expect(edited).toBeGreaterThan(0);
          console.log(`${shape}: ${edited} writers edited (${calibration.method}, α ${calibration.alpha.toPrecision(4)}), max |W′ − (W + v·kᵀ)| ${worst.toFixed(2)} BF16 steps`);
        } finally {
          src.close();
          dst.close();
          edit.close();
        }
      },
      PIPELINE_TEST_TIMEOUT,
    );
  }
});
