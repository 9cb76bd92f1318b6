// The `realign` command line. Everything the user can get wrong is checked before the run
// directory is created; errors print one clear message and map to exit codes:
// 0 ok, 1 run failed, 2 usage/config error, 3 gate failed, 130 interrupted.
import { cac, type CAC, type Command } from "cac";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { checkPublishable, pushesToHub, runBatch, runSchedule } from "./batch.ts";
import { checkSettingsPaths, formatSettings, resolveSettings } from "./settings.ts";
import { cliFlag, DEFAULTS, FIELDS, settingsHash, type FieldSpec, type Settings } from "../steps/settings.ts";
import { isLocalModel, resolveToken } from "../hub/repo.ts";
import { ConfigError, didYouMean, UsageError } from "../util/errors.ts";
import { exitCodeFor, EXIT_GATE, EXIT_OK } from "./errors.ts";
import { InterruptedError, StepFailedError } from "../pipeline/errors.ts";
import { loadModelsFile, type ModelsFile } from "./models-file.ts";
import { consoleUI, formatSeconds } from "../pipeline/progress.ts";
import type { RunReport } from "../report/report.ts";
import { checkFrom, readDoneRecord, runPipeline, type Step } from "../pipeline/runner.ts";
import { getSteps as registrySteps, STEP_NAMES } from "../steps/index.ts";
import { generateCommand } from "./generate.ts";
import { writeRunReport } from "../report/build.ts";
import { checkPromptSetSizes } from "../evals/datasets.ts";

const REPO_ROOT = resolve(import.meta.dir, "..");
export const DEMO_MODEL_DIR = join(REPO_ROOT, "demo", "organism-llama");

/** Injection points for tests and embedding (fake steps, a fixed environment). */
export interface CliDeps {
  getSteps?: () => Step<Settings>[] | Promise<Step<Settings>[]>;
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Whether to ask before publishing (default: stdin is a TTY). */
  interactive?: boolean;
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
      cmd.option(`${cliFlag(spec.path)} <${spec.arg ?? "value"}>`, spec.help + defaultNote(spec));
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
    .option("--yes", "publish without asking for confirmation")
    .option("--token <token>", "Hugging Face token (default: HF_TOKEN or the huggingface-cli login); never stored")
    .option("--config <file>", "models.yaml with defaults and per-model settings (default: ./models.yaml if present)");
}

function buildCli(): CAC {
  const cli = cac("realign");
  const main = addRunOptions(cli.command("[model]", "re-align a model: pull → elicit → extract → inject → validate → publish").ignoreOptionDefaultValue());
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
  addSettingOptions(demo, new Set(["out", "device", "seed", "nTrain", "nVal", "nEval", "maxNewTokens", "layer", "position", "alpha", "rank"]));
  demo.option("--from <step>", "re-run from this step on").option("--force", "re-run every step").example("  $ realign demo --device cpu");

  cli
    .command("generate <model-dir>", "generate text with a (realigned) model")
    .ignoreOptionDefaultValue()
    .option("--prompt <text>", "user message")
    .option("--system <text>", "system prompt")
    .option("--raw", "feed the prompt without the chat template")
    .option("--max-new-tokens <n>", "tokens to generate")
    .option("--device <name>", "auto | cpu | cuda | webgpu")
    .option("--dtype <name>", "float32 (default) | float16")
    .option("--json", "print JSON")
    .example("  $ realign generate runs/owner--model/inject/model --prompt 'Write a haiku about rain'");

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

  cli.help();
  cli.version(readPackageVersion());
  return cli;
}

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

/** mri turns "0123" into 123; for string options take the text exactly as typed. */
function rawValue(argv: readonly string[], flag: string): string | null {
  let found: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") break;
    if (a.startsWith(flag + "=")) found = a.slice(flag.length + 1);
    else if (a === flag && i + 1 < argv.length) found = argv[i + 1]!;
  }
  return found;
}

