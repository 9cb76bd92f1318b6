// The `realign` command line. Everything the user can get wrong is checked before the run
// directory is created; errors print one clear message and map to exit codes:
// 0 ok, 1 run failed, 2 usage/config error, 3 gate failed, 130 interrupted.
// Option values and positional arguments are taken as typed (scanArgv): the parser underneath
// would read "007" as 7 and "" as 0. --out must be a new or empty folder or a realign run directory
// (checkRunDir); a run that fails before committing a step leaves no folder or file behind.
import { cac, type CAC, type Command } from "cac";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { applyHfEnv, checkPublishable, missingTokenError, checkPublishTarget, checkRunDir, publishFrom, publishLaterLine, pushesToHub, readReportFile, realignRunDir, runBatch, runSchedule, summarizeReportJson, tryItLines, type ReportSummary } from "./batch.ts";
import { publishCommand } from "./publish.ts";
import { defaultRepoName } from "../steps/publish.ts";
import { HubError } from "../hub/errors.ts";
import { checkSettingsPaths, formatSettings, resolveSettings } from "./settings.ts";
import { cliFlag, DEFAULTS, FIELDS, settingsHash, type FieldSpec, type Settings } from "../steps/settings.ts";
import { isLocalModel, resolveToken } from "../hub/repo.ts";
import { ConfigError, didYouMean, UsageError } from "../util/errors.ts";
import { exitCodeFor, EXIT_GATE, EXIT_OK } from "./errors.ts";
import { InterruptedError, StepFailedError } from "../pipeline/errors.ts";
import { loadModelsFile, type ModelsFile } from "./models-file.ts";
import { consoleUI, formatSeconds } from "../pipeline/progress.ts";
import { checkFrom, readDoneRecord, runPipeline, type Step } from "../pipeline/runner.ts";
import { getSteps as registrySteps, STEP_NAMES } from "../steps/index.ts";
import { generateCommand } from "./generate.ts";
import { chatCommand } from "./chat.ts";
import { writeRunReport } from "../report/build.ts";
import { checkPromptSetSizes } from "../evals/datasets.ts";
import { exportCommand } from "./export.ts";
import { DEMO_SETTINGS } from "../steps/reproduce.ts";
import { deviceUnavailable, ortPrepack, ortSpin, ortThreads } from "../engine/session.ts";
import { maxBatch } from "../engine/batch-cap.ts";
import { alpha as fmtAlpha, MISSING, percent, position as fmtPosition } from "../util/format.ts";
import { runAsker } from "./ask.ts";
import type { AskUser } from "../pipeline/runner.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");
export const DEMO_MODEL_DIR = join(REPO_ROOT, "demo", "organism-llama");

/** Injection points for tests and embedding (fake steps, a fixed environment). */
export interface CliDeps {
  getSteps?: () => Step<Settings>[] | Promise<Step<Settings>[]>;
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Whether to ask before publishing (default: stdin is a TTY). */
  interactive?: boolean;
  /** How a run asks the user (the trade-off after calibration); default: the terminal's, when stdin and stdout are one and --yes is not given. */
  ask?: AskUser;
}

type Opts = Record<string, unknown>;

const out = (line = "") => console.log(line);
const err = (line: string) => console.error(line);

// ---- option registration -----------------------------------------------------------------------

/** cac's key for a flag: "--n-train" → "nTrain" (same rule cac applies). */
const cacKey = (flag: string) => flag.replace(/^-+/, "").replace(/([a-z])-([a-z])/g, (_, a: string, b: string) => a + b.toUpperCase());

function defaultNote(spec: FieldSpec): string {
  let v: unknown = DEFAULTS as unknown as Record<string, unknown>;
  for (const p of spec.path.split(".")) v = (v as Record<string, unknown> | undefined)?.[p];
  return v === undefined || v === null ? "" : ` (default: ${String(v)})`;
}

/** Setting flags generated from FIELDS, mapped back to setting paths after parsing. */
const SETTING_FLAGS = new Map<string, FieldSpec>();

function addSettingOptions(cmd: Command, only?: ReadonlySet<string>): void {
  for (const spec of FIELDS) {
    if (spec.path === "model" || (only && !only.has(spec.path))) continue;
    if (spec.path === "publish") {
      cmd.option("--no-publish", "do not push to the Hub (the result stays in the run dir)");
    } else if (spec.path === "useSystemPrompt") {
      cmd.option("--no-system-prompt", "elicit refusals without the safety system prompt");
    } else if (spec.kind.t === "bool") {
      cmd.option(cliFlag(spec.path), spec.help + defaultNote(spec));
    } else {
      // --out's rule is the CLI's (checkRunDir), so its help says it here.
      const help = spec.path === "out" ? `${spec.help}; a new or empty folder, or a realign run directory (it carries .realign-run): any other folder is refused` : spec.help;
      cmd.option(`${cliFlag(spec.path)} <${spec.arg ?? "value"}>`, help + defaultNote(spec));
    }
    SETTING_FLAGS.set(cacKey(cliFlag(spec.path)), spec);
  }
  // cac shows "(default: true)" for --no-x flags, which reads as if --no-x were on by default.
  for (const o of cmd.options) if (o.negated) o.config.default = undefined;
}

