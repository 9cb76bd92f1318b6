// `realign publish <run-dir> [--push-to …]`: publish a finished run, later than the run itself (it
// had no token, was offline, or ran with --no-publish). The same publish step does the work, with the
// same gate and idempotency: a run whose steps up to the publish step are not all done is refused
// (exit 2: nothing to publish), a run whose gate failed is refused unless --force (exit 3; with it, the
// steps the run stopped before at the gate, srr and export, run first), and a Hub
// repo that already holds this run (its card carries the settings hash) gets no new commit. Before
// anything is uploaded the command names the real target (the token's user from the Hub's whoami
// when --push-to is not given), the files and their sizes, and asks (or needs --yes). Only the
// publish step's folder, settings.json and the report are rewritten; the other steps are read only.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Settings } from "../steps/settings.ts";
import { settingsHash } from "../steps/settings.ts";
import { checkLocalPublishTarget, defaultRepoName, publishFiles } from "../steps/publish.ts";
import { HF_REPO_RE, resolveToken } from "../hub/repo.ts";
import { HubError } from "../hub/errors.ts";
import { UsageError } from "../util/errors.ts";
import { EXIT_FAILED, EXIT_GATE, EXIT_OK, EXIT_USAGE } from "./errors.ts";
import { isRealignSettings, pushesToHub, realignRunDir, tryItLines } from "./batch.ts";
import { PART_FILE, planRun, readDoneRecord, runPipeline, type Step, type StepPart } from "../pipeline/runner.ts";
import type { RunnerUI } from "../pipeline/progress.ts";
import { writeRunReport } from "../report/build.ts";

export interface PublishCommandDeps {
  env: Record<string, string | undefined>;
  cwd: string;
  steps: Step<Settings>[];
  /** Whether the user can be asked (a TTY); otherwise --yes is needed. */
  interactive: boolean;
  ui: RunnerUI;
  signal?: AbortSignal;
  out?: (line: string) => void;
  err?: (line: string) => void;
}

const truthy = (v: string | undefined) => /^(1|true|yes|on)$/i.test((v ?? "").trim());

/** "1.2 kB", "20.1 MB". */
export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ["kB", "MB", "GB", "TB"];
  let v = n;
  let u = -1;
  while (v >= 1000 && u < units.length - 1) {
    v /= 1000;
    u++;
  }
  return `${v.toFixed(1)} ${units[u]}`;
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch {
    return null;
  }
}