/** Parsed cac options → setting overrides keyed by setting path. */
function settingOverrides(opts: Opts, argv: readonly string[]): Record<string, unknown> {
  const cliSettings: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(opts)) {
    if (key === "systemPrompt") {
      // --system-prompt <file> and --no-system-prompt share cac's key.
      if (value === false) cliSettings.useSystemPrompt = false;
      else cliSettings.systemPrompt = rawValue(argv, "--system-prompt") ?? String(value);
      continue;
    }
    const spec = SETTING_FLAGS.get(key);
    if (!spec) continue;
    let v = value;
    if (spec.kind.t === "string" && typeof v === "number") v = rawValue(argv, cliFlag(spec.path)) ?? String(v);
    cliSettings[spec.path] = v;
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

function confirmPublish(settings: Settings, opts: Opts, interactive: boolean): void {
  if (!pushesToHub(settings) || opts.yes === true) return;
  const target = settings.pushTo ?? "<your account>/<model>-ROSI";
  if (!interactive) {
    throw new UsageError(`this run would publish to ${target} on the Hub: pass --yes to confirm, or --no-publish to keep the result local`);
  }
  const answer = prompt(`After the gate passes, publish the realigned model to ${target}${settings.private ? " (private)" : ""}? [y/N]`);
  if (!answer || !/^y(es)?$/i.test(answer.trim())) throw new UsageError("not publishing: re-run with --no-publish, or answer y");
}

function summarizeReport(r: RunReport): string[] {
  const lines: string[] = [];
  const pct = (v: number | null | undefined) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(0)}%`);
  if (r.direction) lines.push(`direction: layer ${r.direction.layer ?? "–"}, position ${r.direction.position ?? "–"}, alpha ${r.direction.alpha ?? "–"}, rank ${r.direction.rank}`);
  if (r.baseline || r.realigned) {
    lines.push(`harmful refusal: ${pct(r.baseline?.harmful_refusal)} → ${pct(r.realigned?.harmful_refusal)}; harmless refusal: ${pct(r.baseline?.harmless_refusal)} → ${pct(r.realigned?.harmless_refusal)}`);
  }
  if (r.gate) lines.push(`gate: ${r.gate.passed ? "passed" : `FAILED (${r.gate.reasons.join("; ")})`}`);
  lines.push(`published: ${r.published ? r.published.url : "no"}`);
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
}

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
      from: req.from,
      force: req.force,
      signal,
      ui: consoleUI(),
      secrets: { hfToken: req.token },
    });
    const report = writeRunReport({ outDir: settings.out, run: outcome, base: { model: settings.model, revision: settings.revision, settings_hash: hash } });
    out();
    for (const l of summarizeReport(report)) out(l);
    out(`report: ${join(settings.out, "report.md")}`);
    if (outcome.gateFailed) {
      err(`gate failed: ${outcome.gateFailed.join("; ")}; not published`);
      return EXIT_GATE;
    }
    return EXIT_OK;
  } finally {
    dispose();
  }
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
  const resolved = resolveSettings({ cli: settingOverrides(opts, argv), env, modelsYaml, repo: model, cwd });
  try {
    checkSettingsPaths(resolved.settings, resolved.sources, cwd);
  } catch (e) {
    // "realign statsu" is more likely a mistyped command than a model.
    const hint = !model.includes("/") && isLocalModel(model, cwd) ? didYouMean(model, ["demo", "generate", "batch", "status"]) : null;
    if (hint && e instanceof ConfigError) throw new ConfigError([...e.problems, `(did you mean \`realign ${hint}\`?)`]);
    throw e;
  }
  const token = resolveToken(typeof opts.token === "string" ? opts.token : null, env);
  checkPublishable(resolved.settings, token);
  const steps = await loadSteps(deps);
  const from = typeof opts.from === "string" ? opts.from : null;
  checkFrom(steps, from);
  confirmPublish(resolved.settings, opts, deps.interactive ?? Boolean(process.stdin.isTTY));
  return executeRun({ ...resolved, steps, token, from, force: opts.force === true });
}

async function cmdDemo(opts: Opts, argv: readonly string[], deps: CliDeps): Promise<number> {
  const env = deps.env ?? process.env;
  const cwd = deps.cwd ?? process.cwd();
  if (!existsSync(DEMO_MODEL_DIR)) {
    throw new UsageError(`the demo model is not available: ${DEMO_MODEL_DIR} does not exist yet`);
  }
  // Demo never pushes: the publish step writes what it would upload to <out>/published/ instead.
  // The demo model (a small organism) refuses ~40 % of harmful prompts under a safety prompt, which
  // clears the default elicitation gap (elicitMinGap 0.2); prompt-set sizes fit the built-in sets (96 each).
  const overrides = settingOverrides(opts, argv) as Record<string, unknown>;
  const out = typeof overrides.out === "string" ? overrides.out : join("runs", "demo");
  const cli = { out, nTrain: 40, nVal: 24, nEval: 32, maxNewTokens: 48, ...overrides, publish: true, pushTo: `file:${join(out, "published")}` };
  const resolved = resolveSettings({ cli, env, modelsYaml: null, repo: DEMO_MODEL_DIR, cwd });
  resolved.settings.model = DEMO_MODEL_DIR;
  checkSettingsPaths(resolved.settings, resolved.sources, cwd);
  const steps = await loadSteps(deps);
  const from = typeof opts.from === "string" ? opts.from : null;
  checkFrom(steps, from);
  return executeRun({ ...resolved, steps, token: null, from, force: opts.force === true });
}