function addRunOptions(cmd: Command): Command {
  addSettingOptions(cmd);
  return cmd
    .option("--from <step>", `re-run from this step on (${STEP_NAMES.join(", ")})`)
    .option("--force", "re-run every step, ignoring cached results, and publish even if the gate fails")
    .option("--yes", "do not ask: publish without confirmation, and take the recommended calibration point (on a terminal the run shows the admissible points and asks which)")
    .option("--token <token>", "Hugging Face token (default: HF_TOKEN or the huggingface-cli login); never stored")
    .option("--config <file>", "models.yaml with defaults and per-model settings (default: ./models.yaml if present)");
}

function buildCli(): CAC {
  const cli = cac("realign");
  const main = addRunOptions(cli.command("[model]", "re-align a model: pull → elicit → extract → inject → validate → srr (--srr) → export (--gguf) → publish").ignoreOptionDefaultValue());
  main
    .usage("<repo-id | local-dir> [options]")
    .example("  $ realign cognitivecomputations/Dolphin3.0-Qwen2.5-0.5B --no-publish")
    .example("  $ realign cognitivecomputations/Dolphin3.0-Llama3.2-1B --push-to me/Dolphin3.0-Llama3.2-1B-realigned --yes")
    .example("  $ realign ./models/my-finetune --alpha 6 --layer 12 --device cuda --no-publish")
    .example("  $ realign owner/model --from validate        # re-run validation and publishing only")
    .example("  $ REALIGN_N_TRAIN=128 realign owner/model --no-publish")
    .example("  $ realign demo                              # the built-in demo model, published locally")
    .example("  $ realign batch models.yaml --schedule      # keep every model in models.yaml up to date")
    .example("  $ realign status owner/model                # what is done, timings, report summary")
    .example("  $ realign generate runs/owner--model/inject/model --prompt 'How do I pick a lock?'");

  const demo = cli.command("demo", "run the whole pipeline on the built-in demo model (publishes to <out>/published/)").ignoreOptionDefaultValue();
  addSettingOptions(demo, new Set(["out", "device", "seed", "nTrain", "nVal", "nEval", "maxNewTokens", "layer", "position", "alpha", "rank", "method", "gguf", "srr", "srrCandidates"]));
  demo
    .option("--from <step>", "re-run from this step on")
    .option("--force", "re-run every step")
    .option("--yes", "take the recommended calibration point without asking (on a terminal the demo shows the admissible points and asks which)")
    .example("  $ realign demo --device cpu");

  cli
    .command("generate <model-dir>", "generate text with a (realigned) model; a run directory stands for its re-aligned model")
    .ignoreOptionDefaultValue()
    .option("--prompt <text>", "user message")
    .option("--system <text>", "system prompt")
    .option("--raw", "feed the prompt without the chat template")
    .option("--max-new-tokens <n>", "tokens to generate")
    .option("--device <name>", "auto | cpu | cuda | webgpu")
    .option("--dtype <name>", "float32 (default) | float16")
    .option("--json", "print JSON")
    .option("--temperature <t>", "sample at this temperature (default 0: greedy)")
    .option("--top-p <p>", "sample from the smallest set of tokens holding this probability (with --temperature)")
    .option("--top-k <k>", "sample from the k most likely tokens (with --temperature)")
    .option("--seed <n>", "seed of the sampler (default: a random one, printed)")
    .option("--samples <n>", "samples of the prompt, in one batch (with --temperature)")
    .option("--stop <text>", "stop when the reply contains this text (not printed)")
    .option("--best-of <n>", "sample n replies and print the one --rank ranks first (with --temperature)")
    .option("--rank <method>", "srr (the model dir's srr.safetensors, or a run's srr/scorer/srr.safetensors from --srr) or srr:<file>: Safety Representation Ranking")
    .example("  $ realign generate runs/owner--model/inject/model --prompt 'Write a haiku about rain'")
    .example("  $ realign generate runs/owner--model/inject/model --prompt 'Write a haiku' --temperature 0.8 --top-p 0.95 --seed 1 --samples 4");

  cli
    .command("chat <model-or-run-dir>", "talk with a model through its chat template (stdin: one line per turn, /help for commands)")
    .ignoreOptionDefaultValue()
    .option("--system <text>", "system prompt (/system <text> changes it)")
    .option("--vs [model-dir]", "answer every turn with a second model too; alone, for a run dir: its original (the pull source)")
    .option("--max-new-tokens <n>", "tokens per reply (default 256)")
    .option("--temperature <t>", "sample at this temperature (default 0: greedy)")
    .option("--top-p <p>", "nucleus sampling (with --temperature)")
    .option("--top-k <k>", "top-k sampling (with --temperature)")
    .option("--seed <n>", "seed of the sampler (default: a random one, printed)")
    .option("--device <name>", "auto | cpu | cuda | webgpu")
    .option("--dtype <name>", "float32 (default) | float16")
    .option("--best-of <n>", "each reply: the top-ranked of n samples (with --temperature and --rank)")
    .option("--rank <method>", "srr (each model dir's srr.safetensors; a run's from its srr step) or srr:<file>")
    .option("--json", "one JSON line per reply (model, prompt_ids, new_ids, text) instead of streamed text")
    .example("  $ realign chat runs/owner--model --vs            # the re-aligned model next to the original")
    .example("  $ realign chat ./my-model --system 'Be brief.' < questions.txt");

  cli
    .command("export <model-dir>", "write a model directory as a GGUF file for llama.cpp, Ollama and LM Studio")
    .ignoreOptionDefaultValue()
    .option("--gguf", "write GGUF (the only format)")
    .option("--type <type>", "f32 | f16 (default) | bf16 | q8_0 for the matrices (norms and biases stay f32)")
    .option("--out <file>", "output file, never replaced (default: ./<model>-<TYPE>.gguf)")
    .option("--pre <name>", "llama.cpp pre-tokenizer name for byte-level BPE tokenizers (default: detected from tokenizer.json)")
    .option("--pre-from <gguf>", "take the pre-tokenizer name from the base model's GGUF instead")
    .option("--json", "print the result as JSON")
    .example("  $ realign export runs/owner--model/inject/model --gguf --type q8_0 --out model-Q8_0.gguf");

  const batch = cli.command("batch [models-yaml]", "run every enabled model in models.yaml; one failure does not stop the rest").ignoreOptionDefaultValue();
  addSettingOptions(batch, new Set(["device", "offline", "publish", "hubUrl"]));
  batch
    .option("--schedule", "stay up and run the batch on the file's schedule: (cron)")
    .option("--force", "re-run every model, even when complete")
    .option("--token <token>", "Hugging Face token (default: HF_TOKEN); never stored")
    .option("--runs-dir <dir>", "where batch-<timestamp>.json summaries go (default: runs)")
    .example("  $ realign batch                       # ./models.yaml")
    .example("  $ realign batch models.yaml --schedule");

  cli
    .command("status [model]", "show which steps of a run are done, their timings and the report summary")
    .ignoreOptionDefaultValue()
    .option("--out <dir>", "run directory (default: from the model, runs/<model-slug>)")
    .option("--config <file>", "models.yaml (to find a per-model out:)")
    .option("--json", "print the status as JSON")
    .example("  $ realign status cognitivecomputations/Dolphin3.0-Qwen2.5-0.5B")
    .example("  $ realign status --out runs/demo");

  cli
    .command("publish <run-dir>", "publish a finished run (one that had no token, was offline or ran with --no-publish); the gate and idempotency of the publish step")
    .ignoreOptionDefaultValue()
    .option("--push-to <repo>", "target repo owner/name, or file:<dir> (default: the run's, else <your-user>/<model>-ROSI)")
    .option("--private", "create the target repo as private")
    .option("--hub-url <url>", "Hugging Face Hub endpoint (default: HF_ENDPOINT, else the run's)")
    .option("--token <token>", "Hugging Face write token (default: HF_TOKEN, HF_TOKEN_PATH or the huggingface-cli login); never stored")
    .option("--yes", "publish without asking for confirmation")
    .option("--force", "publish even though the run's gate failed")
    .example("  $ realign publish runs/owner--model --yes")
    .example("  $ realign publish runs/owner--model --push-to me/model-realigned");

  registerFleetCommands(cli);

  cli.help((sections) => [...sections, { title: "Environment", body: HF_ENV_HELP }]);
  cli.version(readPackageVersion());
  return cli;
}

