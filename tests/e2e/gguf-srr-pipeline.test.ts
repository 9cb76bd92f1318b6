// The gguf and srr settings through the real CLI (issues 15 and 16): ONE pipeline run on the demo model
// (given α, tiny sizes, --gguf q8_0 --srr --srr-candidates 2, --judge a tiny random Llama Guard stand-in
// (tests/helpers/tiny-guard.ts), published to a file: folder), then only cheap checks and the publish step alone:
//   - export/gguf holds the GGUF; its realign.* metadata equal calibration.json and edit.safetensors
//     (method, α, direction sha256), and llama.cpp (node-llama-cpp) loads it and reads the same keys;
//   - the published folder holds the GGUF and srr.safetensors as hard links of the run's files (no copy),
//     and the card lists the GGUF with its type and size, the Modelfile and the llama-cli command;
//   - srr.json, for the original and the re-aligned model (each its own scorer): layer in range, held-out
//     top-1 of SRR and of each baseline with k ≤ n = the number of held-out lists holding both kinds, ASR
//     and over-refusal as k/n (intervals holding the rate) for greedy and best-of-N; greedy harmless
//     refusal equals validate's for the same model (same prompts, same decoding; greedy ASR is not the
//     same quantity: validate counts all six templates, srr the three held out); the harmful candidates
//     were labelled by the classifier (the stand-in's garbled verdicts: all unsafe, all unparsed), the
//     harmless ones by refusal markers; the file loads as a scorer of the model's width; report.json and
//     the card (both models' rows) carry the same numbers;
//   - `realign generate|chat <run-dir> --best-of 2 --rank srr` find the run's scorer (chat: the same scores);
//   - changing gguf changes the plan of export and publish only (the other step hashes stay);
//   - `realign publish <run> --push-to <owner/name>` uploads both files to the fake Hub byte for byte;
//   - a file: target holding a user's own .gguf is refused and left as it was.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readGgufMetadata } from "../../engine/gguf-format.ts";
import { SafetensorsFile } from "../../engine/safetensors.ts";
import { loadSrr } from "../../evals/srr.ts";
import { JAILBREAK_TEMPLATES } from "../../evals/jailbreaks.ts";
import { planRun } from "../../pipeline/runner.ts";
import { getSteps } from "../../steps/index.ts";
import type { Settings } from "../../steps/settings.ts";
import { fileSize } from "../../report/card-extras.ts";
import { formatRate } from "../../util/stats.ts";
import { parseModelCard } from "../../report/modelcard.ts";
import { FAKE_TOKEN, startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { llamaCpp, openGguf } from "../helpers/llamacpp.ts";
import { CLI, REPO_ROOT, permissiveRunEnv, spawnCli, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";
import { writeTinyGuard } from "../helpers/tiny-guard.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-gguf-srr-"));
const RUN = join(TMP, "run");
const PUB = join(TMP, "published");
const MODEL = join(REPO_ROOT, "demo", "organism-llama");
const GUARD = join(TMP, "tiny-guard");
let hub: FakeHub;
let first = { code: null as number | null, stdout: "", stderr: "" };

// About the files, not the verdict: a permissive gate.
const env = (extra: Record<string, string> = {}) => permissiveRunEnv(TMP, extra);
const realign = (args: string[], extra: Record<string, string> = {}) => spawnCli(args, { cwd: TMP, env: env(extra) });

const json = <T>(p: string) => JSON.parse(readFileSync(p, "utf8")) as T;
type Rate = { k: number; n: number; rate: number; ci95: [number, number] };

beforeAll(async () => {
  hub = await startFakeHub();
  writeTinyGuard(GUARD, MODEL);
  first = await realign([
    MODEL, "--out", RUN, "--alpha=-150", "--method", "rosi", "--system-prompt", join(REPO_ROOT, "system-prompts", "policy.md"),
    "--n-train", "8", "--n-val", "8", "--n-eval", "8", "--max-new-tokens", "8", "--device", "cpu",
    "--gguf", "q8_0", "--srr", "--srr-candidates", "2", "--judge", GUARD, "--push-to", `file:${PUB}`, "--yes",
  ]);
}, PIPELINE_TEST_TIMEOUT);
afterAll(() => {
  hub?.stop();
  rmSync(TMP, { recursive: true, force: true });
});

