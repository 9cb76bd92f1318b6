// `bun run bench:pipeline [--shape qwen2.5-0.5b] [--device cpu] [--quantize none|int8|int4|int8-dynamic] [--method auto|rosi|rosi-mv|gated]
//                         [--n-train N] [--n-val N] [--n-eval N] [--max-new-tokens N] [--no-relax] [--out dir] [--json]`
// The whole pipeline (pull → elicit → extract → inject with calibration → validate) on a random BF16 checkpoint
// of a real shape, given the demo organism's tokenizer and chat template so that it can run. Prints, per step:
// wall time, forward passes, tokens through the decoder (rows × new tokens, padding included, and unpadded),
// and the run's peak RSS. Counts come from the engine's REALIGN_FORWARD_LOG (one line per forward pass),
// attributed to steps by the start/finish times in each step's .done.json.
//
// A random model refuses nothing under the safety prompt, so by default (`--relax`) the check that would stop
// it before extract is off (`--elicit-min-gap 0`); the validation gate still runs and fails (exit 3 of the
// pipeline is expected and reported, not an error here). `--no-relax` keeps the checks (the run then stops
// at elicit). Each run starts from an empty --out (the steps are not reused: they are what is measured).
import cac from "cac";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { defaultCacheDir } from "../engine/model.ts";
import { numel } from "../engine/safetensors.ts";
import { CLI, ROOT } from "./paths.ts";
import { SHAPES, tensorPlan, writeChatTokenizer, writeRandomCheckpoint } from "./random-checkpoint.ts";

const STEPS = ["pull", "elicit", "extract", "inject", "validate"] as const;

const cli = cac("bench:pipeline");
cli
  .option("--shape <name>", `random checkpoint shape: ${Object.keys(SHAPES).join(", ")}`, { default: "qwen2.5-0.5b" })
  .option("--device <d>", "cpu | auto | cuda | webgpu", { default: "cpu" })
  .option("--quantize <q>", "none | int8 | int4 | int8-dynamic (the pipeline's --quantize)", { default: "none" })
  .option("--method <m>", "auto | rosi | rosi-mv | gated", { default: "auto" })
  .option("--n-train <n>", "train prompts per class (pipeline default when absent)")
  .option("--n-val <n>", "validation prompts per class (pipeline default when absent)")
  .option("--n-eval <n>", "evaluation prompts per class (pipeline default when absent)")
  .option("--max-new-tokens <n>", "tokens per evaluation answer (pipeline default when absent)")
  .option("--relax", "turn off the checks a random model cannot pass (--elicit-min-gap 0); --no-relax keeps them", { default: true })
  .option("--out <dir>", "run directory: new, empty, or an earlier realign run (cleared first)", { default: "runs/bench-pipeline" })
  .option("--json", "print one JSON object");
cli.help();
const { options } = cli.parse();
if (options.help) process.exit(0);

const shapeName = String(options.shape);
const shape = SHAPES[shapeName];
if (!shape) {
  console.error(`unknown --shape ${shapeName}; one of ${Object.keys(SHAPES).join(", ")}`);
  process.exit(2);
}
const log = (m: string) => console.error(`[bench:pipeline] ${m}`);

const params = tensorPlan(shape).reduce((s, t) => s + numel(t.shape), 0);
const dir = join(defaultCacheDir(), "bench", `${shapeName}-random-chat`);
writeRandomCheckpoint(dir, shape, { shards: params > 2e9 ? 4 : 1, log });
writeChatTokenizer(join(ROOT, "demo", "organism-llama"), dir, shape.vocab_size);

const out = resolve(ROOT, String(options.out));
const forwardLog = `${out}.forward.jsonl`;
// Only a run folder realign made (its .realign-run marker) or an empty one is cleared; anything else is refused.
if (existsSync(out) && readdirSync(out).length > 0 && !existsSync(join(out, ".realign-run"))) {
  console.error(`--out ${out} holds files that are not a realign run; choose another folder`);
  process.exit(2);
}
rmSync(out, { recursive: true, force: true });
rmSync(forwardLog, { force: true });
mkdirSync(out, { recursive: true });