/** The environment variables realign reads, as `--help` lists them. */
const HF_ENV_HELP = [
  "  HF_TOKEN, HF_TOKEN_PATH   Hugging Face token, or the file holding it (default $HF_HOME/token); --token wins",
  "  HF_HUB_OFFLINE=1          use only the Hugging Face cache, like --offline",
  "  HF_ENDPOINT               the Hub's URL, like --hub-url (which wins)",
  "  HF_HOME, HF_HUB_CACHE     where the Hugging Face cache is (default ~/.cache/huggingface/hub)",
  "  REALIGN_<SETTING>         any setting, e.g. REALIGN_N_TRAIN=128 (below the command line, above models.yaml)",
  "  REDIS_URL                 the fleet's Redis for enqueue, worker, schedule, queue (default redis://127.0.0.1:6379)",
].join("\n");

function readPackageVersion(): string {
  try {
    return (JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { version?: string }).version ?? "0.0.0";
  } catch {
    return "0.0.0";
  }
}

// ---- option checking ---------------------------------------------------------------------------

/** The flag as the user typed it, for messages ("--n-trian"), found in raw argv by cac key. */
function typedFlag(argv: readonly string[], key: string): string {
  for (const a of argv) {
    if (!a.startsWith("-") || a === "--") continue;
    const name = a.split("=")[0]!;
    const bare = name.replace(/^-+/, "").replace(/^no-/, "");
    if (cacKey(bare) === key || cacKey(name) === key) return name;
  }
  return key.length > 1 ? `--${key}` : `-${key}`;
}