export async function publishCommand(runDir: string, opts: Record<string, unknown>, deps: PublishCommandDeps): Promise<number> {
  const out = deps.out ?? ((l: string) => console.log(l));
  const err = deps.err ?? ((l: string) => console.error(l));
  const { env } = deps;
  const dir = resolve(deps.cwd, runDir);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`no run found at ${dir}`);
  const saved = readJson(join(dir, "settings.json"));
  if (!isRealignSettings(saved)) throw new UsageError(`${runDir} is not a realign run directory (it has no realign settings.json): give a folder a run wrote, e.g. runs/<model>`);
  const ran = { ...(saved as Settings), out: dir };

  // 1. Finished up to the publish step? A run stops at a failed gate, so with --force the steps it
  // never reached (srr, export) run now; without --force the failed gate is the answer, not "unfinished".
  const steps = deps.steps;
  const idx = steps.findIndex((s) => s.name === "publish");
  if (idx < 0) throw new Error("the step list has no publish step");
  const plan = planRun(steps, ran, dir);
  const verdicts = plan.slice(0, idx).map((p) => (p.action === "cached" ? (readDoneRecord(join(dir, p.name))?.gate_failed ?? null) : null));
  const gateAt = verdicts.findIndex((v) => v !== null);
  const gateFailed = gateAt >= 0 ? verdicts[gateAt]! : null;
  const notDone = plan.slice(0, gateAt >= 0 ? gateAt : idx).filter((p) => p.action !== "cached");
  if (notDone.length) {
    throw new UsageError(
      `${runDir} is unfinished: ${notDone.map((p) => `${p.name} (${p.reason})`).join(", ")}; finish the run first (realign ${ran.model} --out ${runDir}), then publish it`,
    );
  }
  if (gateFailed && opts.force !== true) {
    err(`realign: the gate failed for ${runDir} (${gateFailed.join("; ")}): not publishing; pass --force to publish it anyway`);
    return EXIT_GATE;
  }
  const unreached = gateAt >= 0 ? plan.slice(gateAt + 1, idx).filter((p) => p.action !== "cached") : [];

  // 2. Where to, and with what.
  const pushTo = typeof opts.pushTo === "string" ? opts.pushTo : ran.pushTo;
  if (pushTo !== null && !HF_REPO_RE.test(pushTo) && !pushTo.startsWith("file:")) throw new UsageError(`--push-to: expected owner/name (or file:<dir> for a local folder), got "${pushTo}"`);
  const hubUrl = typeof opts.hubUrl === "string" ? opts.hubUrl.replace(/\/+$/, "") : env.HF_ENDPOINT?.trim().replace(/\/+$/, "") || ran.hubUrl;
  if (!/^https?:\/\/[^\s]+$/.test(hubUrl)) throw new UsageError(`${typeof opts.hubUrl === "string" ? "--hub-url" : "HF_ENDPOINT"}: expected an http(s) URL, got "${hubUrl}"`);
  const settings: Settings = {
    ...ran,
    publish: true,
    pushTo,
    private: opts.private === true || ran.private,
    hubUrl,
    offline: opts.offline === true || truthy(env.HF_HUB_OFFLINE),
  };
  const token = resolveToken(typeof opts.token === "string" ? opts.token : null, env);
  const source = readJson(join(dir, "pull", "source.json")) as { repo?: unknown } | null;
  const base = typeof source?.repo === "string" ? source.repo : ran.model;
  let target: string;
  if (pushesToHub(settings)) {
    if (settings.offline) throw new UsageError("cannot publish while offline (--offline or HF_HUB_OFFLINE=1): publish when the Hub can be reached");
    if (!token) throw new UsageError("publishing needs a Hugging Face write token: set HF_TOKEN (or HF_TOKEN_PATH, or log in with `huggingface-cli login`) or pass --token");
    const { resolvePublishRepo } = await import("../hub/hub.ts");
    try {
      target = await resolvePublishRepo({ repo: pushTo ?? undefined, defaultName: defaultRepoName(base), token, hubUrl, log: (l) => err(`publish: ${l}`) });
    } catch (e) {
      if (!(e instanceof HubError)) throw e;
      err(`realign: ${e.message}`);
      return e.code === "auth" || e.code === "bad_input" ? EXIT_USAGE : EXIT_FAILED;
    }
    settings.pushTo = target; // the step publishes exactly where the confirmation said
  } else {
    target = resolve(deps.cwd, settings.pushTo!.slice(5));
    checkLocalPublishTarget(target);
    settings.pushTo = `file:${target}`;
  }

  // 3. The confirmation names the target, the files and their sizes.
  const files = publishFiles(dir);
  const where = pushesToHub(settings) ? `${target} on ${hubUrl}${settings.private ? " (private if it is created)" : ""}` : target;
  out(`publish ${runDir} (model ${ran.model}, settings hash ${settingsHash(ran).slice(0, 12)}) to ${where}${gateFailed ? " — its gate FAILED, --force" : ""}:`);
  const w = Math.max(0, ...files.map((f) => f.path.length));
  for (const f of files) out(`  ${f.path.padEnd(w)}  ${formatBytes(f.bytes).padStart(9)}`);
  if (!files.some((f) => f.path === "README.md")) out(`  ${"README.md".padEnd(w)}  (the model card, written now)`);
  if (files.length) out(`  ${files.length} files, ${formatBytes(files.reduce((a, f) => a + f.bytes, 0))}`);
  if (opts.yes !== true) {
    if (!deps.interactive) throw new UsageError(`this would publish ${runDir} to ${target}: pass --yes to confirm`);
    const answer = prompt(`Publish to ${target}? [y/N]`);
    if (!answer || !/^y(es)?$/i.test(answer.trim())) throw new UsageError("not publishing (not confirmed)");
  }

  // 4. The steps the failed gate stopped before (--force), then the publish step alone: its upstream
  // folders are read where they are, not re-run.
  if (unreached.length) {
    out(`--force: running the step${unreached.length > 1 ? "s" : ""} the failed gate stopped the run before: ${unreached.map((p) => p.name).join(", ")}`);
    await runPipeline({ steps: steps.slice(0, idx), settings: ran, outDir: dir, signal: deps.signal, ui: deps.ui, pastFailedGate: true, owner: realignRunDir(ran, "run directory") });
  }
  const step = steps[idx]!;
  const parts: StepPart[] = steps.slice(0, idx).map((s) => ({ step: s.name, part: readJson(join(dir, s.name, PART_FILE)) as StepPart["part"] }));
  const alone: Step<Settings> = {
    ...step,
    deps: [],
    run: (ctx) =>
      step.run({
        ...ctx,
        upstream: (name) => {
          if (!step.deps.includes(name)) throw new Error(`step ${step.name} reads upstream "${name}" but does not list it in deps`);
          return join(dir, name);
        },
        reportParts: () => parts.filter((p) => step.deps.includes(p.step)),
        forced: gateFailed !== null,
      }),
  };
  const outcome = await runPipeline({
    steps: [alone],
    settings,
    outDir: dir,
    from: step.name,
    signal: deps.signal,
    ui: deps.ui,
    secrets: { hfToken: token },
    owner: realignRunDir(settings, "run directory"),
  });
  const timings: Record<string, number> = {};
  for (const s of steps) {
    const rec = readDoneRecord(join(dir, s.name));
    if (rec) timings[s.name] = rec.seconds;
  }
  const oldTotal = (readJson(join(dir, "report.json")) as { timings?: { total?: unknown } } | null)?.timings?.total;
  if (typeof oldTotal === "number") timings.total = oldTotal;
  writeRunReport({
    outDir: dir,
    run: { parts: [...parts, ...outcome.parts], timings, gateFailed },
    base: { model: ran.model, revision: ran.revision, settings_hash: settingsHash(ran) },
  });
  const published = readJson(join(dir, "publish", "published.json")) as { repo?: string; url?: string; skipped?: unknown } | null;
  out("");
  if (published?.skipped === true) out(`${published.repo} already holds this run (settings hash ${settingsHash(ran).slice(0, 12)}); nothing uploaded`);
  else out(`published ${published?.url ?? target}`);
  for (const l of tryItLines(settings)) out(l);
  return EXIT_OK;
}
