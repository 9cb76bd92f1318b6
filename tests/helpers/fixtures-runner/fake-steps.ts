// Test-only pipeline: five small steps shaped like the real ones (pull → elicit → extract →
// validate → publish) that write deterministic files derived from settings and upstream outputs.
// They can be slowed down, made to fail, or made to fail the gate.
import { createHash } from "node:crypto";
import { appendFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Settings } from "../../../steps/settings.ts";
import { GateFailedError } from "../../../pipeline/errors.ts";
import type { Step } from "../../../pipeline/runner.ts";

export interface FakeOptions {
  /** Sleep per extract chunk (ms); extract writes `chunks` chunks. */
  slowMs?: number;
  chunks?: number;
  /** Throw inside this step (after writing part of its output). */
  failAt?: string | ((step: string, s: Settings) => boolean);
  /** validate throws GateFailedError. */
  gateFail?: boolean;
  /** Every executed step name is pushed here (in-process) ... */
  runs?: string[];
  /** ... and/or appended as a line to this file (child processes). */
  runsFile?: string;
  /** Print "STEP <name> <event>" markers to stdout (child processes). */
  markers?: boolean;
}

const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(new Error("aborted"));
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), reject(new Error("aborted"))), { once: true });
  });

export function makeFakeSteps(o: FakeOptions = {}): Step<Settings>[] {
  const chunks = o.chunks ?? 6;
  const begin = (name: string, s: Settings) => {
    o.runs?.push(name);
    if (o.runsFile) appendFileSync(o.runsFile, name + "\n");
    if (o.markers) console.log(`STEP ${name} start`);
    const fail = typeof o.failAt === "function" ? o.failAt(name, s) : o.failAt === name;
    return fail;
  };
  return [
    {
      name: "pull",
      deps: [],
      outputs: ["model.txt"],
      inputs: (s) => ({ model: s.model, revision: s.revision }),
      async run(ctx) {
        const fail = begin("pull", ctx.settings);
        writeFileSync(join(ctx.tmpDir, "model.txt"), `model=${ctx.settings.model}@${ctx.settings.revision ?? "main"}\n`);
        if (fail) throw new Error("fake pull failure");
        return { report: { details: { pulled: ctx.settings.model } } };
      },
    },
    {
      name: "elicit",
      deps: ["pull"],
      outputs: ["prompts.json"],
      inputs: (s) => ({ seed: s.seed, nTrain: s.nTrain, useSystemPrompt: s.useSystemPrompt }),
      async run(ctx) {
        const fail = begin("elicit", ctx.settings);
        const model = readFileSync(join(ctx.upstream("pull"), "model.txt"), "utf8");
        const prompts = Array.from({ length: ctx.settings.nTrain }, (_, i) => sha(`${model}:${ctx.settings.seed}:${i}`).slice(0, 16));
        writeFileSync(join(ctx.tmpDir, "prompts.json"), JSON.stringify(prompts));
        if (fail) throw new Error("fake elicit failure");
        return { report: { elicitation: { harmful_refusal_with_prompt: 0.8, harmless_refusal_with_prompt: 0.05 } } };
      },
    },
    {
      name: "extract",
      deps: ["pull", "elicit"],
      outputs: ["direction.txt", "chunks"],
      inputs: (s) => ({ layer: s.layer, nTrain: s.nTrain }),
      async run(ctx) {
        const fail = begin("extract", ctx.settings);
        const prompts = readFileSync(join(ctx.upstream("elicit"), "prompts.json"), "utf8");
        mkdirSync(join(ctx.tmpDir, "chunks"));
        const bar = ctx.progress("forward", chunks);
        for (let i = 0; i < chunks; i++) {
          if (o.slowMs) await sleep(o.slowMs, ctx.signal);
          writeFileSync(join(ctx.tmpDir, "chunks", `chunk-${i}.txt`), sha(`${prompts}:${ctx.settings.layer}:${i}`).repeat(64));
          bar.tick();
          if (o.markers) console.log(`STEP extract chunk ${i}`);
          if (fail && i === Math.floor(chunks / 2)) throw new Error("fake extract failure");
        }
        bar.done();
        const all = readdirSync(join(ctx.tmpDir, "chunks")).sort().map((f) => readFileSync(join(ctx.tmpDir, "chunks", f), "utf8"));
        writeFileSync(join(ctx.tmpDir, "direction.txt"), sha(all.join("")) + "\n");
        return { report: { direction: { layer: ctx.settings.layer ?? 3, position: -1, alpha: null, rank: ctx.settings.rank } } };
      },
    },
    {
      name: "validate",
      deps: ["extract"],
      outputs: ["metrics.json"],
      inputs: (s) => ({ gate: s.gate, nEval: s.nEval }),
      async run(ctx) {
        const fail = begin("validate", ctx.settings);
        const dir = readFileSync(join(ctx.upstream("extract"), "direction.txt"), "utf8").trim();
        const metrics = { direction: dir, harmful_before: 0.1, harmful_after: 0.95 };
        writeFileSync(join(ctx.tmpDir, "metrics.json"), JSON.stringify(metrics));
        if (fail) throw new Error("fake validate failure");
        const m = (harmful: number) => ({ harmful_refusal: harmful, harmless_refusal: 0.02, kl: 0.01, utility: 0.5, jailbreak_asr: null });
        const report = { baseline: m(0.1), realigned: m(0.95) };
        if (o.gateFail) throw new GateFailedError(["harmful refusal 0.95 < 0.99"], { ...report, gate: { passed: false, reasons: ["harmful refusal 0.95 < 0.99"] } });
        return { report: { ...report, gate: { passed: true, reasons: [] } } };
      },
    },
    {
      name: "publish",
      deps: ["validate"],
      outputs: ["published.txt"],
      inputs: (s) => ({ publish: s.publish, pushTo: s.pushTo }),
      async run(ctx) {
        const fail = begin("publish", ctx.settings);
        const m = readFileSync(join(ctx.upstream("validate"), "metrics.json"), "utf8");
        writeFileSync(join(ctx.tmpDir, "published.txt"), sha(m) + "\n");
        if (fail) throw new Error("fake publish failure");
        const repo = ctx.settings.pushTo ?? "me/fake-realigned";
        return { report: { published: ctx.settings.publish ? { repo, commit: "abc123", url: `https://huggingface.co/${repo}` } : null } };
      },
    },
  ];
}

/** Options for child processes, from FAKE_* environment variables. */
export function fakeOptionsFromEnv(env: Record<string, string | undefined> = process.env): FakeOptions {
  return {
    slowMs: env.FAKE_SLOW_MS ? Number(env.FAKE_SLOW_MS) : undefined,
    chunks: env.FAKE_CHUNKS ? Number(env.FAKE_CHUNKS) : undefined,
    failAt: env.FAKE_FAIL_AT || undefined,
    gateFail: env.FAKE_GATE_FAIL === "1",
    runsFile: env.FAKE_RUNS_FILE || undefined,
    markers: env.FAKE_MARKERS === "1",
  };
}