function knownFlags(cli: CAC, cmd: Command): string[] {
  const flags: string[] = [];
  for (const o of [...cmd.options, ...cli.globalCommand.options]) {
    for (const m of o.rawName.split(/[<[]/)[0]!.matchAll(/--?[A-Za-z][\w-]*/g)) flags.push(m[0]);
  }
  return flags;
}

/** cac lets unknown options through (and mangles some values); check everything ourselves. */
function checkOptions(cli: CAC, cmd: Command, argv: readonly string[], opts: Opts): void {
  for (const [key, value] of Object.entries(opts)) {
    if (key === "--") {
      if (Array.isArray(value) && value.length) throw new UsageError(`unexpected arguments after --: ${value.join(" ")}`);
      continue;
    }
    const option = cmd.hasOption(key) ?? cli.globalCommand.hasOption(key);
    const flag = typedFlag(argv, key);
    if (!option && /^\d/.test(key)) {
      // mri reads "--position -1" as a flag without value followed by a short option "-1".
      const i = argv.indexOf(`-${key}`);
      const prev = i > 0 && argv[i - 1]!.startsWith("--") ? argv[i - 1]! : "--alpha";
      throw new UsageError(`"-${key}" looks like a negative number: attach it with =, e.g. ${prev}=-${key}`);
    }
    if (!option) {
      const hint = didYouMean(flag, knownFlags(cli, cmd));
      throw new UsageError(`unknown option ${flag}${hint ? ` (did you mean ${hint}?)` : ""}; see realign${cmd.name ? ` ${cmd.name}` : ""} --help`);
    }
    if (Array.isArray(value)) throw new UsageError(`${flag} was given more than once`);
    if (option.required && value === true) throw new UsageError(`${flag} needs a value`);
  }
}

interface ArgvScan {
  /** Each value option's words as typed, by cac key, in order; true: the flag had no value. */
  values: Map<string, (string | true)[]>;
  /** The positional words as typed (a command's name included). */
  positionals: string[];
}

/**
 * argv as typed. mri (under cac) reads every word that looks like a number as one ("007" → 7,
 * "" → 0, "0x10" → 16), also a word after a boolean flag, which it pushes back as a positional.
 * This follows mri's rules for which word belongs to which flag (a value flag takes the next word
 * unless it starts with "-"; a boolean takes only "true"/"false"; `--flag=` is an explicit empty
 * value) but keeps every word as text.
 */
function scanArgv(argv: readonly string[], booleans: ReadonlySet<string>): ArgvScan {
  const values = new Map<string, (string | true)[]>();
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") break;
    const dashes = /^-*/.exec(a)![0].length;
    if (dashes === 0) {
      positionals.push(a);
      continue;
    }
    if (a.slice(dashes, dashes + 3) === "no-") continue;
    const eq = a.indexOf("=", dashes + 1);
    const name = a.slice(dashes, eq === -1 ? undefined : eq);
    // mri: in "-abc" only the last letter takes a value.
    const key = cacKey(dashes === 1 ? name.slice(-1) : name);
    const next = argv[i + 1];
    const nextIsWord = next !== undefined && !next.startsWith("-");
    if (booleans.has(key)) {
      if (eq === -1 && (next === "true" || next === "false")) i++;
      continue;
    }
    let v: string | true = true;
    if (eq !== -1) v = a.slice(eq + 1);
    else if (nextIsWord) v = argv[++i]!;
    values.set(key, [...(values.get(key) ?? []), v]);
  }
  return { values, positionals };
}

/** Keys of the boolean (valueless) options of a command and the global ones (--help, --version). */
function booleanKeys(cli: CAC, cmd: Command): Set<string> {
  const keys = new Set<string>();
  for (const o of [...cmd.options, ...cli.globalCommand.options]) if (o.isBoolean && !o.negated) for (const n of o.names) keys.add(n);
  return keys;
}

/** Parsed options (values as typed) → setting overrides keyed by setting path. */
function settingOverrides(opts: Opts): Record<string, unknown> {
  const cliSettings: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(opts)) {
    if (key === "systemPrompt") {
      // --system-prompt <file> and --no-system-prompt share cac's key.
      if (value === false) cliSettings.useSystemPrompt = false;
      else cliSettings.systemPrompt = value;
      continue;
    }
    const spec = SETTING_FLAGS.get(key);
    if (spec) cliSettings[spec.path] = value;
  }
  return cliSettings;
}

// ---- shared pieces -----------------------------------------------------------------------------

function findModelsFile(opts: Opts, env: Record<string, string | undefined>, cwd: string): ModelsFile | null {
  const explicit = typeof opts.config === "string" ? opts.config : env.REALIGN_CONFIG;
  if (explicit) return loadModelsFile(resolve(cwd, explicit));
  const local = join(cwd, "models.yaml");
  return existsSync(local) ? loadModelsFile(local) : null;
}

function installSignals(): { signal: AbortSignal; dispose: () => void } {
  const ac = new AbortController();
  let count = 0;
  const handler = (sig: NodeJS.Signals) => {
    count++;
    if (count > 1) {
      err("\ninterrupted again: exiting now (unfinished work is cleaned up on the next run)");
      process.exit(sig === "SIGTERM" ? 143 : 130);
    }
    err(`\n${sig}: stopping the current step...`);
    ac.abort(sig);
  };
  process.on("SIGINT", handler);
  process.on("SIGTERM", handler);
  return {
    signal: ac.signal,
    dispose: () => {
      process.off("SIGINT", handler);
      process.off("SIGTERM", handler);
    },
  };
}

async function confirmPublish(settings: Settings, opts: Opts, interactive: boolean, token: string | null): Promise<void> {
  if (!pushesToHub(settings) || opts.yes === true || checkPublishable(settings, token) !== null) return;
  // The real target: the token's user (the Hub's whoami) when --push-to is not given.
  let target = settings.pushTo ?? `<the token's account>/${defaultRepoName(settings.model)}`;
  if (!settings.pushTo && token) {
    const { resolvePublishRepo } = await import("../hub/hub.ts");
    try {
      target = await resolvePublishRepo({ defaultName: defaultRepoName(settings.model), token, hubUrl: settings.hubUrl, retries: 1 });
    } catch (e) {
      // A rejected token is worth knowing before the download; an unreachable Hub shows at the pull.
      if (e instanceof HubError && (e.code === "auth" || e.code === "bad_input")) throw new UsageError(e.message);
    }
  }
  if (!interactive) {
    throw new UsageError(`this run would publish to ${target} on the Hub: pass --yes to confirm, or --no-publish to keep the result local`);
  }
  const answer = prompt(`After the gate passes, publish the realigned model to ${target}${settings.private ? " (private)" : ""}? [y/N]`);
  if (!answer || !/^y(es)?$/i.test(answer.trim())) throw new UsageError("not publishing: re-run with --no-publish, or answer y");
}

