// `realign chat <model-dir | run-dir> [--system "…"] [--vs [other-model]] [--max-new-tokens N]
//   [--temperature T [--top-p P] [--top-k K] [--seed S] [--best-of N --rank srr[:<file>]]] [--device …] [--dtype …] [--json]`
//
// A multi-turn conversation through the model's chat template. Every line read from stdin is a user
// turn (a TTY gets line editing and a prompt; piped stdin works the same, for scripts and tests); the
// reply streams to stdout as it is generated. Lines starting with "/" are commands: /reset (forget the
// conversation, keep the system prompt), /system <text> (set it; "/system" alone removes it), /save
// <file> (the conversation as JSON; an existing file is never overwritten), /help, /quit; "//…" sends
// a message starting with "/". Notices go to stderr, so stdout holds only the replies.
//
// A run directory (<out> of `realign`) chats with its inject/model; `--vs` then adds the model it was
// pulled from (pull/source.json), and every turn is answered by both: the --vs model first, each
// labelled ("original", "re-aligned"; for two model directories, their names). Each keeps its own
// history of the same user turns. `--vs <dir>` compares with any model directory (or run directory).
//
// Greedy unless --temperature > 0. With --best-of N --rank srr each reply is the top-ranked of N samples
// (Safety Representation Ranking, evals/srr.ts), shown once ranked rather than streamed; `srr` alone
// reads each model's own srr.safetensors, `srr:<file>` one scorer (not with --vs). Each turn's prompt is the whole conversation rendered by the
// template and tokenized like HF apply_chat_template, so a turn's reply is what `realign generate
// --raw --prompt <rendered conversation>` gives (for a template that adds no BOS, e.g. ChatML).
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { DecoderModel } from "../engine/model.ts";
import { generate } from "../engine/generate.ts";
import { randomSeed, TextStreamer, type SamplingOptions } from "../engine/sampling.ts";
import { loadTokenizer, type ChatMessage, type ModelTokenizer } from "../engine/tokenizer.ts";
import { UsageError } from "../util/errors.ts";
import { argmaxOf, rankWithSrr, type SrrScorer } from "../evals/srr.ts";
import { checkScorerFits, loadingModelFiles, loadScorer, parseEngineFlags, parseRankFlags, parseSamplingFlags } from "./generate.ts";

export interface ChatCommandOptions {
  system?: unknown;
  vs?: unknown;
  maxNewTokens?: unknown;
  device?: unknown;
  dtype?: unknown;
  temperature?: unknown;
  topP?: unknown;
  topK?: unknown;
  seed?: unknown;
  json?: unknown;
  bestOf?: unknown;
  rank?: unknown;
}

export interface ChatIO {
  input: NodeJS.ReadableStream;
  /** Replies (and, on a TTY, the prompt). */
  write: (text: string) => void;
  /** Notices and errors. */
  notice: (line: string) => void;
  isTTY: boolean;
  cwd: string;
}

const HELP = [
  "commands:",
  "  /reset           forget the conversation (the system prompt stays)",
  "  /system <text>   set the system prompt (/system alone removes it)",
  "  /save <file>     write the conversation as JSON (never over an existing file)",
  "  /help            this list",
  "  /quit            leave (so does end of input)",
  "  //text           send a message that starts with '/'",
];

// ---- what to chat with -------------------------------------------------------------------------

export interface ChatTargets {
  /** The model answered first (the --vs one), then the main one; one entry without --vs. */
  models: { label: string; dir: string }[];
}

const isModelDir = (d: string) => existsSync(join(d, "config.json"));
const isDir = (d: string) => {
  try {
    return statSync(d).isDirectory();
  } catch {
    return false;
  }
};

function looksLikeRunDir(d: string): boolean {
  return existsSync(join(d, ".realign-run")) || existsSync(join(d, "pull", "source.json")) || existsSync(join(d, "inject"));
}

/** A run directory's re-aligned model (inject/model). */
function runModel(run: string, given: string): string {
  const m = join(run, "inject", "model");
  if (!isModelDir(m)) throw new UsageError(`${given} is a realign run directory without a re-aligned model yet (${m} is missing: the inject step has not finished; see realign status --out ${given})`);
  return m;
}