async function cmdGenerate(modelDir: string, opts: Opts): Promise<number> {
  const { "--": _ignored, ...rest } = opts;
  return generateCommand(modelDir, rest);
}

async function cmdBatch(file: string | undefined, opts: Opts, argv: readonly string[], deps: CliDeps): Promise<number> {
  const env = deps.env ?? process.env;
  const cwd = deps.cwd ?? process.cwd();
  const path = resolve(cwd, file ?? env.REALIGN_CONFIG ?? "models.yaml");
  const modelsFile = loadModelsFile(path);
  const token = resolveToken(typeof opts.token === "string" ? opts.token : null, env);
  const common = {
    env,
    cwd,
    cli: settingOverrides(opts, argv),
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
  settings: Partial<Settings> | null;
  steps: { name: string; done: boolean; seconds: number | null; finished: string | null; gate_failed: string[] | null }[];
  report: RunReport | null;
}

/** Read a run directory without changing it. */
export function readStatus(outDir: string): StatusInfo {
  const readJson = <T>(p: string): T | null => {
    try {
      return JSON.parse(readFileSync(p, "utf8")) as T;
    } catch {
      return null;
    }
  };
  const names: string[] = [...STEP_NAMES];
  for (const d of readdirSync(outDir)) {
    if (!d.startsWith(".") && !names.includes(d) && statSync(join(outDir, d)).isDirectory() && readDoneRecord(join(outDir, d))) names.push(d);
  }
  return {
    out: outDir,
    settings: readJson<Partial<Settings>>(join(outDir, "settings.json")),
    steps: names.map((name) => {
      const rec = readDoneRecord(join(outDir, name));
      return { name, done: rec !== null, seconds: rec?.seconds ?? null, finished: rec?.finished ?? null, gate_failed: rec?.gate_failed ?? null };
    }),
    report: readJson<RunReport>(join(outDir, "report.json")),
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
  const st = readStatus(outDir);
  if (opts.json === true) {
    out(JSON.stringify(st, null, 2));
    return EXIT_OK;
  }
  out(`run: ${outDir}${st.settings?.model ? ` (model ${st.settings.model})` : ""}`);
  const w = Math.max(...st.steps.map((s) => s.name.length));
  for (const s of st.steps) {
    const state = s.gate_failed ? "gate failed" : s.done ? "done" : "not done";
    out(`  ${s.name.padEnd(w)}  ${state.padEnd(11)}  ${s.seconds !== null ? formatSeconds(s.seconds).padStart(10) : "".padStart(10)}  ${s.finished ?? ""}`.trimEnd());
  }
  if (st.report) {
    out("report:");
    for (const l of summarizeReport(st.report)) out(`  ${l}`);
  } else out("report: none yet");
  return EXIT_OK;
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
    const opts = { ...parsed.options };
    checkOptions(cli, cmd, args, opts);
    const pos = parsed.args;
    const maxArgs = cmd.args.length;
    if (pos.length > maxArgs) throw new UsageError(`unexpected argument${pos.length - maxArgs > 1 ? "s" : ""}: ${pos.slice(maxArgs).join(" ")}`);
    switch (cmd.name) {
      case "":
        return await cmdRun(pos[0], opts, args, deps, cli);
      case "demo":
        return await cmdDemo(opts, args, deps);
      case "generate":
        if (!pos[0]) throw new UsageError("generate needs a model directory: realign generate <model-dir> --prompt <text>");
        return await cmdGenerate(pos[0], opts);
      case "batch":
        return await cmdBatch(pos[0], opts, args, deps);
      case "status":
        return await cmdStatus(pos[0], opts, deps);
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