function summarizeReport(r: ReportSummary): string[] {
  const lines: string[] = [];
  const pct = percent;
  const val = (v: number | null) => (v === null ? MISSING : String(v));
  // The position as inject and report.md write it: '5 ("\n")'.
  const d = r.direction;
  if (d) lines.push(`direction: ${d.method ? `${d.method}, ` : ""}layer ${val(d.layer)}, position ${fmtPosition(d.position, d.position_label)}, α ${fmtAlpha(d.alpha)}, rank ${val(d.rank)}`);
  if (r.baseline || r.realigned) {
    lines.push(`harmful refusal: ${pct(r.baseline?.harmful_refusal)} → ${pct(r.realigned?.harmful_refusal)}; harmless refusal: ${pct(r.baseline?.harmless_refusal)} → ${pct(r.realigned?.harmless_refusal)}`);
  }
  if (r.gate) {
    const reasons = r.gate.reasons.length ? ` (${r.gate.reasons.join("; ")})` : "";
    lines.push(`gate: ${r.gate.passed === null ? "– (no verdict recorded)" : r.gate.passed ? "passed" : `FAILED${reasons}`}`);
  }
  lines.push(`published: ${r.published ? (r.published.url ?? r.published.repo ?? "yes") : "no"}`);
  return lines;
}

interface RunRequest {
  settings: Settings;
  sources: Record<string, string>;
  warnings: string[];
  steps: Step<Settings>[];
  token: string | null;
  from: string | null;
  force: boolean;
  /** Who answers the trade-off question after calibration (undefined: nobody, the recommended point). */
  ask?: AskUser;
}

/** How messages name the run directory: the flag when the user gave it, else what it is. */
const outLabel = (sources: Record<string, string>) => (sources.out?.startsWith("cli") ? "--out" : "run directory");

/** Run the pipeline for resolved settings: print them, run, print the outcome. */
async function executeRun(req: RunRequest): Promise<number> {
  const { settings, sources } = req;
  const hash = settingsHash(settings);
  for (const w of req.warnings) err(`warning: ${w}`);
  out(`realign ${settings.model} → ${settings.out}`);
  out(`settings (hash ${hash.slice(0, 12)}):`);
  for (const l of formatSettings(settings, sources)) out(l);
  out();
  // Sizes are checked before the pull, so a run that cannot split its prompts never downloads a model.
  await checkPromptSetSizes(settings);
  const { signal, dispose } = installSignals();
  try {
    const outcome = await runPipeline({
      steps: req.steps,
      settings,
      outDir: settings.out,
      // A run that could not publish earlier (no token) publishes now that it can.
      from: req.force ? req.from : publishFrom(settings, req.token, req.from),
      force: req.force,
      signal,
      ui: consoleUI(),
      secrets: { hfToken: req.token },
      owner: realignRunDir(settings, outLabel(sources)),
      removeCreatedDir: true,
      ask: req.ask,
    });
    const report = writeRunReport({ outDir: settings.out, run: outcome, base: { model: settings.model, revision: settings.revision, settings_hash: hash } });
    out();
    for (const l of summarizeReport(summarizeReportJson(report)!)) out(l);
    out(`report: ${join(settings.out, "report.md")}`);
    for (const l of tryItLines(settings)) out(l);
    const unpublished = checkPublishable(settings, req.token);
    if (unpublished && !outcome.gateFailed) out(publishLaterLine(settings, unpublished));
    if (outcome.gateFailed) {
      err(`gate failed: ${outcome.gateFailed.join("; ")}; not published`);
      return EXIT_GATE;
    }
    return EXIT_OK;
  } finally {
    dispose();
  }
}

/** Who answers questions during a run: the test's asker, else the terminal's (none without a TTY or with --yes). */
function askerFor(opts: Opts, deps: CliDeps): AskUser | undefined {
  if (opts.yes === true) return undefined;
  return deps.ask ?? runAsker({ yes: false, interactive: deps.interactive ?? Boolean(process.stdin.isTTY && process.stdout.isTTY) });
}

async function loadSteps(deps: CliDeps): Promise<Step<Settings>[]> {
  return await (deps.getSteps ?? registrySteps)();
}

// ---- commands ----------------------------------------------------------------------------------

