// bench's kernel path reads ONNX Runtime's profiler trace: on the tiny hf-golden llama, float32 runs its
// projections as Gemm and int8-dynamic as MatMulIntegerToFloat (no Gemm left but the float32 attention MatMuls),
// every kernel on the CPU EP, and the shares add up to 1. Guards the trace format the summary depends on. ~1 s.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kernelPath } from "../../bench/kernels.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

describe.skipIf(!hasShared())("kernel path (ORT profiler)", () => {
  test("float32 Gemm vs int8-dynamic MatMulIntegerToFloat, CPU EP", async () => {
    const dir = sharedPath("fixtures", "hf-golden", "llama");
    const work = mkdtempSync(join(tmpdir(), "realign-kernels-"));
    try {
      const prompts = [
        [1, 5, 9, 2],
        [1, 7, 3, 4],
      ];
      const f32 = await kernelPath(dir, { device: "cpu", cacheDir: work }, prompts, 2);
      const i8 = await kernelPath(dir, { device: "cpu", cacheDir: work, quantize: { scheme: "int8-dynamic" } }, prompts, 2);
      for (const k of [f32, i8]) {
        expect(k.providers).toEqual(["CPU"]);
        expect(k.ops.reduce((s, o) => s + o.share, 0)).toBeCloseTo(1, 2);
        expect(k.profiled).toEqual({ batch: 2, prompt_tokens: 4, decode_steps: 2 });
      }
      const runs = (k: typeof f32, op: string) => k.ops.filter((o) => o.op === op).reduce((s, o) => s + o.runs, 0);
      // 3 passes (prefill + 2 decode steps) × (5 projections per layer: qkv, o, gate, up, down; + the lm_head)
      const layers = (JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as { num_hidden_layers: number }).num_hidden_layers;
      expect(runs(f32, "Gemm")).toBe(3 * (5 * layers + 1));
      expect(runs(f32, "MatMulIntegerToFloat")).toBe(0);
      expect(runs(i8, "MatMulIntegerToFloat")).toBe(3 * (5 * layers + 1));
      expect(runs(i8, "Gemm")).toBe(0);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});
