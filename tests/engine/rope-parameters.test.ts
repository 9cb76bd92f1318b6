// Configs written by transformers 5.x carry θ and the rotary scaling in one `rope_parameters` object
// instead of `rope_theta` and `rope_scaling`. The hf-golden checkpoints, their configs rewritten that way,
// must still give HF's logits (a config read without it would run at θ 10000 and fail by far more than
// the tolerance: qwen2's θ is 10⁶, llama3_rope's 5·10⁵ with llama3 scaling); and the forms that cannot be
// read say so. Gemma 3's per-attention-type form (a rotary for the sliding layers, another for the global
// ones) is read as its 4.x keys are (tests/fixtures/gemma3-tiny, a PyTorch reference).
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { readDecoderConfig } from "../../engine/architectures.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";
import { maxLogitDiff } from "../helpers/hf-golden.ts";

const ATOL = 1e-4;
const work = mkdtempSync(join(tmpdir(), "realign-rope-parameters-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

type Json = Record<string, unknown>;

/** The 5.x form of a 4.x config: rope_theta and rope_scaling moved into rope_parameters. */
function toV5(cfg: Json): Json {
  const { rope_theta, rope_scaling, ...rest } = cfg;
  const scaling = (rope_scaling ?? { rope_type: "default" }) as Json;
  return { ...rest, rope_parameters: { ...scaling, rope_theta }, transformers_version: "5.0.0" };
}

function fixtureConfig(name: string): Json {
  return JSON.parse(readFileSync(sharedPath("fixtures", "hf-golden", name, "config.json"), "utf8"));
}

/** A fixture's weights under `config` (in a copy): its largest |Δlogit| against the fixture's expected.json. */
async function logitDiffWithConfig(src: string, name: string, config: Json): Promise<number> {
  const dir = join(work, name);
  mkdirSync(dir);
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  copyFileSync(join(src, "model.safetensors"), join(dir, "model.safetensors"));
  const expected = JSON.parse(readFileSync(join(src, "expected.json"), "utf8")) as { single: { input_ids: number[]; position_ids: number[]; logits: number[][] }[] };
  const model = await DecoderModel.load(dir, { device: "cpu", cacheDir: join(work, "cache") });
  try {
    return await maxLogitDiff(model, expected.single);
  } finally {
    await model.close();
  }
}

describe.skipIf(!hasShared())("rope_parameters (transformers 5.x configs)", () => {
  for (const name of ["qwen2", "llama3_rope"]) {
    test(`${name}: the rewritten config reads the same rotary settings and gives HF's logits`, async () => {
      const v4 = fixtureConfig(name);
      const a = readDecoderConfig(v4);
      const b = readDecoderConfig(toV5(v4));
      expect(b.ropeTheta).toBe(a.ropeTheta);
      expect(b.ropeScaling).toEqual(a.ropeScaling);
      expect(b.ropeTheta).not.toBe(10000);
      expect(await logitDiffWithConfig(sharedPath("fixtures", "hf-golden", name), name, toV5(v4))).toBeLessThan(ATOL);
    });
  }

  test("gemma3_text: rope_parameters per attention type (full / sliding) read as rope_theta + rope_scaling + rope_local_base_freq, same logits", async () => {
    const src = join(import.meta.dir, "..", "fixtures", "gemma3-tiny");
    const v4 = JSON.parse(readFileSync(join(src, "config.json"), "utf8")) as Json;
    const { rope_theta, rope_scaling, rope_local_base_freq, ...rest } = v4;
    const v5 = {
      ...rest,
      rope_parameters: { full_attention: { ...(rope_scaling as Json), rope_theta }, sliding_attention: { rope_type: "default", rope_theta: rope_local_base_freq } },
    };
    const a = readDecoderConfig(v4);
    const b = readDecoderConfig(v5);
    expect([b.ropeTheta, b.ropeScaling, b.localRope]).toEqual([a.ropeTheta, a.ropeScaling, a.localRope]);
    expect(b.localRope!.theta).toBe(10000);
    expect(b.ropeScaling).toEqual({ type: "linear", factor: 4 });
    expect(await logitDiffWithConfig(src, "gemma3", v5)).toBeLessThan(ATOL);
  });

  test("θ or the scaling given both ways must agree; per-type parameters and unknown types are refused", () => {
    const v4 = fixtureConfig("llama3_rope");
    const v5 = toV5(v4);
    expect(readDecoderConfig({ ...v5, rope_theta: 500000 }).ropeTheta).toBe(500000);
    expect(() => readDecoderConfig({ ...v5, rope_theta: 10000 })).toThrow(/"rope_theta" 10000 disagrees with "rope_parameters.rope_theta" 500000/);
    expect(readDecoderConfig({ ...v5, rope_scaling: v4.rope_scaling }).ropeScaling).toEqual(readDecoderConfig(v4).ropeScaling);
    expect(() => readDecoderConfig({ ...v5, rope_scaling: { ...(v4.rope_scaling as Json), factor: 4 } })).toThrow(/"rope_scaling" .* disagrees with "rope_parameters"/);
    expect(() => readDecoderConfig({ ...v5, rope_parameters: { full_attention: { rope_type: "default", rope_theta: 1e6 }, sliding_attention: { rope_type: "default", rope_theta: 1e4 } } })).toThrow(
      /"rope_parameters" per attention type \(full_attention, sliding_attention\) is not supported/,
    );
    expect(() => readDecoderConfig({ ...v5, rope_parameters: { rope_type: "yarn", rope_theta: 1e6, factor: 4 } })).toThrow(/rope_parameters type "yarn" is not supported/);
    expect(() => readDecoderConfig({ ...v5, rope_parameters: "1e6" })).toThrow(/"rope_parameters" must be an object/);
    // Without a type, rope_parameters is the plain rotary; rope_scaling without one stays an error.
    expect(readDecoderConfig({ ...v5, rope_parameters: { rope_theta: 1e6 } }).ropeScaling).toEqual({ type: "none" });
    expect(() => readDecoderConfig({ ...v4, rope_scaling: { factor: 8 } })).toThrow(/rope_scaling type "undefined" is not supported/);
  });
});