/** A run directory's original model: the directory pull/source.json names. */
function runSource(run: string, given: string): string {
  const f = join(run, "pull", "source.json");
  let dir: unknown;
  try {
    dir = (JSON.parse(readFileSync(f, "utf8")) as { dir?: unknown }).dir;
  } catch (e) {
    throw new UsageError(`--vs needs the original model of ${given}, but ${f} cannot be read (${e instanceof Error ? e.message.split("\n")[0] : String(e)})`);
  }
  if (typeof dir !== "string" || !isModelDir(dir)) throw new UsageError(`--vs needs the original model of ${given}: ${f} names ${JSON.stringify(dir)}, which is not a model directory (any more); give --vs <model-dir>`);
  return dir;
}

/** A model directory, or a run directory's inject/model. */
function modelOf(path: string, cwd: string, what: string): { dir: string; run: boolean } {
  const p = resolve(cwd, path);
  if (!existsSync(p)) throw new UsageError(`${what} ${path} does not exist`);
  if (!isDir(p)) throw new UsageError(`${what} ${path} is a file, not a model or run directory`);
  if (isModelDir(p)) return { dir: p, run: false };
  if (looksLikeRunDir(p)) return { dir: runModel(p, path), run: true };
  throw new UsageError(`${what} ${path} is neither a model directory (no config.json) nor a realign run directory (no inject/model)`);
}

export function resolveChatTargets(target: string, vs: unknown, cwd: string): ChatTargets {
  if (!target) throw new UsageError("chat needs a model or run directory: realign chat <model-dir | run-dir>");
  const main = modelOf(target, cwd, "model");
  if (vs === undefined || vs === false) return { models: [{ label: "assistant", dir: main.dir }] };
  if (vs === true) {
    if (!main.run) throw new UsageError(`--vs without a model compares a run directory's re-aligned model with its original, but ${target} is a model directory: give --vs <other-model-dir>`);
    return { models: [{ label: "original", dir: runSource(resolve(cwd, target), target) }, { label: "re-aligned", dir: main.dir }] };
  }
  if (typeof vs !== "string" || vs === "") throw new UsageError("--vs needs a model directory (or nothing, for a run directory)");
  const other = modelOf(vs, cwd, "--vs model");
  const names = [basename(vs.replace(/[/\\]+$/, "")) || vs, basename(target.replace(/[/\\]+$/, "")) || target];
  if (names[0] === names[1] || other.run || main.run) {
    // Two run directories both end in inject/model: name them by what was typed.
    names[0] = vs;
    names[1] = target;
  }
  if (names[0] === names[1]) names[1] += " (2)";
  return { models: [{ label: names[0]!, dir: other.dir }, { label: names[1]!, dir: main.dir }] };
}

// ---- one model's side of the conversation ------------------------------------------------------

/** The messages a template is rendered from: the system prompt first (merged into the first user turn when the template has no system role). */
export function chatMessages(tok: ModelTokenizer, system: string | null, history: ChatMessage[]): ChatMessage[] {
  if (system === null) return [...history];
  if (tok.supportsSystemRole) return [{ role: "system", content: system }, ...history];
  // As encodeChat does for templates without a system role (Gemma): prepend it to the first user turn.
  const [first, ...rest] = history;
  if (!first) return [];
  return [{ role: first.role, content: system === "" ? first.content : `${system}\n\n${first.content}` }, ...rest];
}

/** The context length config.json declares (max_position_embeddings), or null. */
function contextLength(dir: string): number | null {
  try {
    const v = (JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as { max_position_embeddings?: unknown }).max_position_embeddings;
    return typeof v === "number" && Number.isInteger(v) && v > 0 ? v : null;
  } catch {
    return null;
  }
}

interface Side {
  label: string;
  dir: string;
  model: DecoderModel;
  tok: ModelTokenizer;
  eosIds: number[];
  context: number | null;
  history: ChatMessage[];
  /** --best-of N --rank srr: the scorer and N. */
  ranker: { scorer: SrrScorer; bestOf: number } | null;
}

export interface TurnResult {
  label: string;
  promptIds: number[];
  newIds: number[];
  text: string;
  finishReason: string;
  /** With a ranker: every candidate's score and the chosen one. */
  rank?: { scores: number[]; chosen: number };
}

class ContextFullError extends Error {}