async function cmdRun(model: string | undefined, opts: Opts, argv: readonly string[], deps: CliDeps, cli: CAC): Promise<number> {
  const env = deps.env ?? process.env;
  const cwd = deps.cwd ?? process.cwd();
  if (!model) {
    cli.outputHelp();
    throw new UsageError("no model given: realign <repo-id | local-dir> [options]");
  }
  const modelsYaml = findModelsFile(opts, env, cwd);
  const resolved = resolveSettings({ cli: settingOverrides(opts), env, modelsYaml, repo: model, cwd });
  applyHfEnv(resolved, env);
  try {
    checkSettingsPaths(resolved.settings, resolved.sources, cwd);
  } catch (e) {
    // "realign statsu" is more likely a mistyped command than a model.
    const hint = !model.includes("/") && isLocalModel(model, cwd) ? didYouMean(model, ["demo", "generate", "chat", "batch", "status", "publish", "enqueue", "worker", "schedule", "queue"]) : null;
    if (hint && e instanceof ConfigError) throw new ConfigError([...e.problems, `(did you mean \`realign ${hint}\`?)`]);
    throw e;
  }
  // Before any download: a device whose execution provider is not installed cannot run the model at all.
  const noDevice = deviceUnavailable(resolved.settings.device);
  if (noDevice) throw new UsageError(noDevice);
  const token = resolveToken(typeof opts.token === "string" ? opts.token : null, env);
  // Publishing asked for in so many words, without a token: say so now, not after the run.
  const noToken = missingTokenError(resolved.settings, resolved.sources, token);
  if (noToken) throw new UsageError(noToken);
  const unpublished = checkPublishable(resolved.settings, token);
  if (unpublished) err(`note: ${unpublished === "offline" ? "offline" : "no Hugging Face token (HF_TOKEN, HF_TOKEN_PATH or --token)"}: the run does everything but publish; publish later with \`realign publish ${resolved.settings.out}\``);
  checkPublishTarget(resolved.settings);
  const steps = await loadSteps(deps);
  const from = typeof opts.from === "string" ? opts.from : null;
  checkFrom(steps, from);
  checkRunDir(resolved.settings, steps, outLabel(resolved.sources));
  await confirmPublish(resolved.settings, opts, deps.interactive ?? Boolean(process.stdin.isTTY), token);
  return executeRun({ ...resolved, steps, token, from, force: opts.force === true, ask: askerFor(opts, deps) });
}

async function cmdDemo(opts: Opts, deps: CliDeps): Promise<number> {
  const env = deps.env ?? process.env;
  const cwd = deps.cwd ?? process.cwd();
  if (!existsSync(DEMO_MODEL_DIR)) {
    throw new UsageError(`the demo model is not available: ${DEMO_MODEL_DIR} does not exist yet`);
  }
  // Demo never pushes: the publish step writes what it would upload to <out>/published/ instead.
  // The demo model (a small organism) refuses ~40 % of harmful prompts under a safety prompt, which
  // clears the default elicitation gap (elicitMinGap 0.2); prompt-set sizes fit the built-in sets (96 each).
  const overrides = settingOverrides(opts);
  const out = typeof overrides.out === "string" ? overrides.out : join("runs", "demo");
  const cli = { out, ...DEMO_SETTINGS, ...overrides, publish: true, pushTo: `file:${join(out, "published")}` };
  const resolved = resolveSettings({ cli, env, modelsYaml: null, repo: DEMO_MODEL_DIR, cwd });
  resolved.settings.model = DEMO_MODEL_DIR;
  // What the demo sets itself is the demo's, not a flag the user typed.
  for (const key of ["out", ...Object.keys(DEMO_SETTINGS), "publish", "pushTo"]) if (!(key in overrides)) resolved.sources[key] = "demo";
  checkSettingsPaths(resolved.settings, resolved.sources, cwd);
  checkPublishTarget(resolved.settings);
  const steps = await loadSteps(deps);
  const from = typeof opts.from === "string" ? opts.from : null;
  checkFrom(steps, from);
  checkRunDir(resolved.settings, steps, outLabel(resolved.sources));
  return executeRun({ ...resolved, steps, token: null, from, force: opts.force === true, ask: askerFor(opts, deps) });
}

async function cmdGenerate(modelDir: string, opts: Opts): Promise<number> {
  const { "--": _ignored, ...rest } = opts;
  return generateCommand(modelDir, rest);
}

async function cmdBatch(file: string | undefined, opts: Opts, deps: CliDeps): Promise<number> {
  const env = deps.env ?? process.env;
  const cwd = deps.cwd ?? process.cwd();
  const path = resolve(cwd, file ?? env.REALIGN_CONFIG ?? "models.yaml");
  const modelsFile = loadModelsFile(path);
  const token = resolveToken(typeof opts.token === "string" ? opts.token : null, env);
  const common = {
    env,
    cwd,
    cli: settingOverrides(opts),
    getSteps: () => loadSteps(deps),
    token,
    force: opts.force === true,
    runsDir: typeof opts.runsDir === "string" ? resolve(cwd, opts.runsDir) : resolve(cwd, "runs"),
    ui: consoleUI(),
  };
  const { signal, dispose } = installSignals();
  try {
    if (opts.schedule === true) {
      await runSchedule({ ...common, signal, loadFile: () => loadModelsFile(path) });
      if (signal.aborted) throw new InterruptedError(String(signal.reason));
      return EXIT_OK;
    }
    const result = await runBatch({ ...common, file: modelsFile, signal });
    return result.exitCode;
  } finally {
    dispose();
  }
}

export interface StatusInfo {
  out: string;
  /** settings.json when it holds a JSON object, else null. */
  settings: Record<string, unknown> | null;
  steps: { name: string; done: boolean; seconds: number | null; finished: string | null; gate_failed: string[] | null }[];
  /** report.json as parsed (any JSON), null when absent or unreadable. */
  report: unknown;
  /** What status prints from it, every field checked. */
  report_summary: ReportSummary | null;
  /** Why report.json could not be used (not JSON, not an object, unreadable); null otherwise. */
  report_problem: string | null;
}

