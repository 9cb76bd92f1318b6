// A real trained tiny Llama (karpathy's stories260K): greedy decoding from BOS must reproduce
// the reference ids exactly.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel } from "../../engine/model.ts";
import { generateGreedy } from "../../engine/generate.ts";
import { hasShared, sharedPath, REPO_ROOT, CLI } from "../helpers/shared.ts";

describe.skipIf(!hasShared())("stories260K", () => {
  const dir = sharedPath("models", "stories260K");
  let cacheDir = "";
  let model: DecoderModel;
  beforeAll(async () => {
    cacheDir = mkdtempSync(join(tmpdir(), "realign-stories-"));
    model = await DecoderModel.load(dir, { device: "cpu", cacheDir });
  });
  afterAll(async () => {
    await model?.close();
    rmSync(cacheDir, { recursive: true, force: true });
  });

  test("greedy decoding from BOS reproduces greedy_reference.json", async () => {
    const ref = JSON.parse(readFileSync(join(dir, "greedy_reference.json"), "utf8")) as { prompt_ids: number[]; greedy_ids: number[] };
    const maxNewTokens = ref.greedy_ids.length - ref.prompt_ids.length;
    const r = await generateGreedy(model, [ref.prompt_ids], { maxNewTokens });
    expect([...ref.prompt_ids, ...r.newIds[0]]).toEqual(ref.greedy_ids);
  });

  test("the same ids from a batch where the prompt is left-padded next to a longer one", async () => {
    const ref = JSON.parse(readFileSync(join(dir, "greedy_reference.json"), "utf8")) as { prompt_ids: number[]; greedy_ids: number[] };
    const longer = ref.greedy_ids.slice(0, 6);
    const r = await generateGreedy(model, [ref.prompt_ids, longer], { maxNewTokens: 10, padId: 0 });
    expect(r.newIds[0]).toEqual(ref.greedy_ids.slice(1, 11));
    expect(r.newIds[1]).toEqual(ref.greedy_ids.slice(6, 16));
  });

  test("through the CLI: `realign generate --raw --json` continues the reference exactly", async () => {
    const ref = JSON.parse(readFileSync(join(dir, "greedy_reference.json"), "utf8")) as { prompt_ids: number[]; greedy_ids: number[] };
    // "Once upon" is BOS + the reference's first two greedy tokens, so greedy decoding must continue it.
    const proc = Bun.spawn([process.execPath, CLI, "generate", dir, "--prompt", "Once upon", "--raw", "--json", "--max-new-tokens", "38", "--device", "cpu"], {
      cwd: REPO_ROOT,
      env: { ...process.env, REALIGN_CACHE: cacheDir },
      stdout: "pipe",
      stderr: "pipe",
    });
    const out = await new Response(proc.stdout).text();
    expect(await proc.exited).toBe(0);
    const r = JSON.parse(out) as { prompt_ids: number[]; new_ids: number[]; text: string };
    expect(r.prompt_ids).toEqual(ref.greedy_ids.slice(0, 3));
    expect([...r.prompt_ids, ...r.new_ids]).toEqual(ref.greedy_ids);
    expect(r.text.startsWith("a time, there was")).toBe(true);
  });
});
