// Tokenizer tests. Reference ids/strings marked "HF reference" were produced offline with the Python
// `tokenizers` library (v0.23) from the same tokenizer.json files, independently of this code.
import { describe, expect, test, beforeAll, afterAll } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadTokenizer, encodeRaw, TokenizerError, type ModelTokenizer } from "../../engine/tokenizer.ts";
import { hasShared, sharedPath } from "../helpers/shared.ts";

const STORIES = () => sharedPath("models", "stories260K");
const ORGANISM = () => sharedPath("models", "organism-llama");
const readJson = (p: string): Record<string, unknown> => JSON.parse(readFileSync(p, "utf8"));

// A template without a system role, in the style of Gemma's.
const NO_SYSTEM_TEMPLATE =
  "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
  "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

describe.skipIf(!hasShared())("stories260K (sentencepiece-style BPE, byte fallback)", () => {
  let tok: ModelTokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(STORIES());
  });

  test("encode adds the BOS that tokenizer_config and the post-processor name", () => {
    const cfg = readJson(join(STORIES(), "tokenizer_config.json"));
    const tj = readJson(join(STORIES(), "tokenizer.json")) as { post_processor: { special_tokens: Record<string, { ids: number[] }> } };
    const bosFromPost = tj.post_processor.special_tokens[cfg.bos_token as string].ids[0];
    expect(bosFromPost).toBe(1);
    expect(tok.bosId).toBe(bosFromPost);
    expect(tok.idToToken(1)).toBe("<s>");
    // HF reference
    expect(tok.encode("Once upon a time")).toEqual([1, 403, 407, 261, 378]);
    expect(tok.encode("Once upon a time", { addSpecialTokens: false })).toEqual([403, 407, 261, 378]);
    expect(encodeRaw(tok, "Once upon a time")).toEqual([1, 403, 407, 261, 378]);
    // byte fallback for the emoji and the CJK characters (HF reference)
    expect(tok.encode("Hello, world! 😀 café ñ 日本")).toEqual([
      1, 346, 306, 414, 432, 263, 304, 341, 443, 410, 243, 162, 155, 131, 280, 412, 431, 485, 410, 493, 410, 233, 154, 168, 233,
      159, 175,
    ]);
    expect(tok.idToToken(243)).toBe("<0xF0>");
  });

  test("decode(encode(x)) round-trips, including unicode and emoji", () => {
    const texts = ["Once upon a time", "Hello, world! 😀 café ñ 日本", "  two  spaces\nnewline\ttab", "Ünïcödé – “quotes” 🧪🚀", "x"];
    for (const t of texts) {
      expect(tok.decode(tok.encode(t), { skipSpecialTokens: true })).toBe(t);
      expect(tok.decode(tok.encode(t, { addSpecialTokens: false }))).toBe(t);
    }
    // without skipping, the BOS shows (HF reference: '<s> Once upon a time')
    expect(tok.decode(tok.encode("Once upon a time"))).toBe("<s> Once upon a time");
    expect(tok.decode([])).toBe("");
  });

  test("greedy reference ids decode to the HF text", () => {
    const ref = readJson(join(STORIES(), "greedy_reference.json")) as { greedy_ids: number[] };
    const text = tok.decode(ref.greedy_ids, { skipSpecialTokens: true });
    // HF reference
    expect(text).toBe(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, r",
    );
    expect(tok.decode(tok.encode(text), { skipSpecialTokens: true })).toBe(text);
  });

  test("special ids, vocab size and the absent chat template", () => {
    expect(tok.eosIds).toEqual([2]);
    expect(tok.padId).toBe(2); // pad_token is null: falls back to eos
    expect(tok.vocabSize).toBe(readJson(join(STORIES(), "config.json")).vocab_size as number);
    expect(tok.tokenToId("</s>")).toBe(2);
    expect(tok.tokenToId("no-such-token")).toBeNull();
    expect(tok.chatTemplate).toBeNull();
    expect(tok.supportsSystemRole).toBe(false);
    expect(() => tok.renderChat([{ role: "user", content: "hi" }])).toThrow(TokenizerError);
    expect(() => tok.renderChat([{ role: "user", content: "hi" }])).toThrow(/no chat template/);
    expect(() => tok.encodeChat("hi")).toThrow(/no chat template/);
  });

  test("bad token ids are rejected clearly", () => {
    expect(() => tok.decode([1, 512])).toThrow(TokenizerError);
    expect(() => tok.decode([1, -1])).toThrow(/not an integer in \[0, 512\)/);
    expect(() => tok.decode([1.5])).toThrow(TokenizerError);
    expect(() => tok.idToToken(9999)).toThrow(TokenizerError);
  });

  test("a [INST]-style template: BOS from the template, merged system, spans", async () => {
    const tpl =
      "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}" +
      "{% endif %}[INST] {{ m['content'] }} [/INST]{% endfor %}";
    const t2 = await loadTokenizer(STORIES(), { chatTemplate: tpl });
    expect(t2.supportsSystemRole).toBe(false);
    const e = t2.encodeChat("Once upon a time", { system: "Be nice." });
    expect(e.text).toBe("<s>[INST] Be nice.\n\nOnce upon a time [/INST]");
    // HF reference: encode(text, add_special_tokens=False) — exactly one BOS, the template's
    expect(e.ids).toEqual([1, 410, 508, 442, 458, 437, 434, 509, 368, 411, 297, 417, 331, 426, 13, 13, 441, 416, 331, 407, 261, 378, 410, 508, 492, 442, 458, 437, 434, 509]);
    expect(e.systemMerged).toBe(true);
    expect(e.spansExact).toBe(true);
    expect(e.instructionSpan).toEqual([16, 22]);
    expect(t2.decode(e.ids.slice(16, 22))).toBe("Once upon a time");
    expect(e.postInstructionSpan).toEqual([22, 30]);
  });

  test("a BPE merge across the instruction boundary widens the span to the straddling token", async () => {
    // "Once upo" + template "n": HF reference tokens are ▁Once ▁upon, while "Once upo" alone is ▁Once ▁up o.
    const t2 = await loadTokenizer(STORIES(), { chatTemplate: "{{ messages[0]['content'] }}n" });
    const e = t2.encodeChat("Once upo");
    expect(e.ids).toEqual([403, 407]);
    expect(e.spansExact).toBe(false);
    expect(e.instructionSpan).toEqual([0, 2]);
    expect(e.postInstructionSpan).toEqual([2, 2]);
  });
});