/** Read a run directory without changing it; whatever its files hold, this does not throw for them. */
export function readStatus(outDir: string): StatusInfo {
  let settings: Record<string, unknown> | null = null;
  try {
    const v: unknown = JSON.parse(readFileSync(join(outDir, "settings.json"), "utf8"));
    if (v !== null && typeof v === "object" && !Array.isArray(v)) settings = v as Record<string, unknown>;
  } catch {
    // absent or not JSON: no settings to show
  }
  const isDir = (p: string) => {
    try {
      return statSync(p).isDirectory();
    } catch {
      return false; // a broken link, or unreadable
    }
  };
  const names: string[] = [...STEP_NAMES];
  for (const d of readdirSync(outDir)) {
    if (!d.startsWith(".") && !names.includes(d) && isDir(join(outDir, d)) && readDoneRecord(join(outDir, d))) names.push(d);
  }
  const report = readReportFile(outDir);
  return {
    out: outDir,
    settings,
    steps: names.map((name) => {
      const rec = readDoneRecord(join(outDir, name));
      return { name, done: rec !== null, seconds: rec?.seconds ?? null, finished: rec?.finished || null, gate_failed: rec?.gate_failed ?? null };
    }),
    report: report.raw,
    report_summary: report.summary,
    report_problem: report.problem,
  };
}

