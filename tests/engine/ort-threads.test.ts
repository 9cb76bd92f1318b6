// REALIGN_ORT_THREADS / REALIGN_ORT_SPIN / REALIGN_ORT_PREPACK: intra-op threads of CPU sessions, whether idle
// ones spin, and whether weights are packed (prepackWeights decides when unset).
// A bad value is a usage error naming the variable; every valid setting gives HF transformers' logits
// (../shared/fixtures/hf-golden/llama, 1e-4), whatever the suite itself runs with (npm test sets one thread).
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { ortPrepack, ortSpin, ortThreads, PREPACK_ENV, PREPACK_MEMORY_SHARE, prepackWeights, SPIN_ENV, THREADS_ENV } from "../../engine/session.ts";
import { UsageError } from "../../util/errors.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";
import { maxLogitDiff } from "../helpers/hf-golden.ts";

describe("REALIGN_ORT_THREADS", () => {
  test("unset or empty: ONNX Runtime's default; a positive whole number: that many threads", () => {
    expect(ortThreads({})).toBeNull();
    expect(ortThreads({ [THREADS_ENV]: " " })).toBeNull();
    expect(ortThreads({ [THREADS_ENV]: "1" })).toBe(1);
    expect(ortThreads({ [THREADS_ENV]: " 3 " })).toBe(3);
  });

  test("anything else is a usage error that names the variable and the value", () => {
    for (const bad of ["0", "-2", "1.5", "two", "2x"]) {
      expect(() => ortThreads({ [THREADS_ENV]: bad })).toThrow(UsageError);
      expect(() => ortThreads({ [THREADS_ENV]: bad })).toThrow(`REALIGN_ORT_THREADS must be a positive whole number of threads, got "${bad}"`);
    }
  });

  test("REALIGN_ORT_SPIN: unset or empty: the default; 0 or 1; anything else a usage error", () => {
    expect(ortSpin({})).toBeNull();
    expect(ortSpin({ [SPIN_ENV]: "" })).toBeNull();
    expect(ortSpin({ [SPIN_ENV]: "0" })).toBe(false);
    expect(ortSpin({ [SPIN_ENV]: " 1" })).toBe(true);
    for (const bad of ["yes", "2", "off"]) expect(() => ortSpin({ [SPIN_ENV]: bad })).toThrow(`REALIGN_ORT_SPIN must be 0 (idle threads sleep) or 1 (they spin), got "${bad}"`);
  });

  test("REALIGN_ORT_PREPACK: 0 or 1 decide; unset, float weights are packed when the copy fits in a tenth of the memory, quantised ones always", () => {
    expect(ortPrepack({})).toBeNull();
    expect(ortPrepack({ [PREPACK_ENV]: " 1 " })).toBe(true);
    expect(ortPrepack({ [PREPACK_ENV]: "0" })).toBe(false);
    for (const bad of ["on", "2", "true"]) expect(() => ortPrepack({ [PREPACK_ENV]: bad })).toThrow(UsageError);
    const GB = 2 ** 30;
    const at = (floatWeightBytes: number, quantized = false, env: Record<string, string> = {}) => prepackWeights({ quantized, floatWeightBytes, totalMemory: 24 * GB, env });
    expect(PREPACK_MEMORY_SHARE).toBe(0.1);
    expect(at(2 * GB)).toBe(true); // a 0.5B model in float32 on 24 GB
    expect(at(2.4 * GB)).toBe(true); // the limit itself
    expect(at(2.5 * GB)).toBe(false);
    expect(at(32 * GB)).toBe(false); // an 8B model
    expect(at(0, true)).toBe(true);
    expect(at(2 * GB, false, { [PREPACK_ENV]: "0" })).toBe(false);
    expect(at(32 * GB, false, { [PREPACK_ENV]: "1" })).toBe(true);
    expect(at(0, true, { [PREPACK_ENV]: "0" })).toBe(false);
  });

  describe.skipIf(!hasShared())("sessions opened under it (llama fixture)", () => {
    const cacheDir = mkdtempSync(join(tmpdir(), "realign-threads-"));
    const saved = [process.env[THREADS_ENV], process.env[SPIN_ENV], process.env[PREPACK_ENV]];
    afterAll(() => {
      for (const [i, name] of [THREADS_ENV, SPIN_ENV, PREPACK_ENV].entries()) {
        if (saved[i] === undefined) delete process.env[name];
        else process.env[name] = saved[i];
      }
      rmSync(cacheDir, { recursive: true, force: true });
    });

    for (const [threads, spin, prepack] of [["1", "1", "0"], ["2", "0", "1"], ["", "", ""]]) {
      test(`${threads || "default"} thread(s), spin ${spin || "default"}, prepack ${prepack || "default"}: the logits of HF transformers within 1e-4`, async () => {
        const dir = sharedPath("fixtures", "hf-golden", "llama");
        const expected = JSON.parse(readFileSync(join(dir, "expected.json"), "utf8")) as { single: { input_ids: number[]; position_ids: number[]; logits: number[][] }[] };
        process.env[THREADS_ENV] = threads;
        process.env[SPIN_ENV] = spin;
        process.env[PREPACK_ENV] = prepack;
        const model = await DecoderModel.load(dir, { device: "cpu", cacheDir });
        try {
          expect(await maxLogitDiff(model, expected.single)).toBeLessThan(1e-4);
        } finally {
          model.close();
        }
      });
    }
  });
});
