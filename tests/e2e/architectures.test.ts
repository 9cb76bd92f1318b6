// The whole pipeline on each architecture besides Llama (Qwen2: q/k/v biases and a tied head; Mistral: a
// sliding window shorter than the prompts; Gemma 2: sandwich norms, softcaps, GELU, alternating windows), on a
// random tiny checkpoint of that architecture with the demo organism's tokenizer and chat template. A random
// model refuses nothing under the safety prompt, so the elicitation check is relaxed and the gate is expected
// to fail (exit 3): what is checked is that every step runs on the architecture, and that the checkpoint it
// writes is the recorded edit. Independent check of the written tensors: every tensor but the residual
// writers (o_proj, down_proj) is byte-identical to the source, and each edited writer's change W' − W is the
// rank-one edit ŝ·kᵀ along the recorded direction (edit.safetensors "direction") up to BF16 rounding.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SHAPES, writeChatTokenizer, writeRandomCheckpoint } from "../../bench/random-checkpoint.ts";
import { SafetensorsFile } from "../../engine/safetensors.ts";
import type { RunReport } from "../../report/report.ts";
import { callerEnv, CLI, PIPELINE_TEST_TIMEOUT, REPO_ROOT } from "../helpers/shared.ts";

const work = mkdtempSync(join(tmpdir(), "realign-architectures-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

const SIZES = ["--n-train", "16", "--n-val", "8", "--n-eval", "8", "--max-new-tokens", "16"];

/** ‖D − ŝ·(ŝᵀD)‖ / ‖D‖ for D [rows, cols] row-major and unit ŝ [rows]: 0 when every column of D is along ŝ. */
function offDirection(D: Float64Array, rows: number, cols: number, s: Float32Array): number {
  let total = 0;
  let off = 0;
  for (let c = 0; c < cols; c++) {
    let along = 0;
    for (let r = 0; r < rows; r++) along += s[r] * D[r * cols + c];
    for (let r = 0; r < rows; r++) {
      const d = D[r * cols + c];
      total += d * d;
      off += (d - along * s[r]) ** 2;
    }
  }
  return Math.sqrt(off / total);
}

describe("the pipeline on every supported architecture (random tiny checkpoints)", () => {
  for (const shape of ["qwen2-tiny", "mistral-tiny", "gemma2-tiny"] as const) {
    test(
      `${shape}: elicit → extract → inject → validate run; the gate fails (random model); the checkpoint written is the recorded rank-one edit`,
      async () => {
        const dir = join(work, shape);
        writeRandomCheckpoint(dir, SHAPES[shape]);
        writeChatTokenizer(join(REPO_ROOT, "demo", "organism-llama"), dir, SHAPES[shape].vocab_size);
        const out = join(work, `${shape}-run`);
        const proc = Bun.spawn([process.execPath, CLI, dir, "--out", out, "--device", "cpu", "--no-publish", "--offline", "--yes", "--elicit-min-gap", "0", ...SIZES], {
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

        const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as RunReport;
        expect(report.gate?.passed).toBe(false);
        const layers = SHAPES[shape].num_hidden_layers;
        expect(report.direction!.layer).toBeGreaterThanOrEqual(0);
        expect(report.direction!.layer).toBeLessThan(layers);

        const edit = SafetensorsFile.open(join(out, "inject", "edit.safetensors"));
        const direction = edit.readF32("direction");
        edit.close();
        expect(direction.length).toBe(SHAPES[shape].hidden_size);
        const src = SafetensorsFile.open(join(dir, "model.safetensors"));
        const dst = SafetensorsFile.open(join(out, "inject", "model", "model.safetensors"));
        try {
          expect(dst.names().sort()).toEqual(src.names().sort());
          let edited = 0;
          let worst = 0;
          for (const name of src.names()) {
            const a = src.readBytes(name);
            const b = dst.readBytes(name);
            if (Buffer.from(a).equals(Buffer.from(b))) continue;
            expect(name).toMatch(/\.(self_attn\.o_proj|mlp\.down_proj)\.weight$/);
            const [rows, cols] = src.info(name).shape;
            const W = src.readF32(name);
            const W2 = dst.readF32(name);
            const D = Float64Array.from(W2, (x, i) => x - W[i]);
            // BF16 keeps 8 bits: rounding W + ŝkᵀ back moves each entry by ≤ 2⁻⁹ of it, a few per cent of the edit here.
            const off = offDirection(D, rows, cols, direction);
            worst = Math.max(worst, off);
            expect(off).toBeLessThan(0.25);
            edited++;
          }
          expect(edited).toBeGreaterThan(0);
          console.log(`${shape}: ${edited} writers edited (${report.direction!.method}), W′ − W off the direction by ≤ ${(100 * worst).toFixed(1)} % (BF16 rounding)`);
        } finally {
          src.close();
          dst.close();
        }
      },
      PIPELINE_TEST_TIMEOUT,
    );
  }
});
