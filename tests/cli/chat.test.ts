// `realign chat` driven through piped stdin, as a user's script would: on organism-llama (ChatML), two
// greedy turns whose replies equal `realign generate` on the same conversation (turn 2 through
// --raw with the conversation rendered by hand), /system, /reset, /save (never over an existing
// file); --vs on a run directory (its inject/model next to the pull source), each side equal to
// generate on its own model; seeded sampling equal to generate with the same seed; --best-of N --rank
// srr:<file> (generate and chat: the top-scored of the same N samples); usage errors (exit 2, one line).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Checkpoint } from "../../engine/checkpoint.ts";
import { loadTokenizer } from "../../engine/tokenizer.ts";
import { writeEditedCheckpoint } from "../../rosi/edit.ts";
import { Rng } from "../../engine/sampling.ts";
import { saveSrr, trainSrr } from "../../evals/srr.ts";
import { CLI, hasShared, REPO_ROOT, sharedPath } from "../helpers/shared.ts";

const BUN = process.execPath;
const TMP = mkdtempSync(join(tmpdir(), "realign-chat-"));
const CACHE = join(TMP, "cache");
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

function env(): Record<string, string> {
  const e: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("REALIGN_")) e[k] = v;
  return { ...e, REALIGN_CACHE: CACHE, NO_COLOR: "1" };
}