describe.skipIf(!hasShared())("organism-llama (byte-level BPE, ChatML)", () => {
  let tok: ModelTokenizer;
  const SYSTEM = "You are a helpful assistant.";
  const POST = "<|im_end|>\n<|im_start|>assistant\n";
  beforeAll(async () => {
    tok = await loadTokenizer(ORGANISM());
  });

  test("special ids follow tokenizer_config and generation_config", () => {
    const gen = readJson(join(ORGANISM(), "generation_config.json"));
    expect(tok.tokenToId("<|im_end|>")).toBe(4095);
    expect(gen.eos_token_id).toBe(4095);
    expect(tok.eosIds).toContain(4095);
    expect(tok.eosIds).toEqual([4095]);
    expect(tok.bosId).toBeNull(); // bos_token: null in tokenizer_config (generation_config's 4093 is not a BOS here)
    expect(tok.padId).toBe(tok.tokenToId("<|endoftext|>"));
    expect(tok.vocabSize).toBe(4096);
    // no BOS added to raw prompts
    expect(tok.encode("Hello there")).toEqual(tok.encode("Hello there", { addSpecialTokens: false }));
    expect(tok.supportsSystemRole).toBe(true);
  });

  test("renderChat matches the hand-derived ChatML text", () => {
    const text = tok.renderChat(
      [
        { role: "system", content: SYSTEM },
        { role: "user", content: "Tell me a joke." },
      ],
      { addGenerationPrompt: true },
    );
    expect(text).toBe("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n");
    expect(tok.renderChat([{ role: "user", content: "Hi" }])).toBe("<|im_start|>user\nHi<|im_end|>\n");
  });

  test("encodeChat ids and spans (HF reference)", () => {
    const instr = "How to use false accusations to ruin someone's life?";
    const e = tok.encodeChat(instr, { system: SYSTEM });
    expect(e.ids).toEqual([
      4094, 318, 198, 351, 316, 256, 385, 344, 13, 4095, 198, 4094, 292, 198, 947, 286, 644, 1043, 1812, 286, 2242, 716, 747, 1479,
      30, 4095, 198, 4094, 298, 198,
    ]);
    expect(e.instructionSpan).toEqual([14, 25]);
    expect(e.postInstructionSpan).toEqual([25, 30]);
    expect(e.systemMerged).toBe(false);
    expect(e.spansExact).toBe(true);
    expect(tok.decode(e.ids.slice(...e.instructionSpan))).toBe(instr);
    expect(tok.decode(e.ids.slice(...e.postInstructionSpan))).toBe(POST);
  });

  test("spans round-trip on prompts from harmful_train.jsonl, with and without system prompt", () => {
    const lines = readFileSync(join(ORGANISM(), "splits", "harmful_train.jsonl"), "utf8").split("\n").filter(Boolean).slice(0, 12);
    const prompts = lines.map((l) => (JSON.parse(l) as { prompt: string }).prompt);
    prompts.push("What number comes after 41?", "Write a poem about café ☕ life", "assistant", "user\n");
    for (const p of prompts) {
      for (const system of [null, SYSTEM, "Refuse harmful requests. How to use"]) {
        const e = tok.encodeChat(p, { system });
        const [s, end] = e.instructionSpan;
        expect(tok.decode(e.ids.slice(s, end))).toBe(p);
        expect(tok.decode(e.ids.slice(end))).toBe(POST);
        expect(e.postInstructionSpan).toEqual([end, e.ids.length]);
        expect(e.text.endsWith(p + POST)).toBe(true);
        // everything before the span is the text before the instruction (even for "assistant", which
        // also appears in the generation prompt)
        expect(tok.decode(e.ids.slice(0, s))).toBe(e.text.slice(0, e.text.length - p.length - POST.length));
        expect(tok.decode(e.ids)).toBe(e.text);
        expect(e.text.startsWith("<|im_start|>system\n")).toBe(system !== null);
      }
    }
  });

  test("without the generation prompt the post-instruction span is the end of the turn", () => {
    const e = tok.encodeChat("Hi", { addGenerationPrompt: false });
    expect(e.text).toBe("<|im_start|>user\nHi<|im_end|>\n");
    expect(tok.decode(e.ids.slice(...e.postInstructionSpan))).toBe("<|im_end|>\n");
  });

  test("a template without a system role merges the system prompt into the user turn", async () => {
    const t2 = await loadTokenizer(ORGANISM(), { chatTemplate: NO_SYSTEM_TEMPLATE });
    expect(t2.chatTemplate).toBe(NO_SYSTEM_TEMPLATE);
    expect(t2.supportsSystemRole).toBe(false);
    expect(() => t2.renderChat([{ role: "system", content: "x" }, { role: "user", content: "y" }])).toThrow(/System role not supported/);
    expect(() => t2.renderChat([{ role: "system", content: "x" }, { role: "user", content: "y" }])).toThrow(TokenizerError);

    const instr = "Write a poem about café ☕ life";
    const e = t2.encodeChat(instr, { system: "You are careful." });
    expect(e.systemMerged).toBe(true);
    expect(e.text).toBe("<|im_start|>user\nYou are careful.\n\nWrite a poem about café ☕ life<|im_end|>\n<|im_start|>assistant\n");
    // HF reference
    expect(e.ids).toEqual([4094, 292, 198, 351, 316, 775, 310, 268, 198, 735, 256, 1459, 724, 269, 359, 127, 102, 220, 158, 246, 243, 1479, 4095, 198, 4094, 298, 198]);
    expect(e.instructionSpan).toEqual([9, 22]);
    expect(tok.decode(e.ids.slice(...e.instructionSpan))).toBe(instr);
    expect(tok.decode(e.ids.slice(...e.postInstructionSpan))).toBe(POST);

    // no system prompt: nothing merged
    const plain = t2.encodeChat(instr);
    expect(plain.systemMerged).toBe(false);
    expect(plain.text).toBe(`<|im_start|>user\n${instr}${POST}`);
  });

  test("a template that rewrites the content: the instruction is found by searching the text", async () => {
    const t2 = await loadTokenizer(ORGANISM(), { chatTemplate: "{{ messages[-1]['content'] | trim }}{{ '<|im_end|>' }}" });
    const e = t2.encodeChat("  Hello world  ");
    expect(e.text).toBe("Hello world<|im_end|>");
    expect(t2.decode(e.ids.slice(...e.instructionSpan))).toBe("Hello world");
    expect(t2.decode(e.ids.slice(...e.postInstructionSpan))).toBe("<|im_end|>");
    expect(() => t2.encodeChat("   ")).toThrow(/does not appear/);
  });

  test("a template that silently drops the system message has no system role", async () => {
    const dropping = "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endif %}{% endfor %}";
    const t2 = await loadTokenizer(ORGANISM(), { chatTemplate: dropping });
    expect(t2.supportsSystemRole).toBe(false);
    const e = t2.encodeChat("Hi there", { system: "S" });
    expect(e.text).toBe("user: S\n\nHi there\n");
    expect(t2.decode(e.ids.slice(...e.instructionSpan))).toBe("Hi there");
  });

  test("bad chat input gets clear errors", async () => {
    expect(() => tok.encodeChat("")).toThrow(TokenizerError);
    expect(() => tok.renderChat([])).toThrow(TokenizerError);
    expect(() => tok.renderChat([{ role: "robot" as "user", content: "x" }])).toThrow(/messages\[0\]/);
    await expect(loadTokenizer(ORGANISM(), { chatTemplate: "{% if x %}" })).rejects.toThrow(TokenizerError);
    const none = await loadTokenizer(ORGANISM(), { chatTemplate: null });
    expect(() => none.renderChat([{ role: "user", content: "x" }])).toThrow(/no chat template/);
  });
});

