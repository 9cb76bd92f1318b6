// A broken tokenizer.json is refused at load with a TokenizerError naming the file and what is wrong,
// never a library error from deep inside (an unknown model type used to load, encode to strings and
// die in ONNX Runtime with "Invalid argument type in ToBigInt operation"). `realign generate` on
// such a folder: exit 2, one line, the folder untouched.
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadTokenizer, TokenizerError } from "../../engine/tokenizer.ts";
import { CLI, REPO_ROOT } from "../helpers/shared.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-tok-errors-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));
let n = 0;

// The demo model's tokenizer (a byte-level BPE, in the repository) and a tiny hand-written one.
const DEMO_TOKENIZER = JSON.parse(readFileSync(join(REPO_ROOT, "demo", "organism-llama", "tokenizer.json"), "utf8")) as Record<string, unknown>;
const TINY = {
  version: "1.0",
  added_tokens: [{ id: 0, content: "<s>", special: true, normalized: false, lstrip: false, rstrip: false, single_word: false }],
  normalizer: null,
  pre_tokenizer: null,
  post_processor: null,
  decoder: { type: "Fuse" },
  model: { type: "BPE", vocab: { "<s>": 0, a: 1, b: 2, ab: 3 }, merges: ["a b"], unk_token: null },
};

function dirWith(tokenizer: unknown): string {
  const d = join(TMP, `tok-${n++}`);
  mkdirSync(d);
  writeFileSync(join(d, "tokenizer.json"), typeof tokenizer === "string" ? tokenizer : JSON.stringify(tokenizer));
  return d;
}

async function refusal(tokenizer: unknown): Promise<{ dir: string; message: string }> {
  const dir = dirWith(tokenizer);
  const e = await loadTokenizer(dir).then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(TokenizerError);
  const message = (e as Error).message;
  expect(message).toContain(join(dir, "tokenizer.json"));
  expect(message).not.toContain("ToBigInt");
  return { dir, message };
}

const model = (m: Record<string, unknown>) => ({ ...TINY, model: m });

describe("malformed tokenizer.json: the file and the problem", () => {
  test("an unknown model type (the library would fall back to a model that yields strings)", async () => {
    const demoModel = DEMO_TOKENIZER.model as Record<string, unknown>;
    const { message } = await refusal({ ...DEMO_TOKENIZER, model: { ...demoModel, type: "Foo" } });
    expect(message).toEndWith('tokenizer.json: tokenizer model type "Foo" is not supported (supported: BPE, Unigram, WordPiece)');
    expect((await refusal(model({ ...TINY.model, type: "WordLevel" }))).message).toContain('model type "WordLevel" is not supported');
    expect((await refusal(model({ ...TINY.model, type: 7 }))).message).toContain("model type 7 is not supported");
  });

  test("no model type and nothing recognisable: caught by the probe encoding", async () => {
    const { message } = await refusal(model({ vocab: { "<s>": 0, a: 1, b: 2 } }));
    expect(message).toContain("the tokenizer model does not produce token ids (probe gave");
    expect(message).toContain("is model.type one of BPE, Unigram, WordPiece?");
  });

  test("structure: model, vocab ids, merges, Unigram pieces, added_tokens, pipeline parts", async () => {
    const cases: [unknown, string][] = [
      [{ ...TINY, model: undefined }, '"model" must be an object'],
      [model({ type: "BPE", vocab: ["a"], merges: [] }), "model.vocab[0] must be a [piece, score] pair"],
      [model({ ...TINY.model, vocab: { a: "1" } }), 'model.vocab["a"] must be a non-negative integer id, got "1"'],
      [model({ ...TINY.model, vocab: { a: -1 } }), 'model.vocab["a"] must be a non-negative integer id, got -1'],
      [model({ ...TINY.model, vocab: "a b c" }), "model.vocab must map tokens to ids"],
      [model({ ...TINY.model, merges: "a b" }), "model.merges must be a list"],
      [model({ ...TINY.model, merges: ["ab"] }), 'model.merges[0] must be "left right" or a [left, right] pair, got "ab"'],
      [model({ type: "Unigram", vocab: [] }), "model.vocab of a Unigram model must be a non-empty list"],
      [{ ...TINY, added_tokens: { id: 0 } }, "added_tokens must be a list"],
      [{ ...TINY, added_tokens: [{ id: "0", content: "<s>" }] }, "added_tokens[0] must be {id: integer, content: string, ...}"],
      [{ ...TINY, decoder: "Fuse" }, 'decoder must be null or an object with a "type", got "Fuse"'],
      [{ ...TINY, normalizer: { lowercase: true } }, 'normalizer must be null or an object with a "type"'],
    ];
    for (const [tj, want] of cases) expect((await refusal(tj)).message).toContain(want);
  });

  test("the library's own errors are wrapped with the file", async () => {
    const { message } = await refusal({ ...TINY, normalizer: { type: "Nope" } });
    expect(message).toMatch(/tokenizer\.json could not be loaded: the tokenizer library rejected it: Unknown Normalizer type: Nope$/);
    expect((await refusal({ ...TINY, pre_tokenizer: { type: "Nope" } })).message).toContain("Unknown PreTokenizer type: Nope");
    expect((await refusal({ ...TINY, decoder: { type: "Nope" } })).message).toContain("Unknown Decoder type: Nope");
  });

  test("not JSON, not an object", async () => {
    expect((await refusal("{")).message).toContain("is not valid JSON");
    expect((await refusal("[]")).message).toContain("must hold a JSON object");
  });

  test("a well-formed file still loads (the checks refuse only what is broken)", async () => {
    const tok = await loadTokenizer(dirWith(TINY));
    expect(tok.encode("ab")).toEqual([3]);
    const { type: _type, ...untyped } = DEMO_TOKENIZER.model as Record<string, unknown>;
    const demo = await loadTokenizer(dirWith({ ...DEMO_TOKENIZER, model: untyped })); // inferred as BPE from its fields
    expect(demo.encode("hello").length).toBeGreaterThan(0);
  });
});

test("realign generate on a folder with a broken tokenizer.json: exit 2, one line, nothing changed", () => {
  const demoModel = DEMO_TOKENIZER.model as Record<string, unknown>;
  const dir = dirWith({ ...DEMO_TOKENIZER, model: { ...demoModel, type: "Foo" } });
  writeFileSync(join(dir, "config.json"), readFileSync(join(REPO_ROOT, "demo", "organism-llama", "config.json")));
  const fingerprint = () =>
    readdirSync(dir)
      .sort()
      .map((f) => `${f}:${createHash("sha256").update(readFileSync(join(dir, f))).digest("hex")}:${statSync(join(dir, f)).mtimeMs}`);
  const before = fingerprint();
  const r = Bun.spawnSync([process.execPath, join(REPO_ROOT, CLI), "generate", dir, "--raw", "--prompt", "hi", "--device", "cpu"], {
    cwd: TMP,
    env: { ...process.env, REALIGN_CACHE: join(TMP, "cache"), NO_COLOR: "1" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const stderr = r.stderr.toString();
  expect(r.exitCode).toBe(2);
  expect(stderr).toBe(`realign: ${join(dir, "tokenizer.json")}: tokenizer model type "Foo" is not supported (supported: BPE, Unigram, WordPiece)\n`);
  expect(r.stdout.toString()).toBe("");
  expect(fingerprint()).toEqual(before);
  expect(readdirSync(dir).sort()).toEqual(["config.json", "tokenizer.json"]);
});