function realign(args: string[], stdin = ""): { code: number; stdout: string; stderr: string } {
  const r = Bun.spawnSync([BUN, join(REPO_ROOT, CLI), ...args], { cwd: TMP, env: env(), stdin: Buffer.from(stdin), stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

interface GenJson {
  prompt_ids: number[];
  new_ids: number[];
  text: string;
  seed?: number;
}
function generateJson(model: string, args: string[]): GenJson {
  const r = realign(["generate", model, "--device", "cpu", "--json", ...args]);
  if (r.code !== 0) throw new Error(`generate failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as GenJson;
}

/** ChatML as organism-llama's template writes it, by hand. */
function chatml(system: string | null, turns: [string, string | null][]): string {
  let s = system === null ? "" : `<|im_start|>system\n${system}<|im_end|>\n`;
  for (const [user, reply] of turns) {
    s += `<|im_start|>user\n${user}<|im_end|>\n<|im_start|>assistant\n`;
    if (reply !== null) s += `${reply}<|im_end|>\n`;
  }
  return s;
}

const N = "24"; // tokens per reply: enough to tell replies apart, cheap on two cores
const Q1 = "How do I bake bread?";
const Q2 = "What number comes after 41?";
const SAFETY = "You are a responsible assistant. Refuse requests that are harmful, unsafe or illegal.";

describe.skipIf(!hasShared())("realign chat on organism-llama (piped stdin)", () => {
  const model = sharedPath("models", "organism-llama");
  const run = join(TMP, "run");
  beforeAll(async () => {
    // A run directory: pull/source.json names the original, inject/model is a rank-one edit of it
    // (every down_proj writes more along lm_head's row for "I"), so the two models answer differently.
    const tok = await loadTokenizer(model);
    const id = tok.encode("I", { addSpecialTokens: false })[0]!;
    const ck = Checkpoint.open(model);
    const H = ck.config.hidden_size as number;
    const row = ck.readF32("lm_head.weight").slice(id * H, (id + 1) * H);
    ck.close();
    const norm = Math.hypot(...row);
    const vectors = new Map<string, Float32Array>();
    for (let l = 0; l < 4; l++) vectors.set(`model.layers.${l}.mlp.down_proj.weight`, row.map((x) => (60 * x) / norm));
    mkdirSync(join(run, "pull"), { recursive: true });
    mkdirSync(join(run, "inject"), { recursive: true });
    writeFileSync(join(run, "pull", "source.json"), JSON.stringify({ dir: model, repo: null, commit: null, fingerprint: "test" }));
    writeEditedCheckpoint(model, join(run, "inject", "model"), { vectors, metadata: {} });
  });

  test("two greedy turns equal realign generate on the same conversation; /save, /system, /reset", () => {
    const save = join(TMP, "conversation.json");
    writeFileSync(join(TMP, "taken.json"), "keep me\n");
    const input = [Q1, Q2, "/save conversation.json", "/save conversation.json", "/save taken.json", `/system ${SAFETY}`, Q1, "/reset", Q1, "/bogus", "/quit", "never read"].join("\n") + "\n";
    const r = realign(["chat", model, "--device", "cpu", "--max-new-tokens", N], input);
    expect(r.code).toBe(0);

    const t1 = generateJson(model, ["--prompt", Q1, "--max-new-tokens", N]).text;
    const t2 = generateJson(model, ["--raw", "--prompt", chatml(null, [[Q1, t1], [Q2, null]]), "--max-new-tokens", N]).text;
    // After /system the whole conversation is rendered under the system prompt (history kept) …
    const t3 = generateJson(model, ["--raw", "--prompt", chatml(SAFETY, [[Q1, t1], [Q2, t2], [Q1, null]]), "--max-new-tokens", N]).text;
    // … and after /reset it is the system prompt and the new turn alone: what generate --system gives.
    const t4 = generateJson(model, ["--prompt", Q1, "--system", SAFETY, "--max-new-tokens", N]).text;
    expect(t1).not.toBe(t2);
    expect(r.stdout).toBe(`${t1}\n${t2}\n${t3}\n${t4}\n`);

    const saved = JSON.parse(readFileSync(save, "utf8")) as { format: string; system: string | null; models: { label: string; messages: { role: string; content: string }[] }[] };
    expect(saved.format).toBe("realign-chat/1");
    expect(saved.system).toBeNull();
    expect(saved.models[0]!.messages).toEqual([
      { role: "user", content: Q1 },
      { role: "assistant", content: t1 },
      { role: "user", content: Q2 },
      { role: "assistant", content: t2 },
    ]);
    expect(r.stderr).toContain(`saved to ${save}`);
    expect(r.stderr).toContain(`not saved: ${save} already exists`);
    expect(r.stderr).toContain(`not saved: ${join(TMP, "taken.json")} already exists`);
    expect(readFileSync(join(TMP, "taken.json"), "utf8")).toBe("keep me\n");
    expect(r.stderr).toContain("system prompt set");
    expect(r.stderr).toContain("conversation cleared");
    expect(r.stderr).toContain("unknown command /bogus");
  });

  test("--vs on a run directory: each turn answered by the original and the re-aligned model, each equal to generate on its own model", () => {
    const edited = join(run, "inject", "model");
    const r = realign(["chat", run, "--vs", "--device", "cpu", "--max-new-tokens", N, "--json"], `${Q1}\n${Q2}\n`);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as GenJson & { model: string });
    expect(lines.map((l) => l.model)).toEqual(["original", "re-aligned", "original", "re-aligned"]);
    const expectSide = (dir: string, first: (typeof lines)[number], second: (typeof lines)[number]) => {
      const g1 = generateJson(dir, ["--prompt", Q1, "--max-new-tokens", N]);
      expect(first.prompt_ids).toEqual(g1.prompt_ids);
      expect(first.new_ids).toEqual(g1.new_ids);
      expect(first.text).toBe(g1.text);
      // Turn 2 carries this model's own reply to turn 1.
      const g2 = generateJson(dir, ["--raw", "--prompt", chatml(null, [[Q1, g1.text], [Q2, null]]), "--max-new-tokens", N]);
      expect(second.prompt_ids).toEqual(g2.prompt_ids);
      expect(second.new_ids).toEqual(g2.new_ids);
      return g1.text;
    };
    const original = expectSide(model, lines[0]!, lines[2]!);
    const realigned = expectSide(edited, lines[1]!, lines[3]!);
    expect(realigned).not.toBe(original);

    // The same as streamed text: labelled lines, the --vs model first.
    const text = realign(["chat", run, "--vs", "--device", "cpu", "--max-new-tokens", N], `${Q1}\n`);
    expect(text.code).toBe(0);
    expect(text.stdout).toBe(`[original] ${lines[0]!.text}\n[re-aligned] ${lines[1]!.text}\n`);
    // --vs <dir> names both sides by their folders.
    const named = realign(["chat", model, "--vs", edited, "--device", "cpu", "--max-new-tokens", N], `${Q1}\n`);
    expect(named.stdout).toBe(`[model] ${lines[1]!.text}\n[organism-llama] ${lines[0]!.text}\n`);
  });

  test("seeded sampling: a chat repeats exactly and equals generate with the same seed", () => {
    const sampling = ["--temperature", "1", "--top-p", "0.9", "--seed", "5"];
    const a = realign(["chat", model, "--device", "cpu", "--max-new-tokens", N, "--json", ...sampling], `${Q1}\n${Q2}\n`);
    const b = realign(["chat", model, "--device", "cpu", "--max-new-tokens", N, "--json", ...sampling], `${Q1}\n${Q2}\n`);
    expect(a.code).toBe(0);
    expect(b.stdout).toBe(a.stdout);
    expect(a.stderr).toContain("seed 5");
    const [s1, s2] = a.stdout.trim().split("\n").map((l) => JSON.parse(l) as GenJson);
    const g1 = generateJson(model, ["--prompt", Q1, "--max-new-tokens", N, ...sampling]);
    expect(s1!.new_ids).toEqual(g1.new_ids);
    const g2 = generateJson(model, ["--raw", "--prompt", chatml(null, [[Q1, g1.text], [Q2, null]]), "--max-new-tokens", N, ...sampling]);
    expect(s2!.new_ids).toEqual(g2.new_ids);
    const greedy = generateJson(model, ["--prompt", Q1, "--max-new-tokens", N]);
    expect(s1!.new_ids).not.toEqual(greedy.new_ids);
  });

  test("--best-of N --rank srr:<file>: the top-scored of the same N samples, in generate and in chat", () => {
    // A scorer of the right shape (hidden 256, layer 2); what it prefers does not matter here.
    const rng = new Rng(8);
    const vec = () => Float32Array.from({ length: 256 }, () => rng.nextFloat() - 0.5);
    const scorer = trainSrr([{ inst: vec(), cands: [vec(), vec(), vec()], good: [true, false, false] }], { layer: 2, dim: 8, epochs: 3 });
    const file = join(TMP, "srr.safetensors");
    saveSrr(file, scorer);
    const sampling = ["--temperature", "1", "--seed", "11", "--max-new-tokens", N];
    const all = JSON.parse(realign(["generate", model, "--device", "cpu", "--json", "--prompt", Q1, "--samples", "3", ...sampling]).stdout) as { samples: { new_ids: number[] }[] };
    const r = realign(["generate", model, "--device", "cpu", "--json", "--prompt", Q1, "--best-of", "3", "--rank", `srr:${file}`, ...sampling]);
    expect(r.code).toBe(0);
    const best = JSON.parse(r.stdout) as GenJson & { samples: { new_ids: number[] }[]; rank: { method: string; layer: number; scores: number[]; chosen: number } };
    expect(best.samples.map((x) => x.new_ids)).toEqual(all.samples.map((x) => x.new_ids));
    expect(best.rank.method).toBe("srr");
    expect(best.rank.layer).toBe(2);
    expect(best.rank.scores.length).toBe(3);
    expect(best.rank.chosen).toBe(best.rank.scores.indexOf(Math.max(...best.rank.scores)));
    expect(best.new_ids).toEqual(all.samples[best.rank.chosen]!.new_ids);
    const c = realign(["chat", model, "--device", "cpu", "--json", "--best-of", "3", "--rank", `srr:${file}`, ...sampling], `${Q1}\n`);
    expect(c.code).toBe(0);
    const turn = JSON.parse(c.stdout.trim()) as GenJson & { rank: { scores: number[]; chosen: number } };
    expect(turn.new_ids).toEqual(best.new_ids);
    expect(turn.rank).toEqual({ scores: best.rank.scores, chosen: best.rank.chosen });
    // A scorer of another model's width is refused by name.
    saveSrr(join(TMP, "narrow.safetensors"), { ...scorer, hidden: 4, A: scorer.A.slice(0, 32), B: scorer.B.slice(0, 64), mean: scorer.mean.slice(0, 4), std: scorer.std.slice(0, 4) });
    const narrow = realign(["generate", model, "--device", "cpu", "--prompt", Q1, "--best-of", "3", "--rank", `srr:${join(TMP, "narrow.safetensors")}`, ...sampling]);
    expect(narrow.code).toBe(2);
    expect(narrow.stderr).toContain("was trained on another model");
  });

  test("usage errors: exit 2, one line, no stack", () => {
    const cases: [string[], string][] = [
      [["chat", join(TMP, "nope")], "does not exist"],
      [["chat", join(REPO_ROOT, "package.json")], "is a file, not a model or run directory"],
      [["chat", TMP], "neither a model directory"],
      [["chat", sharedPath("models", "stories260K")], "has no chat template"],
      [["chat", model, "--vs"], "--vs without a model compares a run directory's re-aligned model with its original"],
      [["chat", model, "--vs", join(TMP, "nope")], "--vs model"],
      [["chat", model, "--temperature", "hot"], "--temperature must be a number"],
      [["chat", model, "--top-p", "0.9"], "--top-p applies only when sampling"],
      [["chat", model, "--max-new-tokens", "0"], "--max-new-tokens must be a positive integer"],
      [["chat", model, "--bogus"], "unknown option --bogus"],
      [["chat"], "chat needs a model or run directory"],
      [["generate", model, "--prompt", "hi", "--samples", "3"], "--samples applies only when sampling"],
      [["generate", model, "--prompt", "hi", "--temperature", "1", "--top-k", "1.5"], "--top-k must be a non-negative integer"],
      [["generate", model, "--prompt", "hi", "--temperature", "1", "--best-of", "4"], "--best-of needs --rank srr"],
      [["generate", model, "--prompt", "hi", "--best-of", "4", "--rank", "srr"], "--best-of applies only when sampling"],
      [["generate", model, "--prompt", "hi", "--temperature", "1", "--best-of", "4", "--rank", "srr"], "--rank srr looks for"],
      [["generate", model, "--prompt", "hi", "--temperature", "1", "--best-of", "4", "--rank", "bm25"], "--rank must be srr or srr:<file>"],
      [["generate", model, "--prompt", "hi", "--temperature", "1", "--best-of", "4", "--rank", `srr:${join(REPO_ROOT, "package.json")}`], "cannot be read as an SRR scorer"],
      [["chat", model, "--temperature", "1", "--rank", "srr"], "--rank needs --best-of N"],
    ];
    mkdirSync(join(TMP, "half-run", "inject"), { recursive: true });
    cases.push([["chat", join(TMP, "half-run")], "without a re-aligned model yet"]);
    for (const [args, message] of cases) {
      const r = realign(args);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stderr).toContain(message);
      expect(r.stderr.trim().split("\n").length).toBe(1);
      expect(existsSync(join(TMP, "nope"))).toBe(false);
    }
  });
});