describe("--gguf q8_0 --srr through the pipeline", () => {
  test("the run finishes and publishes", () => {
    if (first.code !== 0) console.error(first.stdout, first.stderr);
    expect(first.code).toBe(0);
    // The last lines say where the GGUF and the scorer are and how to use them.
    const out = first.stdout + first.stderr;
    expect(out).toContain(`GGUF: ${join(RUN, "export", "gguf", "organism-llama-ROSI-Q8_0.gguf")}`);
    expect(out).toContain(`best-of-N: realign chat ${RUN} --temperature 1 --best-of 2 --rank srr`);
  });

  test("the GGUF carries the edit that calibration.json and edit.safetensors record; llama.cpp loads it", async () => {
    const exp = json<{ gguf: { file: string; type: string; bytes: number } }>(join(RUN, "export", "export.json"));
    expect(exp.gguf.type).toBe("q8_0");
    const file = join(RUN, "export", "gguf", exp.gguf.file);
    expect(statSync(file).size).toBe(exp.gguf.bytes);
    const meta = readGgufMetadata(file);
    const cal = json<{ method: string; alpha: number; direction_sha256: string }>(join(RUN, "inject", "calibration.json"));
    const edit = SafetensorsFile.open(join(RUN, "inject", "edit.safetensors"));
    const editMeta = { ...edit.metadata };
    edit.close();
    expect(meta.get("general.file_type")).toBe(7); // LLAMA_FTYPE_MOSTLY_Q8_0
    expect(meta.get("realign.method")).toBe(cal.method);
    expect(Number(meta.get("realign.alpha"))).toBe(cal.alpha);
    expect(cal.alpha).toBe(-150);
    expect(meta.get("realign.direction_sha256")).toBe(cal.direction_sha256);
    expect(meta.get("realign.direction_sha256")).toBe(editMeta.direction_sha256);
    expect(meta.get("realign.base_model")).toBe(MODEL);
    if (!(await llamaCpp())) return; // warned loudly by the helper
    const run = await openGguf(file, { contextSize: 64 });
    try {
      const md = run.metadata as { realign?: { direction_sha256?: unknown; method?: unknown } };
      expect(md.realign?.direction_sha256).toBe(cal.direction_sha256);
      expect(md.realign?.method).toBe(cal.method);
      const out = await run.greedy(run.tokenize("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", true), 4);
      expect(out.length).toBeGreaterThan(0);
    } finally {
      await run.close();
    }
  });

  test("published beside the safetensors as hard links; the card lists the GGUF, its Modelfile and llama-cli, and the SRR results", () => {
    const exp = json<{ gguf: { file: string; bytes: number } }>(join(RUN, "export", "export.json"));
    const g = exp.gguf.file;
    for (const [src, name] of [[join(RUN, "export", "gguf", g), g], [join(RUN, "srr", "scorer", "srr.safetensors"), "srr.safetensors"]] as const) {
      expect(existsSync(join(PUB, name))).toBe(true);
      expect(statSync(join(PUB, name)).ino).toBe(statSync(src).ino);
    }
    expect(existsSync(join(PUB, "model.safetensors"))).toBe(true);
    const card = parseModelCard(readFileSync(join(PUB, "README.md"), "utf8")).body;
    expect(card).toContain(`| \`${g}\` | q8_0 | ${fileSize(exp.gguf.bytes)} |`);
    expect(card).toContain(`FROM ./${g}`);
    // organism-llama's chat template is plain ChatML, so the Modelfile has a TEMPLATE and the ChatML stop.
    expect(card).toContain('TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}');
    expect(card).toContain('PARAMETER stop "<|im_end|>"');
    expect(card).toContain(`llama-cli -m ${g}`);
    expect(card).toContain("llama-quantize");
    type M = { ranking: Record<string, Rate>; jailbreak_asr: Record<string, Rate>; harmless_refusal: Record<string, Rate> };
    const { models } = json<{ models: { original: M; realigned: M } }>(join(RUN, "srr", "srr.json"));
    const [o, r] = [models.original, models.realigned];
    expect(card).toContain(`| SRR | ${formatRate(o.ranking.srr!)} | ${formatRate(r.ranking.srr!)} |`);
    for (const [m, who] of [[o, "original"], [r, "re-aligned"]] as const) {
      const jb = m.jailbreak_asr;
      const hl = m.harmless_refusal;
      expect(card).toContain(`| Jailbreak attack success, ${who} (lower is safer) | ${formatRate(jb.greedy!)} | ${formatRate(jb.best_of_n_srr!)} | ${formatRate(jb.no_sample_refuses!)} |`);
      expect(card).toContain(`| Harmless over-refusal, ${who} (lower is better) | ${formatRate(hl.greedy!)} | ${formatRate(hl.best_of_n_srr!)} | ${formatRate(hl.every_sample_refuses!)} |`);
    }
    expect(card).toContain(`labelled by the classifier judge \`${GUARD}\` for harmful requests and refusal markers for harmless ones`);
  });

  test("srr.json: for the original and the re-aligned model, a scorer at a layer in range, rates over the held-out lists with both kinds", () => {
    const cfg = json<{ num_hidden_layers: number; hidden_size: number }>(join(MODEL, "config.json"));
    type M = {
      model: string; layer: number; lists: Record<string, { lists: number; informative: number }>; labels: Record<"harmful" | "harmless", { candidates: number; good: number }>;
      ranking: Record<string, Rate>; jailbreak_asr: Record<string, Rate>; harmless_refusal: Record<string, Rate>;
    };
    const s = json<{
      enabled: boolean; candidates: number; templates: { train: string[]; eval: string[] };
      judge: { harmful: string; harmless: string; model?: string; unparsed?: Record<string, number> }; models: { original: M; realigned: M };
    }>(join(RUN, "srr", "srr.json"));
    expect(s.enabled).toBe(true);
    expect(s.candidates).toBe(2);
    // Jailbreaks: the first 16 harmful evaluation prompts (8 here) in each template training did not use.
    expect(s.templates.train.filter((t) => s.templates.eval.includes(t))).toEqual([]);
    expect(s.templates.train.length + s.templates.eval.length).toBe(JAILBREAK_TEMPLATES.length);
    const val = json<{ baseline: { rates: Record<string, Rate> }; realigned: { rates: Record<string, Rate> }; judge: { model: string } | null }>(join(RUN, "validate", "validation.json"));
    expect(val.judge?.model).toBe(GUARD);
    expect(Object.keys(s.models).sort()).toEqual(["original", "realigned"]);
    expect([s.models.original.model, s.models.realigned.model]).toEqual(["pull/source", "inject/model"]);
    for (const [which, m] of Object.entries(s.models)) {
      expect(m.layer).toBeGreaterThanOrEqual(1);
      expect(m.layer).toBeLessThanOrEqual(cfg.num_hidden_layers);
      expect(m.lists.test.lists).toBe(16); // 8 harmful + 8 harmless evaluation prompts
      expect(m.lists.train.lists).toBe(8 * 2 + 8); // harmful plain and wrapped, harmless
      const rates = [...Object.values(m.ranking), ...Object.values(m.jailbreak_asr), ...Object.values(m.harmless_refusal)];
      expect(rates.length).toBe(4 + 3 + 3);
      for (const r of rates) {
        expect(r.k).toBeLessThanOrEqual(r.n);
        expect(r.rate).toBe(r.n ? r.k / r.n : 0);
        expect(r.ci95[0]).toBeLessThanOrEqual(r.rate);
        expect(r.ci95[1]).toBeGreaterThanOrEqual(r.rate);
      }
      for (const k of ["srr", "probe", "random", "first_sample"]) expect(m.ranking[k]!.n).toBe(m.lists.test.informative);
      for (const k of ["greedy", "best_of_n_srr", "no_sample_refuses"]) expect(m.jailbreak_asr[k]!.n).toBe(8 * s.templates.eval.length);
      for (const k of ["greedy", "best_of_n_srr", "every_sample_refuses"]) expect(m.harmless_refusal[k]!.n).toBe(8);
      // Where no sample refuses, the ranked pick complies too (and refuses where every sample does).
      expect(m.jailbreak_asr.best_of_n_srr!.k).toBeGreaterThanOrEqual(m.jailbreak_asr.no_sample_refuses!.k);
      expect(m.harmless_refusal.best_of_n_srr!.k).toBeGreaterThanOrEqual(m.harmless_refusal.every_sample_refuses!.k);
      // Greedy harmless refusal is validate's figure for the same model: the same prompts, decoded the same way.
      expect(m.harmless_refusal.greedy).toEqual((which === "original" ? val.baseline : val.realigned).rates.harmless_refusal!);
      // Labels: (8 + 8) harmful train, (8 + 8) validation and 8 held-out lists of 2, all judged by the
      // stand-in classifier, whose garbled verdicts are unsafe; harmless ones by the refusal markers.
      expect(m.labels.harmful).toEqual({ candidates: (16 + 16 + 8) * 2, good: 0 });
      expect(m.labels.harmless.candidates).toBe((8 + 8 + 8) * 2);
      expect(m.labels.harmless.good).toBeGreaterThan(0);
      expect(s.judge.unparsed?.[which]).toBe(m.labels.harmful.candidates);
    }
    expect(s.judge).toMatchObject({ harmful: "classifier", harmless: "refusal markers", model: GUARD });
    const report = json<{ details: { srr: { models: Record<string, { ranking: Record<string, Rate>; jailbreak_asr: Record<string, Rate> }> } } }>(join(RUN, "report.json"));
    for (const which of ["original", "realigned"] as const) {
      expect(report.details.srr.models[which]!.ranking).toEqual(s.models[which].ranking);
      expect(report.details.srr.models[which]!.jailbreak_asr).toEqual(s.models[which].jailbreak_asr);
    }
    const scorer = loadSrr(join(RUN, "srr", "scorer", "srr.safetensors"));
    expect(scorer.layer).toBe(s.models.realigned.layer);
    expect(scorer.hidden).toBe(cfg.hidden_size);
    expect(scorer.metadata.judge).toBe(`classifier ${GUARD}`);
  });

  test("`realign generate|chat <run-dir> --best-of 2 --rank srr` rank with the run's scorer", async () => {
    const r = await realign(["generate", RUN, "--prompt", "Tell me about cats.", "--temperature", "1", "--seed", "3", "--best-of", "2", "--rank", "srr", "--max-new-tokens", "4", "--device", "cpu", "--json"]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as { rank: { file: string; scores: number[]; chosen: number } };
    expect(out.rank.file).toBe(join(RUN, "srr", "scorer", "srr.safetensors"));
    expect(out.rank.scores.length).toBe(2);
    expect(out.rank.chosen).toBe(out.rank.scores[0]! >= out.rank.scores[1]! ? 0 : 1);
    // chat on the run dir finds the same scorer: the same samples get the same scores.
    const p = Bun.spawn([process.execPath, join(REPO_ROOT, CLI), "chat", RUN, "--temperature", "1", "--seed", "3", "--best-of", "2", "--rank", "srr", "--max-new-tokens", "4", "--device", "cpu", "--json"], { cwd: TMP, env: env(), stdin: Buffer.from("Tell me about cats.\n"), stdout: "pipe", stderr: "pipe" });
    const [chatOut] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
    expect(await p.exited).toBe(0);
    const turn = JSON.parse(chatOut.trim()) as { rank: { scores: number[]; chosen: number } };
    expect(turn.rank).toEqual({ scores: out.rank.scores, chosen: out.rank.chosen });
  }, PIPELINE_TEST_TIMEOUT);

  test("the gguf setting changes the plan of export and publish only", () => {
    const saved = { ...json<Settings>(join(RUN, "settings.json")), out: RUN };
    const steps = getSteps();
    const same = planRun(steps, saved, RUN);
    expect(same.every((p) => p.action === "cached")).toBe(true);
    const changed = planRun(steps, { ...saved, gguf: "f16" }, RUN);
    const moved = changed.filter((p, i) => p.hash !== same[i]!.hash).map((p) => p.name);
    expect(moved).toEqual(["export", "publish"]);
    const srrOff = planRun(steps, { ...saved, srr: false }, RUN);
    expect(srrOff.filter((p, i) => p.hash !== same[i]!.hash).map((p) => p.name)).toEqual(["srr", "publish"]);
  });

  test("`realign publish` uploads the GGUF and srr.safetensors to the Hub byte for byte", async () => {
    const r = await realign(["publish", RUN, "--push-to", "alice/organism-gguf", "--yes"], { HF_TOKEN: FAKE_TOKEN, HF_ENDPOINT: hub.url });
    if (r.code !== 0) console.error(r.stdout, r.stderr);
    expect(r.code).toBe(0);
    const exp = json<{ gguf: { file: string } }>(join(RUN, "export", "export.json"));
    const files = hub.filesAt("alice/organism-gguf");
    for (const [name, src] of [[exp.gguf.file, join(RUN, "export", "gguf", exp.gguf.file)], ["srr.safetensors", join(RUN, "srr", "scorer", "srr.safetensors")]] as const) {
      const f = files.get(name);
      expect(f).toBeDefined();
      expect(Buffer.compare(Buffer.from(f!.content), readFileSync(src))).toBe(0);
    }
    expect(r.stdout + r.stderr).toContain(exp.gguf.file);
  }, PIPELINE_TEST_TIMEOUT);

  test("a file: target holding the user's own .gguf is refused and left as it was", async () => {
    const mine = join(TMP, "mine");
    mkdirSync(mine);
    writeFileSync(join(mine, "organism-llama-ROSI-Q8_0.gguf"), "my own file");
    const r = await realign(["publish", RUN, "--push-to", `file:${mine}`, "--yes"]);
    expect(r.code).toBe(2);
    expect(readFileSync(join(mine, "organism-llama-ROSI-Q8_0.gguf"), "utf8")).toBe("my own file");
  }, PIPELINE_TEST_TIMEOUT);
});