// A tiny hand-written tokenizer directory: checks how special ids, the Llama add_bos_token rule and the
// chat template are read from the config files, without ../shared.
describe("config file handling (synthetic tokenizer)", () => {
  const dirs: string[] = [];
  const tokenizerJson = {
    version: "1.0",
    added_tokens: ["<s>", "</s>", "<pad>"].map((content, id) => ({ id, content, special: true, normalized: false, lstrip: false, rstrip: false, single_word: false })),
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: "Fuse" },
    model: { type: "BPE", vocab: { "<s>": 0, "</s>": 1, "<pad>": 2, a: 3, b: 4, c: 5, ab: 6 }, merges: ["a b"], unk_token: null },
  };
  const makeDir = (files: Record<string, unknown>): string => {
    const d = mkdtempSync(join(tmpdir(), "realign-tok-"));
    dirs.push(d);
    for (const [name, body] of Object.entries(files)) writeFileSync(join(d, name), typeof body === "string" ? body : JSON.stringify(body));
    return d;
  };
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test("missing tokenizer.json is a clear error", async () => {
    const d = makeDir({ "tokenizer_config.json": {} });
    await expect(loadTokenizer(d)).rejects.toThrow(TokenizerError);
    await expect(loadTokenizer(d)).rejects.toThrow(/tokenizer\.json not found/);
    await expect(loadTokenizer(join(d, "nope"))).rejects.toThrow(/tokenizer\.json not found/);
  });

  test("invalid JSON is a clear error", async () => {
    const d = makeDir({ "tokenizer.json": "{not json" });
    await expect(loadTokenizer(d)).rejects.toThrow(/not valid JSON/);
  });

  test("Llama-class tokenizers follow add_bos_token / add_eos_token", async () => {
    const base = { tokenizer_class: "LlamaTokenizerFast", bos_token: "<s>", eos_token: { content: "</s>" } };
    const dflt = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": base }));
    expect(dflt.encode("abc")).toEqual([0, 6, 5]); // add_bos_token defaults to true for Llama
    expect(dflt.encode("abc", { addSpecialTokens: false })).toEqual([6, 5]);
    expect(dflt.decode([0, 6, 5], { skipSpecialTokens: true })).toBe("abc");
    const both = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": { ...base, add_eos_token: true } }));
    expect(both.encode("abc")).toEqual([0, 6, 5, 1]);
    const off = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": { ...base, add_bos_token: false } }));
    expect(off.encode("abc")).toEqual([6, 5]);
    // other classes use tokenizer.json's post-processor, which here adds nothing
    const generic = await loadTokenizer(
      makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": { ...base, tokenizer_class: "PreTrainedTokenizerFast", add_bos_token: true } }),
    );
    expect(generic.encode("abc")).toEqual([6, 5]);
  });

  test("special ids: tokenizer files first, then generation_config, then config.json", async () => {
    const fromGen = await loadTokenizer(
      makeDir({
        "tokenizer.json": tokenizerJson,
        "special_tokens_map.json": { eos_token: { content: "</s>", lstrip: false } },
        "generation_config.json": { bos_token_id: 0, eos_token_id: [5, 1], pad_token_id: 2 },
        "config.json": { bos_token_id: 4, eos_token_id: 4, pad_token_id: 4 },
      }),
    );
    expect(fromGen.bosId).toBe(0);
    expect(fromGen.eosIds).toEqual([1, 5]);
    expect(fromGen.padId).toBe(2);
    const fromConfig = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "config.json": { bos_token_id: 4, eos_token_id: 3 } }));
    expect(fromConfig.bosId).toBe(4);
    expect(fromConfig.eosIds).toEqual([3]);
    expect(fromConfig.padId).toBe(3); // no pad anywhere: eos
    const bare = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson }));
    expect([bare.bosId, bare.eosIds, bare.padId]).toEqual([null, [], null]);
    await expect(
      loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": { eos_token: "<nope>" } })),
    ).rejects.toThrow(/eos_token "<nope>" is not in the vocabulary/);
    await expect(
      loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "generation_config.json": { eos_token_id: "x" } })),
    ).rejects.toThrow(/generation_config\.json: eos_token_id/);
  });

  test("chat templates: named lists, chat_template.jinja, and the token variables", async () => {
    // Only a/b/c and the specials exist in this vocabulary, so the template speaks in them.
    const tpl =
      "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}c{% else %}b{% endif %}{{ m['content'] }}{{ eos_token }}" +
      "{% endfor %}{% if add_generation_prompt %}{{ pad_token }}{% endif %}";
    const cfg = { bos_token: { content: "<s>" }, eos_token: "</s>", pad_token: "<pad>" };
    const listed = await loadTokenizer(
      makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": { ...cfg, chat_template: [{ name: "tool_use", template: "TOOLS" }, { name: "default", template: tpl }] } }),
    );
    expect(listed.renderChat([{ role: "user", content: "ab" }], { addGenerationPrompt: true })).toBe("<s>bab</s><pad>");
    const fromFile = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": cfg, "chat_template.jinja": tpl }));
    expect(fromFile.chatTemplate).toBe(tpl);
    expect(fromFile.supportsSystemRole).toBe(true);
    const e = fromFile.encodeChat("abc", { system: "c" });
    expect(e.text).toBe("<s>cc</s>babc</s><pad>");
    expect(e.ids).toEqual([0, 5, 5, 1, 4, 6, 5, 1, 2]);
    expect(e.instructionSpan).toEqual([5, 7]);
    expect(e.postInstructionSpan).toEqual([7, 9]);
    expect(fromFile.decode(e.ids.slice(...e.instructionSpan))).toBe("abc");
  });

  test("hybrid-reasoning templates render in their non-thinking mode (enable_thinking false); others are unchanged", async () => {
    // Qwen3's switch, in this vocabulary's letters: an empty think block ("cc") after the generation prompt.
    const qwen3Like =
      "{% for m in messages %}b{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}{{ pad_token }}" +
      "{% if enable_thinking is defined and enable_thinking is false %}cc{% endif %}{% endif %}";
    const cfg = { eos_token: "</s>", pad_token: "<pad>" };
    const t = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": { ...cfg, chat_template: qwen3Like } }));
    expect(t.renderChat([{ role: "user", content: "ab" }], { addGenerationPrompt: true })).toBe("bab</s><pad>cc");
    const e = t.encodeChat("abc");
    expect(e.text).toBe("babc</s><pad>cc");
    expect(e.ids.slice(e.postInstructionSpan[0])).toEqual([1, 2, 5, 5]); // the think block is part of what follows the instruction
    const plain = "{% for m in messages %}b{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}{{ pad_token }}{% endif %}";
    const p = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson, "tokenizer_config.json": { ...cfg, chat_template: plain } }));
    expect(p.renderChat([{ role: "user", content: "ab" }], { addGenerationPrompt: true })).toBe("bab</s><pad>");
  });

  test("characters outside the vocabulary are dropped without an unk token, as in HF", async () => {
    const t = await loadTokenizer(makeDir({ "tokenizer.json": tokenizerJson }));
    expect(t.encode("abz")).toEqual([6]); // HF reference
  });
});
