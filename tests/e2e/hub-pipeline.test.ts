// The Hub round trip through the real CLI: pull a sharded BF16 chat model from a (fake) Hub, run the
// pipeline with --alpha given, publish, pull the published repo again and compare with the local output.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { SafetensorsFile, type TensorData } from "../../engine/safetensors.ts";
import { fromFloat32 } from "../../engine/dtype.ts";
import { pullModel } from "../../hub/hub.ts";
import { parseModelCard } from "../../report/modelcard.ts";
import { FAKE_TOKEN, startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { hasShared, sharedPath, REPO_ROOT, CLI, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";
import type { RunReport } from "../../report/report.ts";

/** safetensors bytes of the given tensors, via the project's writer into a temp file. */
function safetensorsBytes(dir: string, name: string, tensors: TensorData[]): Uint8Array {
  const { writeSafetensors } = require("../../engine/safetensors.ts") as typeof import("../../engine/safetensors.ts");
  const path = join(dir, name);
  writeSafetensors(path, tensors);
  return new Uint8Array(readFileSync(path));
}

function filesUnder(dir: string, prefix = ""): string[] {
  return readdirSync(dir).flatMap((f) => (statSync(join(dir, f)).isDirectory() ? filesUnder(join(dir, f), `${prefix}${f}/`) : [`${prefix}${f}`]));
}

describe.skipIf(!hasShared())("Hub round trip through the pipeline", () => {
  let hub: FakeHub;
  let work = "";
  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "realign-hub-pipeline-"));
    hub = await startFakeHub();
    // The organism chat model, converted to BF16 and split into two shards with an index.
    const src = sharedPath("models", "organism-llama");
    const f = SafetensorsFile.open(join(src, "model.safetensors"));
    const names = f.names();
    const half = Math.ceil(names.length / 2);
    const shardNames = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    const weightMap: Record<string, string> = {};
    const shards = [names.slice(0, half), names.slice(half)].map((part, i) => {
      for (const n of part) weightMap[n] = shardNames[i];
      return safetensorsBytes(work, shardNames[i], part.map((n) => ({ name: n, dtype: "BF16", shape: f.info(n).shape, data: fromFloat32("BF16", f.readF32(n)) })));
    });
    f.close();
    const config = { ...JSON.parse(readFileSync(join(src, "config.json"), "utf8")), torch_dtype: "bfloat16" };
    const text = (n: string) => readFileSync(join(src, n), "utf8");
    hub.addRepo("acme/organism-bf16", {
      "config.json": JSON.stringify(config, null, 2),
      "generation_config.json": text("generation_config.json"),
      "tokenizer.json": text("tokenizer.json"),
      "tokenizer_config.json": text("tokenizer_config.json"),
      "special_tokens_map.json": text("special_tokens_map.json"),
      "README.md": "---\nlicense: mit\n---\n# organism (BF16)\n",
      [shardNames[0]]: shards[0],
      [shardNames[1]]: shards[1],
      "model.safetensors.index.json": JSON.stringify({ metadata: {}, weight_map: weightMap }),
    });
  });
  afterAll(() => {
    hub?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test("pull → pipeline with --alpha → publish → pull again: byte-identical files, card with metrics, token nowhere", async () => {
    const out = join(work, "run");
    const args = [CLI, "acme/organism-bf16", "--out", out, "--alpha=-150", "--method", "rosi", "--push-to", "alice/organism-rosi", "--yes",
      "--hub-url", hub.url, "--n-train", "16", "--n-val", "16", "--n-eval", "16", "--max-new-tokens", "16", "--device", "cpu"];
    const env = {
      ...process.env, HF_TOKEN: FAKE_TOKEN, HF_HUB_CACHE: join(work, "hf-cache"), REALIGN_CACHE: join(work, "graphs"),
      // This test is about Hub I/O, not about the verdict: a permissive gate lets the run publish.
      REALIGN_ELICIT_MIN_GAP: "0", REALIGN_GATE_HARMFUL_GAIN: "0", REALIGN_GATE_OVER_REFUSAL: "1", REALIGN_GATE_KL: "100", REALIGN_GATE_UTILITY_DROP: "1",
    };
    const proc = Bun.spawn([process.execPath, ...args], { cwd: REPO_ROOT, env, stdout: "pipe", stderr: "pipe" });
    const output = (await new Response(proc.stdout).text()) + (await new Response(proc.stderr).text());
    expect(await proc.exited).toBe(0);

    const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as RunReport;
    expect(report.published?.repo).toBe("alice/organism-rosi");
    expect(report.direction?.alpha).toBe(-150);

    // Pull what was published and compare with the run's own output.
    const pulled = await pullModel("alice/organism-rosi", { hubUrl: hub.url, token: FAKE_TOKEN, cacheDir: join(work, "hf-cache-2") });
    const local = join(out, "inject", "model");
    for (const f of readdirSync(local).filter((n) => n.endsWith(".safetensors") || n.endsWith(".json"))) {
      expect(Buffer.compare(readFileSync(join(pulled.dir, f)), readFileSync(join(local, f)))).toBe(0);
    }
    // The edited shards keep BF16 and the index.
    const shard = SafetensorsFile.open(join(pulled.dir, "model-00002-of-00002.safetensors"));
    expect(shard.info(shard.names()[0]).dtype).toBe("BF16");
    shard.close();
    const repoFiles = hub.filesAt("alice/organism-rosi");
    expect([...repoFiles.keys()]).toContain("rosi-direction.safetensors");
    const readme = repoFiles.get("README.md");
    expect(readme).toBeDefined();
    const card = parseModelCard(new TextDecoder().decode(readme!.content));
    expect(card.frontMatter.base_model).toBe("acme/organism-bf16");
    expect(card.frontMatter.license).toBe("mit");
    expect(card.body).toContain("Harmful refusal");
    expect(card.body).toContain(String(report.direction!.alpha));

    // The token is in no file of the run and not in the output.
    expect(output).not.toContain(FAKE_TOKEN);
    for (const f of filesUnder(out)) expect(readFileSync(join(out, f)).includes(FAKE_TOKEN)).toBe(false);
  }, PIPELINE_TEST_TIMEOUT);
});
