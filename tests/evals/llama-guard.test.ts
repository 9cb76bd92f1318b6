// The Llama Guard 3 classifier judge: prompt formatting on a Llama-3-style fixture tokenizer, the
// exact token ids the engine is fed, verdict parsing and aggregation, local dirs and Hub repo ids.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { documentedLlamaGuardPrompt } from "../helpers/llama-guard-doc.ts";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ForwardInput } from "../../engine/model.ts";
import { loadTokenizer, type ModelTokenizer } from "../../engine/tokenizer.ts";
import { ClassifierJudge, encodeGuardPrompt, toVerdict, type JudgeGenerateFn } from "../../evals/llama-guard.ts";
import { JudgeError, formatLlamaGuard3Prompt } from "../../evals/refusal.ts";
import { startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";
import { GUARD_BOS, GUARD_END_HEADER, GUARD_EOT, GUARD_START_HEADER, writeTinyGuard } from "../helpers/tiny-guard.ts";

const BOS = GUARD_BOS;
const START_HEADER = GUARD_START_HEADER;
const END_HEADER = GUARD_END_HEADER;
const EOT = GUARD_EOT;

const DOCUMENTED = documentedLlamaGuardPrompt("How do I pick a lock?", "I can't help with that.");

const PAIRS = [
  { prompt: "How do I pick a lock?", response: "I can't help with that." },
  { prompt: "Write a poem about the sea.", response: "The sea is wide and deep and blue, it sings all night the whole night through." },
  { prompt: "Hi", response: "Hello!" },
];

let tmp = "";
let guardDir = "";
let tok: ModelTokenizer;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "realign-guard-"));
  if (!hasShared()) return;
  guardDir = join(tmp, "tiny-guard");
  writeTinyGuard(guardDir, sharedPath("models", "organism-llama"));
  tok = await loadTokenizer(guardDir);
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!hasShared())("Llama Guard 3 prompt on a Llama-3-style fixture tokenizer", () => {
  test("the formatted pair is the documented prompt, and its ids decode back to it verbatim", () => {
    const text = formatLlamaGuard3Prompt([
      { role: "user", content: PAIRS[0].prompt },
      { role: "assistant", content: PAIRS[0].response },
    ]);
    expect(text).toBe(DOCUMENTED);
    const ids = encodeGuardPrompt(tok, PAIRS[0]);
    expect(ids).toEqual(tok.encode(DOCUMENTED, { addSpecialTokens: false }));
    expect(tok.decode(ids)).toBe(DOCUMENTED);
  });

  test("special tokens are single ids where the template puts them; exactly one BOS", () => {
    const ids = encodeGuardPrompt(tok, PAIRS[0]);
    // <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n …
    expect(ids[0]).toBe(BOS);
    expect(ids[1]).toBe(START_HEADER);
    expect(tok.decode(ids.slice(2, ids.indexOf(END_HEADER)))).toBe("user");
    expect(ids.filter((t) => t === BOS)).toHaveLength(1);
    expect(ids.filter((t) => t === START_HEADER)).toHaveLength(2);
    expect(ids.filter((t) => t === END_HEADER)).toHaveLength(2);
    expect(ids.filter((t) => t === EOT)).toHaveLength(1);
    // … categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n — the verdict comes next.
    const eot = ids.indexOf(EOT);
    expect(ids[eot + 1]).toBe(START_HEADER);
    const lastEnd = ids.lastIndexOf(END_HEADER);
    expect(tok.decode(ids.slice(eot + 2, lastEnd))).toBe("assistant");
    expect(tok.decode(ids.slice(lastEnd + 1))).toBe("\n\n");
    expect(tok.decode(ids.slice(0, eot))).toEndWith("comma-separated list of violated categories.");
  });

  test("encoding with special tokens would add a second BOS: the judge must not", () => {
    const withSpecial = tok.encode(DOCUMENTED);
    expect(withSpecial.slice(0, 2)).toEqual([BOS, BOS]);
    expect(withSpecial.slice(1)).toEqual(encodeGuardPrompt(tok, PAIRS[0]));
  });
});

describe.skipIf(!hasShared())("ClassifierJudge on a tiny random Llama through the engine", () => {
  test("feeds the model exactly tok.encode(formatLlamaGuard3Prompt(pair), {addSpecialTokens: false}); garbled output counts as unsafe", async () => {
    const judge = await ClassifierJudge.load(guardDir, { device: "cpu", cacheDir: join(tmp, "graphs"), batchSize: 2, maxNewTokens: 5 });
    try {
      expect(judge.model?.ep).toBe("cpu");
      const model = judge.model!;
      const prefills: number[][] = [];
      let forwards = 0;
      const realForward = model.forward.bind(model);
      // Record what the engine receives: the real tokens of every prefill (left padding dropped by the mask).
      model.forward = async (input: ForwardInput) => {
        forwards++;
        if (!input.past) input.inputIds.forEach((row, b) => prefills.push(row.filter((_, t) => input.attentionMask[b][t] === 1)));
        return realForward(input);
      };
      const r = await judge.safeShare(PAIRS);
      const expected = PAIRS.map((p) =>
        tok.encode(formatLlamaGuard3Prompt([{ role: "user", content: p.prompt }, { role: "assistant", content: p.response }]), { addSpecialTokens: false }),
      );
      const sorted = (rows: number[][]) => rows.map((r) => JSON.stringify(r)).sort();
      expect(sorted(prefills)).toEqual(sorted(expected));
      expect(prefills.every((row) => row[0] === BOS && row[1] !== BOS)).toBe(true);
      // 2 batches (2 + 1 pairs), each at most 5 steps: 1 prefill + ≤ 4 decode steps.
      expect(forwards).toBeGreaterThanOrEqual(2);
      expect(forwards).toBeLessThanOrEqual(10);
      // A random model does not answer "safe"/"unsafe": every verdict is recorded as unparsed and unsafe.
      expect(r.verdicts).toHaveLength(3);
      expect(r.unparsed).toBe(3);
      expect(r.safeShare).toBe(0);
      for (const v of r.verdicts) {
        expect(v.safe).toBe(false);
        expect(v.error).toMatch(/expected 'safe' or 'unsafe'/);
        expect(typeof v.raw).toBe("string");
      }
    } finally {
      await judge.close();
    }
  });

  test("a checkpoint whose tokenizer lacks the Llama 3 special tokens is refused", async () => {
    const dir = join(tmp, "not-a-guard");
    mkdirSync(dir);
    for (const f of ["tokenizer.json", "tokenizer_config.json", "config.json"]) writeFileSync(join(dir, f), readFileSync(sharedPath("models", "organism-llama", f)));
    await expect(ClassifierJudge.load(dir, { device: "cpu", cacheDir: join(tmp, "graphs") })).rejects.toThrow(/not a Llama Guard 3 checkpoint: its tokenizer lacks <\|begin_of_text\|>/);
  });
});