const args = [CLI, dir, "--out", out, "--device", String(options.device), "--quantize", String(options.quantize), "--method", String(options.method), "--no-publish", "--offline"];
for (const [flag, key] of [["--n-train", "nTrain"], ["--n-val", "nVal"], ["--n-eval", "nEval"], ["--max-new-tokens", "maxNewTokens"]] as const) {
  if (options[key] !== undefined) args.push(flag, String(options[key]));
}
if (options.relax) args.push("--elicit-min-gap", "0");
const size = params >= 1e9 ? `${(params / 1e9).toFixed(2)} B` : `${(params / 1e6).toFixed(1)} M`;
log(`${size} parameters; bun ${args.join(" ")}`);

const t0 = performance.now();
const proc = Bun.spawn([process.execPath, ...args], { cwd: ROOT, env: { ...process.env, REALIGN_FORWARD_LOG: forwardLog }, stdout: "inherit", stderr: "inherit" });
const exit = await proc.exited;
const wallSeconds = (performance.now() - t0) / 1000;
// Bun reports the child's maxRSS in bytes.
const peakRssMb = (proc.resourceUsage()?.maxRSS ?? 0) / 2 ** 20;

interface Pass {
  t: number;
  B: number;
  T: number;
  past: number;
  K: number;
  real: number;
}
const passes: Pass[] = existsSync(forwardLog)
  ? readFileSync(forwardLog, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Pass)
  : [];

const steps = STEPS.map((name) => {
  const donePath = join(out, name, ".done.json");
  if (!existsSync(donePath)) return { step: name, ran: false as const };
  const done = JSON.parse(readFileSync(donePath, "utf8")) as { started: string; finished: string; seconds: number };
  const [from, to] = [Date.parse(done.started), Date.parse(done.finished)];
  const mine = passes.filter((p) => p.t >= from && p.t <= to);
  const prefill = mine.filter((p) => p.past === 0);
  return {
    step: name,
    ran: true as const,
    seconds: Number(done.seconds.toFixed(1)),
    forward_passes: mine.length,
    prefill_passes: prefill.length,
    tokens: mine.reduce((s, p) => s + p.B * p.T, 0),
    unpadded_tokens: mine.reduce((s, p) => s + p.real, 0),
    logit_rows: mine.reduce((s, p) => s + p.B * p.K, 0),
  };
});

const summary = {
  shape: shapeName,
  parameters: params,
  device: options.device,
  quantize: options.quantize,
  method: options.method,
  relaxed: Boolean(options.relax),
  pipeline_exit: exit,
  wall_s: Number(wallSeconds.toFixed(1)),
  peak_rss_mb: Math.round(peakRssMb),
  forward_passes: passes.length,
  steps,
  run: out,
};
if (options.json) console.log(JSON.stringify(summary));
else {
  console.log(`shape ${shapeName} (${size} parameters), device ${options.device}, quantize ${options.quantize}, method ${options.method}${options.relax ? ", checks relaxed" : ""}`);
  console.log(`pipeline exit ${exit}${exit === 3 ? " (the gate failed, as expected of a random model)" : ""}; wall ${summary.wall_s} s; peak RSS ${summary.peak_rss_mb} MB; ${passes.length} forward passes`);
  console.log("step       seconds  passes  (prefill)  tokens     unpadded   logit rows");
  for (const s of steps) {
    if (!s.ran) console.log(`${s.step.padEnd(10)} not run`);
    else console.log(`${s.step.padEnd(10)} ${String(s.seconds).padStart(7)}  ${String(s.forward_passes).padStart(6)}  ${String(s.prefill_passes).padStart(9)}  ${String(s.tokens).padStart(9)}  ${String(s.unpadded_tokens).padStart(9)}  ${String(s.logit_rows).padStart(10)}`);
  }
}
// The pipeline's own failure (not the expected gate failure) is this command's failure.
process.exit(exit === 0 || exit === 3 ? 0 : 1);