async function answer(side: Side, system: string | null, user: string, gen: { maxNewTokens: number; sampling: SamplingOptions | undefined; signal?: AbortSignal }, stream: (delta: string) => void): Promise<TurnResult> {
  const messages = chatMessages(side.tok, system, [...side.history, { role: "user", content: user }]);
  const text = side.tok.renderChat(messages, { addGenerationPrompt: true });
  // HF apply_chat_template(tokenize=True): the template renders every special token.
  const promptIds = side.tok.encode(text, { addSpecialTokens: false });
  let maxNewTokens = gen.maxNewTokens;
  if (side.context !== null) {
    if (promptIds.length >= side.context) throw new ContextFullError(`${side.label}: the conversation is ${promptIds.length} tokens, the model's context is ${side.context}: /reset to start over`);
    maxNewTokens = Math.min(maxNewTokens, side.context - promptIds.length);
  }
  const decode = (ids: number[]) => side.tok.decode(ids, { skipSpecialTokens: true });
  if (side.ranker) {
    // N candidates, ranked on the model's own hidden states; the reply is shown once chosen.
    const r = await generate(side.model, [promptIds], { maxNewTokens, eosIds: side.eosIds, padId: side.tok.padId ?? 0, sampling: gen.sampling, signal: gen.signal, numSamples: side.ranker.bestOf });
    const scores = await rankWithSrr(side.model, side.ranker.scorer, promptIds, r.newIds);
    const chosen = argmaxOf(scores);
    const reply = decode(r.newIds[chosen]!);
    stream(reply);
    side.history.push({ role: "user", content: user }, { role: "assistant", content: reply });
    return { label: side.label, promptIds, newIds: r.newIds[chosen]!, text: reply, finishReason: r.finishReasons?.[chosen] ?? "length", rank: { scores, chosen } };
  }
  const streamer = new TextStreamer(decode);
  const r = await generate(side.model, [promptIds], {
    maxNewTokens,
    eosIds: side.eosIds,
    padId: side.tok.padId ?? 0,
    sampling: gen.sampling,
    signal: gen.signal,
    onToken: (_row, token) => {
      // The EOS id is a special token: it decodes to nothing.
      const delta = streamer.push(token);
      if (delta) stream(delta);
    },
  });
  const rest = streamer.flush();
  if (rest) stream(rest);
  const newIds = r.newIds[0]!;
  const reply = streamer.text();
  side.history.push({ role: "user", content: user }, { role: "assistant", content: reply });
  return { label: side.label, promptIds, newIds, text: reply, finishReason: r.finishReasons?.[0] ?? "length" };
}

// ---- the REPL ----------------------------------------------------------------------------------

function saveConversation(path: string, data: unknown): void {
  // "wx": fails when the file exists, so nothing is ever overwritten (also not by a race).
  writeFileSync(path, JSON.stringify(data, null, 2) + "\n", { flag: "wx" });
}