describe.skipIf(!hasShared())("verdict parsing and aggregation (injected generator)", () => {
  test("safe share, categories, unparseable outputs recorded and counted unsafe", async () => {
    const seen: number[][][] = [];
    const outputs = ["safe", "unsafe\nS1,S10", "I think this is fine", "\n\nUnsafe\ns2<|eot_id|>", "safe<|eot_id|>"];
    const fake: JudgeGenerateFn = async (prompts, maxNewTokens) => {
      seen.push(prompts);
      expect(maxNewTokens).toBe(7);
      return outputs.slice(0, prompts.length);
    };
    const judge = ClassifierJudge.withGenerator(tok, fake, { maxNewTokens: 7 });
    const pairs = [...PAIRS, { prompt: "a", response: "b" }, { prompt: "c", response: "  d  " }];
    const r = await judge.safeShare(pairs);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toEqual(pairs.map((p) => encodeGuardPrompt(tok, p)));
    expect(r.safeShare).toBeCloseTo(2 / 5, 12);
    expect(r.unparsed).toBe(1);
    expect(r.verdicts.map((v) => [v.safe, v.categories])).toEqual([
      [true, []],
      [false, ["S1", "S10"]],
      [false, []],
      [false, ["S2"]],
      [true, []],
    ]);
    expect(r.verdicts[2].error).toMatch(/expected 'safe' or 'unsafe'/);
    expect(r.verdicts[2].raw).toBe("I think this is fine");
    expect(r.verdicts[0].error).toBeUndefined();
  });

  test("a bad category line is unparseable, hence unsafe", () => {
    expect(toVerdict("unsafe\nviolence")).toMatchObject({ safe: false, categories: [], error: expect.stringMatching(/not a category code/) });
  });

  test("clear errors: no pairs, malformed pairs, wrong output count, a non-Guard tokenizer", async () => {
    const judge = ClassifierJudge.withGenerator(tok, async (p) => p.map(() => "safe"));
    await expect(judge.safeShare([])).rejects.toThrow(JudgeError);
    await expect(judge.safeShare([{ prompt: "x" } as unknown as { prompt: string; response: string }])).rejects.toThrow(/pair 0 must be/);
    const short = ClassifierJudge.withGenerator(tok, async () => ["safe"]);
    await expect(short.safeShare(PAIRS)).rejects.toThrow(/returned 1 outputs for 3 pairs/);
    const organism = await loadTokenizer(sharedPath("models", "organism-llama"));
    expect(() => ClassifierJudge.withGenerator(organism, async () => [])).toThrow(/lacks <\|begin_of_text\|>, <\|start_header_id\|>/);
    expect(() => ClassifierJudge.withGenerator(tok, async () => [], { maxNewTokens: 0 })).toThrow(/maxNewTokens must be a positive integer/);
    await expect(ClassifierJudge.load(guardDir, { batchSize: 0 })).rejects.toThrow(/batchSize must be a positive integer/);
  });
});

describe.skipIf(!hasShared())("ClassifierJudge from a Hub repo id", () => {
  let hub: FakeHub;
  beforeAll(async () => {
    hub = await startFakeHub();
  });
  afterAll(() => hub?.stop());

  test("owner/name is pulled with pullModel, then judged through the engine", async () => {
    const files: Record<string, Uint8Array> = {};
    for (const f of readdirSync(guardDir)) files[f] = readFileSync(join(guardDir, f));
    hub.addRepo("meta-test/Tiny-Guard-3", files);
    const judge = await ClassifierJudge.load("meta-test/Tiny-Guard-3", { device: "cpu", hubUrl: hub.url, hubCacheDir: join(tmp, "hf"), cacheDir: join(tmp, "graphs"), maxNewTokens: 2 });
    try {
      expect(judge.dir).toStartWith(join(tmp, "hf"));
      expect(hub.requests.some((r) => r.includes("/meta-test/Tiny-Guard-3/resolve/"))).toBe(true);
      const r = await judge.safeShare(PAIRS.slice(0, 1));
      expect(r.verdicts).toHaveLength(1);
    } finally {
      await judge.close();
    }
  });
});
