// A byte-level BPE tokenizer.json for random-weight bench checkpoints (which have none): the 256 GPT-2 byte
// symbols as ids 0–255, then "t<id>" tokens up to the vocabulary size, no merges. Enough for a GGUF export
// and for llama.cpp to load it; the benches feed token ids, never text.
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export function writeByteTokenizer(dir: string, vocabSize: number): void {
  const path = join(dir, "tokenizer.json");
  if (existsSync(path)) return;
  const keep = new Set<number>();
  for (let b = 33; b <= 126; b++) keep.add(b);
  for (let b = 161; b <= 172; b++) keep.add(b);
  for (let b = 174; b <= 255; b++) keep.add(b);
  let extra = 0;
  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[keep.has(b) ? String.fromCodePoint(b) : String.fromCodePoint(256 + extra++)] = b;
  for (let id = 256; id < vocabSize; id++) vocab[`t${id}`] = id;
  const bl = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };
  writeFileSync(path, JSON.stringify({ version: "1.0", added_tokens: [], normalizer: null, pre_tokenizer: bl, post_processor: null, decoder: bl, model: { type: "BPE", vocab, merges: [] } }));
}