async function cmdStatus(model: string | undefined, opts: Opts, deps: CliDeps): Promise<number> {
  const env = deps.env ?? process.env;
  const cwd = deps.cwd ?? process.cwd();
  let outDir: string;
  if (typeof opts.out === "string") outDir = resolve(cwd, opts.out);
  else if (model) {
    const { settings } = resolveSettings({ env, modelsYaml: findModelsFile(opts, env, cwd), repo: model, cwd });
    outDir = resolve(cwd, settings.out);
  } else throw new UsageError("status needs a model or --out <dir>");
  if (!existsSync(outDir) || !statSync(outDir).isDirectory()) throw new UsageError(`no run found at ${outDir}`);
  let st: StatusInfo;
  try {
    st = readStatus(outDir);
  } catch (e) {
    throw new UsageError(`${outDir} cannot be read: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (opts.json === true) {
    out(JSON.stringify(st, null, 2));
    return EXIT_OK;
  }
  const runModel = typeof st.settings?.model === "string" ? st.settings.model : null;
  out(`run: ${outDir}${runModel ? ` (model ${runModel})` : ""}`);
  const w = Math.max(...st.steps.map((s) => s.name.length));
  for (const s of st.steps) {
    const state = s.gate_failed ? "gate failed" : s.done ? "done" : "not done";
    out(`  ${s.name.padEnd(w)}  ${state.padEnd(11)}  ${s.seconds !== null ? formatSeconds(s.seconds).padStart(10) : "".padStart(10)}  ${s.finished ?? ""}`.trimEnd());
  }
  if (st.report_summary) {
    out("report:");
    for (const l of summarizeReport(st.report_summary)) out(`  ${l}`);
  } else out(`report: ${st.report_problem ? `unreadable (${st.report_problem})` : "none yet"}`);
  return EXIT_OK;
}

// ---- the fleet (cli/fleet.ts: BullMQ + Redis) ----------------------------------------------------

function registerFleetCommands(cli: CAC): void {
  const fleetSettings = new Set(["device", "offline", "publish", "hubUrl"]);
  const enqueue = cli.command("enqueue [models-yaml]", "fleet: add one job per enabled model of models.yaml to the Redis queue (REDIS_URL); an existing job is not added again").ignoreOptionDefaultValue();
  addSettingOptions(enqueue, fleetSettings);
  enqueue
    .option("--queue <name>", "queue name (default: realign)")
    .option("--attempts <n>", "tries per job before it fails, first run included (default: 5)")
    .option("--backoff <ms>", "first retry delay, doubled at each retry (default: 30000)")
    .option("--retry-failed", "retry jobs of these models that had failed (same settings)")
    .example("  $ REDIS_URL=redis://queue-host:6379 realign enqueue models.yaml");
  const schedule = cli.command("schedule [models-yaml]", "fleet: register one BullMQ job scheduler per enabled model on models.yaml's schedule: (again: updates them, one per model)").ignoreOptionDefaultValue();
  addSettingOptions(schedule, fleetSettings);
  schedule
    .option("--queue <name>", "queue name (default: realign)")
    .option("--attempts <n>", "tries per scheduled run (default: 5)")
    .option("--backoff <ms>", "first retry delay, doubled at each retry (default: 30000)")
    .example("  $ realign schedule models.yaml        # once, from any machine");
  cli
    .command("worker", "fleet: take jobs from the queue and run them (one worker per GPU); SIGTERM finishes the current step and hands the job back")
    .ignoreOptionDefaultValue()
    .option("--concurrency <n>", "jobs at once (default: 1, the sane choice for one GPU)")
    .option("--device <name>", "auto | cpu | cuda | webgpu for every job (default: the job's)")
    .option("--queue <name>", "queue name (default: realign)")
    .option("--name <name>", "this worker's name in the status table (default: <host>:<pid>)")
    .option("--lock-duration <ms>", "how long a job stays taken without this worker renewing it; a killed worker's job waits this long (default: 30000)")
    .option("--stalled-interval <ms>", "how often jobs of dead workers are looked for (default: 30000)")
    .example("  $ CUDA_VISIBLE_DEVICES=0 realign worker --device cuda");
  cli
    .command("queue", "fleet: the queue's jobs: waiting, active (worker, step, since), completed, failed with reasons; schedulers")
    .ignoreOptionDefaultValue()
    .option("--queue <name>", "queue name (default: realign)")
    .option("--limit <n>", "jobs shown per state (default: 20)")
    .option("--json", "print the status as JSON")
    .example("  $ realign queue --json");
}

async function cmdFleet(name: string, file: string | undefined, opts: Opts, deps: CliDeps): Promise<number> {
  // Loaded on use: the other commands need neither BullMQ nor ioredis.
  const fleet = await import("./fleet.ts");
  const fleetDeps = { env: deps.env ?? process.env, cwd: deps.cwd ?? process.cwd(), overrides: settingOverrides(opts) };
  if (name === "enqueue") return fleet.enqueueCommand(file, opts, fleetDeps);
  if (name === "schedule") return fleet.scheduleCommand(file, opts, fleetDeps);
  if (name === "worker") return fleet.workerCommand(opts, fleetDeps);
  return fleet.queueCommand(opts, fleetDeps);
}

// ---- entry -------------------------------------------------------------------------------------

function printError(e: unknown, env: Record<string, string | undefined>): void {
  if (e instanceof ConfigError) {
    err(e.problems.length > 1 ? `realign: ${e.problems.length} problems:\n${e.problems.map((p) => `  ${p}`).join("\n")}` : `realign: ${e.message}`);
  } else if (e instanceof UsageError || e instanceof InterruptedError) {
    err(`realign: ${e.message}`);
  } else {
    err(`realign: ${e instanceof Error ? e.message : String(e)}`);
    const cause = e instanceof StepFailedError ? e.cause : e;
    if (env.REALIGN_DEBUG) err(cause instanceof Error ? (cause.stack ?? cause.message) : String(cause));
    else err("(set REALIGN_DEBUG=1 for the stack trace)");
  }
}

/** Parse argv (process.argv layout: [runtime, script, ...args]), run the command, return the exit code. */
export async function main(argv: readonly string[], deps: CliDeps = {}): Promise<number> {
  const env = deps.env ?? process.env;
  const args = argv.slice(2);
  try {
    const cli = buildCli();
    const parsed = cli.parse([...argv], { run: false });
    if (parsed.options.help || parsed.options.version) return EXIT_OK;
    const cmd = cli.matchedCommand;
    if (!cmd) throw new UsageError(`unknown command ${String(parsed.args[0])}; see realign --help`);
    const opts: Opts = { ...parsed.options };
    const typed = scanArgv(args, booleanKeys(cli, cmd));
    // Values exactly as typed; a flag given twice keeps cac's list (checkOptions reports it).
    for (const [key, words] of typed.values) if (key in opts && words.length === 1 && words[0] !== true) opts[key] = words[0];
    checkOptions(cli, cmd, args, opts);
    const pos = cmd.name ? typed.positionals.slice(1) : typed.positionals;
    const maxArgs = cmd.args.length;
    if (pos.length > maxArgs) throw new UsageError(`unexpected argument${pos.length - maxArgs > 1 ? "s" : ""}: ${pos.slice(maxArgs).join(" ")}`);
    // The engine's environment knobs, checked before any work (a typo must not surface mid-run); the
    // engine reads them from the process's environment, so that is the one checked.
    ortThreads(process.env);
    ortSpin(process.env);
    ortPrepack(process.env);
    maxBatch(process.env);
    switch (cmd.name) {
      case "":
        return await cmdRun(pos[0], opts, args, deps, cli);
      case "demo":
        return await cmdDemo(opts, deps);
      case "generate":
        if (!pos[0]) throw new UsageError("generate needs a model or run directory: realign generate <model-dir | run-dir> --prompt <text>");
        return await cmdGenerate(pos[0], opts);
      case "chat": {
        if (!pos[0]) throw new UsageError("chat needs a model or run directory: realign chat <model-or-run-dir>");
        const { "--": _ignored, ...chatOpts } = opts;
        const isTTY = Boolean(process.stdin.isTTY && process.stdout.isTTY);
        return await chatCommand(pos[0], chatOpts, { input: process.stdin, write: (t) => void process.stdout.write(t), notice: err, isTTY, cwd: deps.cwd ?? process.cwd() });
      }
      case "export": {
        if (!pos[0]) throw new UsageError("export needs a model directory: realign export <model-dir> --gguf [--type f16] [--out file.gguf]");
        const { "--": _ignored, ...exportOpts } = opts;
        return await exportCommand(pos[0], exportOpts);
      }
      case "publish": {
        if (!pos[0]) throw new UsageError("publish needs a run directory: realign publish <run-dir> [--push-to owner/name]");
        const { signal, dispose } = installSignals();
        try {
          return await publishCommand(pos[0], opts, { env, cwd: deps.cwd ?? process.cwd(), steps: await loadSteps(deps), interactive: deps.interactive ?? Boolean(process.stdin.isTTY), ui: consoleUI(), signal });
        } finally {
          dispose();
        }
      }
      case "batch":
        return await cmdBatch(pos[0], opts, deps);
      case "status":
        return await cmdStatus(pos[0], opts, deps);
      case "enqueue":
      case "schedule":
      case "worker":
      case "queue":
        return await cmdFleet(cmd.name, pos[0], opts, deps);
      default:
        throw new UsageError(`unknown command ${cmd.name}`);
    }
  } catch (e) {
    printError(e, env);
    return exitCodeFor(e);
  }
}

if (import.meta.main) {
  const code = await main(process.argv);
  process.exit(code);
}
