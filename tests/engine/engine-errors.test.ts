// Clear errors for checkpoints and devices the engine cannot run.
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { openSession, DeviceError, ort } from "../../engine/session.ts";
import { writeSafetensors } from "../../engine/safetensors.ts";
import { SafetensorsFile } from "../../engine/safetensors.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const work = mkdtempSync(join(tmpdir(), "realign-engine-errors-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A copy of the hf-golden llama checkpoint with its config edited. */
function variant(name: string, edit: (cfg: Record<string, unknown>) => void, dropTensor?: string): string {
  const src = sharedPath("fixtures", "hf-golden", "llama");
  const dir = join(work, name);
  mkdirSync(dir);
  const cfg = JSON.parse(readFileSync(join(src, "config.json"), "utf8"));
  edit(cfg);
  writeFileSync(join(dir, "config.json"), JSON.stringify(cfg));
  if (!dropTensor) copyFileSync(join(src, "model.safetensors"), join(dir, "model.safetensors"));
  else {
    const f = SafetensorsFile.open(join(src, "model.safetensors"));
    writeSafetensors(join(dir, "model.safetensors"), f.names().filter((n) => n !== dropTensor).map((n) => ({ ...f.info(n), data: f.readBytes(n) })));
    f.close();
  }
  return dir;
}

describe.skipIf(!hasShared())("engine errors", () => {
  const load = (dir: string) => DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache") });

  test("unknown model_type names it and lists the supported ones", async () => {
    await expect(load(variant("falcon", (c) => (c.model_type = "falcon")))).rejects.toThrow(/model_type "falcon" is not supported; supported: llama, qwen2, qwen3, mistral, gemma2, gemma3_text/);
  });

  test("multimodal Gemma 3 says to use its text decoder", async () => {
    await expect(load(variant("gemma3-vlm", (c) => (c.model_type = "gemma3")))).rejects.toThrow(/Gemma3ForConditionalGeneration.*gemma3_text checkpoint/);
  });

  test("a config that needs trust_remote_code is refused", async () => {
    await expect(load(variant("remote", (c) => (c.auto_map = { AutoModelForCausalLM: "modeling_x.XForCausalLM" })))).rejects.toThrow(/auto_map.*trust_remote_code/);
  });

  test("a missing tensor is named", async () => {
    await expect(load(variant("missing", () => {}, "model.layers.1.mlp.down_proj.weight"))).rejects.toThrow(/missing tensor "model.layers.1.mlp.down_proj.weight"/);
  });

  test("a tensor whose shape disagrees with config.json is named", async () => {
    await expect(load(variant("shape", (c) => (c.intermediate_size = 96)))).rejects.toThrow(/gate_proj.weight" has shape \[128,64\], expected \[96,64\]/);
  });

  test("unsupported rope scaling is a clear error", async () => {
    await expect(load(variant("yarn", (c) => (c.rope_scaling = { rope_type: "yarn", factor: 4 })))).rejects.toThrow(/rope_scaling type "yarn" is not supported/);
  });

  // RotaryEmbedding reads row p of the rotary table without a bounds check: a negative or fractional position is
  // refused before the run, and the model still answers the next, valid call.
  test("a position id below 0 or not whole is a clear error, before ONNX Runtime sees it", async () => {
    const model = await load(sharedPath("fixtures", "hf-golden", "llama"));
    try {
      const feed = (positions: number[]) => ({
        inputIds: [[1, 2, 3]],
        attentionMask: [[1, 1, 1]],
        positionIds: [positions],
        logitPositions: [[2]],
        noCache: true,
      });
      await expect(model.forward(feed([-1, 0, 1]))).rejects.toThrow(/position_ids must be whole numbers ≥ 0; row 0 has -1 at index 0/);
      await expect(model.forward(feed([0, 1.5, 2]))).rejects.toThrow(/row 0 has 1.5 at index 1/);
      const ok = await model.forward(feed([0, 1, 2]));
      expect(ok.logits.length).toBe(model.config.vocabSize);
    } finally {
      await model.close();
    }
  });
});

const cudaInstalled = ort.listSupportedBackends().some((b) => b.name === "cuda" && b.bundled);
test.skipIf(cudaInstalled)("--device cuda without the CUDA EP says how to install it", async () => {
  const probe = join(work, "probe.onnx");
  writeFileSync(probe, new Uint8Array(0));
  const err = await openSession(probe, "cuda").catch((e: unknown) => e);
  expect(err).toBeInstanceOf(DeviceError);
  expect(String((err as Error).message)).toContain("ONNXRUNTIME_NODE_INSTALL=cuda12");
});

test("an unknown device is refused", async () => {
  await expect(openSession(join(work, "x.onnx"), "tpu" as never)).rejects.toThrow(/unknown device "tpu"/);
});