/** Returns the exit code (0); throws UsageError (exit 2) for bad options or unloadable models. */
export async function chatCommand(target: string, opts: ChatCommandOptions, io: ChatIO): Promise<number> {
  const targets = resolveChatTargets(target, opts.vs, io.cwd);
  if (opts.system !== undefined && typeof opts.system !== "string") throw new UsageError("--system needs a value");
  const { device, dtype, maxNewTokens } = parseEngineFlags(opts, 256);
  const { sampling: given } = parseSamplingFlags(opts);
  if (typeof opts.rank === "string" && opts.rank !== "srr" && targets.models.length > 1) throw new UsageError("--rank srr:<file> ranks for one model; with --vs use --rank srr (each model's own srr.safetensors)");
  const rankFor = (dir: string) => parseRankFlags(opts, dir, given, io.cwd);
  for (const t of targets.models) rankFor(t.dir); // every option checked before a model loads
  const json = opts.json === true;
  const sampling = given ? { ...given, seed: given.seed ?? randomSeed() } : undefined;

  const sides: Side[] = [];
  try {
    for (const t of targets.models) {
      const tok = await loadingModelFiles(() => loadTokenizer(t.dir));
      if (tok.chatTemplate === null) throw new UsageError(`${t.dir} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja): chat needs one; use realign generate --raw`);
      const rank = rankFor(t.dir);
      const scorer = rank ? loadScorer(rank.file) : null;
      const model = await loadingModelFiles(() => DecoderModel.load(t.dir, { device, dtype, log: io.notice }));
      const eosIds = tok.eosIds.length ? tok.eosIds : model.checkpoint.eosTokenIds();
      const ranker = rank ? { scorer: checkScorerFits(scorer!, rank.file, model), bestOf: rank.bestOf } : null;
      sides.push({ label: t.label, dir: t.dir, model, tok, eosIds, context: contextLength(t.dir), history: [], ranker });
      io.notice(`${sides.length > 1 || targets.models.length > 1 ? `${t.label}: ` : ""}${t.dir} on ${model.ep}${model.fallbackReason ? ` (GPU not used: ${model.fallbackReason})` : ""}`);
    }
    if (sampling) io.notice(`sampling: temperature ${sampling.temperature}${sampling.topK ? `, top-k ${sampling.topK}` : ""}${sampling.topP !== undefined ? `, top-p ${sampling.topP}` : ""}, seed ${sampling.seed}`);
    if (io.isTTY) io.notice("type a message; /help lists the commands");

    let system: string | null = typeof opts.system === "string" ? opts.system : null;
    const rl = createInterface({ input: io.input, terminal: io.isTTY, output: io.isTTY ? process.stdout : undefined, crlfDelay: Infinity });
    let generating: AbortController | null = null;
    rl.on("SIGINT", () => {
      if (generating) generating.abort();
      else rl.close();
    });
    const promptUser = () => {
      if (io.isTTY) {
        rl.setPrompt("you › ");
        rl.prompt();
      }
    };
    promptUser();
    for await (const raw of rl) {
      const line = raw.replace(/\r$/, "");
      if (line.trim() === "") {
        promptUser();
        continue;
      }
      if (line.startsWith("/") && !line.startsWith("//")) {
        const [cmd, ...restWords] = line.slice(1).split(" ");
        const arg = restWords.join(" ").trim();
        if (cmd === "quit" || cmd === "exit") break;
        if (cmd === "help") for (const l of HELP) io.notice(l);
        else if (cmd === "reset") {
          for (const s of sides) s.history = [];
          io.notice("conversation cleared");
        } else if (cmd === "system") {
          system = arg === "" ? null : arg;
          io.notice(system === null ? "system prompt removed" : `system prompt set (${system.length} characters); it applies to the whole conversation`);
        } else if (cmd === "save") {
          if (!arg) io.notice("/save needs a file name: /save <file>");
          else {
            const path = resolve(io.cwd, arg);
            try {
              saveConversation(path, {
                format: "realign-chat/1",
                saved: new Date().toISOString(),
                system,
                sampling: sampling ?? null,
                max_new_tokens: maxNewTokens,
                models: sides.map((s) => ({ label: s.label, dir: s.dir, messages: chatMessages(s.tok, system, s.history) })),
              });
              io.notice(`saved to ${path}`);
            } catch (e) {
              const code = (e as NodeJS.ErrnoException).code;
              io.notice(code === "EEXIST" ? `not saved: ${path} already exists (choose another name)` : `not saved: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`);
            }
          }
        } else io.notice(`unknown command /${cmd}; /help lists them`);
        promptUser();
        continue;
      }
      const user = line.startsWith("//") ? line.slice(1) : line;
      for (const side of sides) {
        const labelled = sides.length > 1;
        if (labelled && !json) io.write(`[${side.label}] `);
        generating = new AbortController();
        try {
          const r = await answer(side, system, user, { maxNewTokens, sampling, signal: generating.signal }, json ? () => {} : io.write);
          if (json) io.write(JSON.stringify({ model: r.label, prompt_ids: r.promptIds, new_ids: r.newIds, text: r.text, finish_reason: r.finishReason, ...(r.rank ? { rank: r.rank } : {}) }) + "\n");
          else io.write("\n");
        } catch (e) {
          if (!json) io.write("\n");
          if (e instanceof ContextFullError) io.notice(e.message);
          else if (generating.signal.aborted) io.notice(`${side.label}: reply interrupted (not kept in the conversation)`);
          else throw e;
        } finally {
          generating = null;
        }
      }
      if (io.isTTY) io.write("\n");
      promptUser();
    }
    rl.close();
    return 0;
  } finally {
    for (const s of sides) await s.model.close();
  }
}
