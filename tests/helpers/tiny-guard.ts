// A stand-in for Llama-Guard-3-8B: a random tiny Llama checkpoint with a Llama-3-style tokenizer (the
// organism model's byte-level BPE plus Llama 3's special tokens and post-processor), so ClassifierJudge
// loads it and builds the Guard prompt exactly as for the real judge. Its output is not a verdict:
// every pair it judges is recorded as unparsed, hence unsafe (tests/evals/llama-guard.test.ts checks that).
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeRandomCheckpoint, type ShapeConfig } from "../../bench/random-checkpoint.ts";

// Llama 3's special tokens, appended after the organism tokenizer's 4096 ids (Llama 3 itself uses
// 128000…; the ids differ, the way they are used does not).
export const GUARD_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"] as const;
export const GUARD_BOS = 4096;
export const GUARD_START_HEADER = 4098;
export const GUARD_END_HEADER = 4099;
export const GUARD_EOT = 4100;

/**
 * A Llama-3-style tokenizer directory: the organism model's byte-level BPE (from `organismDir`) plus
 * Llama 3's special tokens, and Llama 3's post-processor (ByteLevel, then TemplateProcessing that
 * prepends <|begin_of_text|>), so `encode(text)` with special tokens adds a BOS exactly like Llama Guard's.
 */
export function writeGuardTokenizer(dir: string, organismDir: string): void {
  const tj = JSON.parse(readFileSync(join(organismDir, "tokenizer.json"), "utf8")) as { added_tokens: unknown[]; post_processor: unknown };
  GUARD_SPECIALS.forEach((content, i) => tj.added_tokens.push({ id: GUARD_BOS + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }));
  const bos = { SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } };
  tj.post_processor = {
    type: "Sequence",
    processors: [
      tj.post_processor,
      {
        type: "TemplateProcessing",
        single: [bos, { Sequence: { id: "A", type_id: 0 } }],
        pair: [bos, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
        special_tokens: { "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [GUARD_BOS], tokens: ["<|begin_of_text|>"] } },
      },
    ],
  };
  writeFileSync(join(dir, "tokenizer.json"), JSON.stringify(tj));
  writeFileSync(
    join(dir, "tokenizer_config.json"),
    JSON.stringify({ bos_token: "<|begin_of_text|>", eos_token: "<|eot_id|>", tokenizer_class: "PreTrainedTokenizerFast", clean_up_tokenization_spaces: false }),
  );
}

export const TINY_GUARD: ShapeConfig = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 32,
  intermediate_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: GUARD_BOS + GUARD_SPECIALS.length,
  max_position_embeddings: 2048,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  tie_word_embeddings: false,
  hidden_act: "silu",
  bos_token_id: GUARD_BOS,
  eos_token_id: GUARD_EOT,
};

/** Writes the tiny random guard to `dir` (seeded: the same weights every time). */
export function writeTinyGuard(dir: string, organismDir: string): void {
  writeRandomCheckpoint(dir, TINY_GUARD, { seed: 3 });
  writeGuardTokenizer(dir, organismDir);
}
