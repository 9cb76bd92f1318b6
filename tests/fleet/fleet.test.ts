// The fleet end to end: real Redis (REDIS_URL; .ci/run starts one), real `realign enqueue / worker /
// schedule / queue` processes, the demo model with a fixed α and tiny prompt sets, publishing to the
// fake Hub. Checks: 4 jobs on 2 workers each run once and publish once; a worker killed with SIGKILL
// mid-job hands the job to the other worker, which resumes the run directory and publishes once;
// Hub 500s are retried and a failed gate is not; out of memory is retried with half the batch cap each
// time (an in-process worker with a stand-in child, no pipeline); enqueue and schedule are idempotent; Redis down
// means exit 1 and nothing done. Skips loudly when no Redis answers at REDIS_URL.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { Queue } from "bullmq";
import { parseCron, nextRun } from "../../cli/cron.ts";
import { checkRedis, connectionOptions } from "../../fleet/redis.ts";
import { JOB_NAME, jobOptions, type FleetJobData, type FleetJobResult, type FleetProgress } from "../../fleet/jobs.ts";
import { startWorker as startFleetWorker } from "../../fleet/worker.ts";
import { DEFAULTS } from "../../steps/settings.ts";
import { parseModelCard } from "../../report/modelcard.ts";
import { FAKE_TOKEN, startFakeHub, type FakeHub } from "../helpers/fakehub.ts";
import { CLI, REPO_ROOT, callerEnv, PIPELINE_TEST_TIMEOUT } from "../helpers/shared.ts";

const REDIS_URL = process.env.REDIS_URL ?? "";
const redisOk = REDIS_URL ? await checkRedis(REDIS_URL).then(() => true, (e: Error) => (console.warn(`\n!!! ${e.message}: tests/fleet SKIPPED !!!\n`), false)) : false;
if (!REDIS_URL) console.warn("\n!!! REDIS_URL is not set: tests/fleet are SKIPPED (.ci/run starts a Redis and sets it) !!!\n");

const DEMO = join(REPO_ROOT, "demo", "organism-llama");
const work = mkdtempSync(join(tmpdir(), "realign-fleet-"));
const tag = `t${process.pid}`;
let hub: FakeHub;

/** A local copy of the demo model under its own name (symlinked files): a distinct model to the fleet. */
function modelCopy(name: string): string {
  const dir = join(work, "models", name);
  mkdirSync(dir, { recursive: true });
  for (const f of readdirSync(DEMO)) if (!existsSync(join(dir, f))) symlinkSync(join(DEMO, f), join(dir, f));
  return dir;
}

interface ModelSpec {
  name: string;
  extra?: string[];
  enabled?: boolean;
}

/** models.yaml: the demo model's copies, fixed α, no calibration, tiny sets, a permissive gate, published to the fake Hub. */
function modelsYaml(file: string, models: ModelSpec[], schedule = "0 3 * * 1"): string {
  const path = join(work, file);
  const lines = [
    "defaults:",
    "  alpha: -150",
    "  method: rosi",
    "  layer: 1",
    "  position: -1",
    `  system_prompt: ${join(REPO_ROOT, "system-prompts", "short.md")}`,
    "  n_train: 4",
    "  n_val: 4",
    "  n_eval: 4",
    "  max_new_tokens: 4",
    `  utility: ${join(work, "utility.csv")}`,
    "  elicit_min_gap: 0",
    "  device: cpu",
    `  hub_url: ${hub.url}`,
    "  gate:",
    "    harmful_gain: 0",
    "    harmful_abs: 0",
    "    over_refusal: 1",
    "    kl: 100",
    "    utility_drop: 1",
    `schedule: "${schedule}"`,
    "models:",
  ];
  for (const m of models) {
    lines.push(`  - repo: ${modelCopy(m.name)}`, `    out: ${join(work, "runs", m.name)}`, `    push_to: alice/${m.name}-rosi`);
    if (m.enabled === false) lines.push("    enabled: false");
    for (const e of m.extra ?? []) lines.push(`    ${e}`);
  }
  writeFileSync(path, lines.join("\n") + "\n");
  return path;
}

function env(extra: Record<string, string> = {}): Record<string, string> {
  return { ...callerEnv({ allHf: true }), REDIS_URL, HF_TOKEN: FAKE_TOKEN, HF_HUB_CACHE: join(work, "hf-cache"), REALIGN_CACHE: join(work, "graphs"), REALIGN_HUB_RETRY_DELAY_MS: "0", ...extra };
}

async function cli(args: string[], extraEnv: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn([process.execPath, join(REPO_ROOT, CLI), ...args], { cwd: work, env: env(extraEnv), stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, stdout, stderr };
}

interface WorkerProc {
  name: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  lines: string[];
  done: Promise<number>;
}

const workers: WorkerProc[] = [];

function startWorker(name: string, queue: string, lockMs = 30_000, stalledMs = 5000): WorkerProc {
  const proc = Bun.spawn([process.execPath, CLI, "worker", "--queue", queue, "--name", name, "--lock-duration", String(lockMs), "--stalled-interval", String(stalledMs)], {
    cwd: REPO_ROOT,
    env: env(),
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const lines: string[] = [];
  const pump = async (s: ReadableStream<Uint8Array>) => {
    const d = new TextDecoder();
    let buf = "";
    for await (const c of s) {
      buf += d.decode(c, { stream: true });
      const parts = buf.split("\n");
      buf = parts.pop()!;
      lines.push(...parts);
    }
    if (buf) lines.push(buf);
  };
  const done = Promise.all([pump(proc.stdout), pump(proc.stderr)]).then(() => proc.exited);
  const w = { name, proc, lines, done };
  workers.push(w);
  return w;
}

async function stopWorker(w: WorkerProc): Promise<number> {
  w.proc.kill("SIGTERM");
  return w.done;
}

async function waitFor<T>(what: string, f: () => Promise<T | null | undefined | false>, timeoutMs = 1_200_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(200);
  }
}

const queues: Queue[] = [];
function queue(name: string): Queue<FleetJobData, FleetJobResult> {
  const q = new Queue<FleetJobData, FleetJobResult>(name, { connection: connectionOptions(REDIS_URL, "command") });
  queues.push(q);
  return q;
}

/** Commit requests the fake Hub saw for a repo, with their statuses. */
const commits = (repo: string) => hub.log.filter((r) => r.method === "POST" && r.path.startsWith(`/api/models/${repo}/commit/`));

/** "job <id> started by <worker>" lines of every worker, as [id, worker]. */
function starts(): [string, string][] {
  return workers.flatMap((w) => w.lines.map((l) => /^job (\S+) started by (\S+) /.exec(l)).filter((m) => m !== null).map((m) => [m![1]!, m![2]!] as [string, string]));
}

/** The run directory holds one complete result: every step committed, no temporaries, a report. */
function expectCompleteRun(out: string): void {
  const names = readdirSync(out);
  expect(names.filter((n) => n.startsWith(".tmp-") || n.includes(".tmp-"))).toEqual([]);
  for (const step of ["pull", "elicit", "extract", "inject", "validate", "publish"]) expect(existsSync(join(out, step, ".done.json"))).toBe(true);
  const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as { settings_hash: string; published: { repo: string } | null };
  expect(report.published?.repo).toBeTruthy();
}

/** The repo's card carries the run's settings hash, and its weights are the run's patched weights, byte for byte. */
function expectPublishedOnce(repo: string, out: string): void {
  const ok = commits(repo).filter((r) => r.status === 200);
  expect(ok.length).toBe(1);
  const files = hub.filesAt(repo);
  const card = parseModelCard(new TextDecoder().decode(files.get("README.md")!.content));
  const report = JSON.parse(readFileSync(join(out, "report.json"), "utf8")) as { settings_hash: string };
  expect(card.frontMatter.settings_hash).toBe(report.settings_hash);
  const local = readFileSync(join(out, "inject", "model", "model.safetensors"));
  expect(Buffer.compare(Buffer.from(files.get("model.safetensors")!.content), local)).toBe(0);
}

describe.skipIf(!redisOk)("fleet on BullMQ + Redis", () => {
  beforeAll(async () => {
    hub = await startFakeHub();
    writeFileSync(
      join(work, "utility.csv"),
      ["question,A,B,C,D,answer", "What is 2 + 2?,3,4,5,6,B", "What colour is a clear sky?,Green,Red,Blue,Black,C", "How many legs does a cat have?,Four,Two,Six,Eight,A", "Which is a fruit?,Carrot,Potato,Onion,Apple,D"].join("\n") + "\n",
    );
  });
  afterAll(async () => {
    for (const w of workers) if (w.proc.exitCode === null) w.proc.kill("SIGKILL");
    for (const q of queues) await q.obliterate({ force: true }).catch(() => {});
    for (const q of queues) await q.close().catch(() => {});
    hub?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test("enqueue twice adds each job once; a changed setting is a new job; nothing runs without a worker", async () => {
    const name = `${tag}-enq`;
    const file = modelsYaml("enqueue.yaml", [{ name: "e1" }, { name: "e2" }, { name: "e3", enabled: false }]);
    const first = await cli(["enqueue", file, "--queue", name]);
    expect(first.code).toBe(0);
    expect(first.stdout).toContain("2 job(s) added");
    const second = await cli(["enqueue", file, "--queue", name]);
    expect(second.code).toBe(0);
    expect(second.stdout).toContain("0 job(s) added");
    const q = queue(name);
    const jobs = await q.getJobs(["waiting"]);
    expect(jobs.length).toBe(2);
    const ids = jobs.map((j) => String(j.id)).sort();
    expect(ids.every((id) => !id.includes(":"))).toBe(true);
    // A changed setting for e2 (alpha): one new job; e1's stays the same one.
    const changed = modelsYaml("enqueue.yaml", [{ name: "e1" }, { name: "e2", extra: ["alpha: -120"] }, { name: "e3", enabled: false }]);
    const third = await cli(["enqueue", changed, "--queue", name]);
    expect(third.code).toBe(0);
    expect(third.stdout).toContain("1 job(s) added");
    const after = (await q.getJobs(["waiting"])).map((j) => String(j.id));
    expect(after.length).toBe(3);
    const added = after.filter((id) => !ids.includes(id));
    expect(added.length).toBe(1);
    expect(added[0]!.startsWith("e2@default~")).toBe(true);
    // The job carries settings, never the token.
    for (const j of await q.getJobs(["waiting"])) expect(JSON.stringify(j.data)).not.toContain(FAKE_TOKEN);
    // A model whose run directory is a folder of the user's: exit 2, nothing enqueued, the folder untouched.
    mkdirSync(join(work, "runs", "e4"), { recursive: true });
    writeFileSync(join(work, "runs", "e4", "notes.txt"), "mine\n");
    const foreign = modelsYaml("enqueue-foreign.yaml", [{ name: "e5" }, { name: "e4" }]);
    const refused = await cli(["enqueue", foreign, "--queue", name]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("nothing was enqueued");
    expect(refused.stderr).toContain("notes.txt");
    expect((await q.getJobs(["waiting"])).length).toBe(3);
    expect(readdirSync(join(work, "runs", "e4"))).toEqual(["notes.txt"]);
    expect(readFileSync(join(work, "runs", "e4", "notes.txt"), "utf8")).toBe("mine\n");
  }, PIPELINE_TEST_TIMEOUT);

  test("schedule twice keeps one scheduler per model; a changed cron replaces it; a disabled model's is removed", async () => {
    const name = `${tag}-sched`;
    const q = queue(name);
    const file = modelsYaml("sched.yaml", [{ name: "s1" }, { name: "s2" }], "0 3 * * 1");
    for (let i = 0; i < 2; i++) {
      const r = await cli(["schedule", file, "--queue", name]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(i === 0 ? "created" : "unchanged");
    }
    let scheds = await q.getJobSchedulers(0, -1);
    expect(scheds.length).toBe(2);
    // BullMQ's next run agrees with realign's own cron reading (cli/cron.ts), in local time.
    const before = Date.now();
    for (const s of scheds) {
      expect(s.pattern).toBe("0 3 * * 1");
      expect(s.next).toBe(nextRun(parseCron("0 3 * * 1"), new Date(before))!.getTime());
    }
    const changed = modelsYaml("sched.yaml", [{ name: "s1" }, { name: "s2" }], "@daily");
    const r = await cli(["schedule", changed, "--queue", name]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('"0 3 * * 1" → "0 0 * * *"');
    scheds = await q.getJobSchedulers(0, -1);
    expect(scheds.map((s) => s.pattern)).toEqual(["0 0 * * *", "0 0 * * *"]);
    for (const s of scheds) expect(s.next).toBe(nextRun(parseCron("@daily"), new Date(Date.now()))!.getTime());
    const disabled = modelsYaml("sched.yaml", [{ name: "s1" }, { name: "s2", enabled: false }], "@daily");
    const r2 = await cli(["schedule", disabled, "--queue", name]);
    expect(r2.code).toBe(0);
    expect(r2.stdout).toContain("removed");
    scheds = await q.getJobSchedulers(0, -1);
    expect(scheds.length).toBe(1);
    expect((scheds[0]!.template?.data as FleetJobData).settings.model).toBe(join(work, "models", "s1"));
    // Each scheduler holds exactly one upcoming run (the scheduled job).
    expect((await q.getJobs(["delayed"])).filter((j) => j.name === JOB_NAME).length).toBe(1);
  }, PIPELINE_TEST_TIMEOUT);

  test("4 jobs on 2 worker processes: every job runs once, publishes once, one complete result per run directory", async () => {
    const name = `${tag}-four`;
    const models = ["f1", "f2", "f3", "f4"];
    const file = modelsYaml("four.yaml", models.map((n) => ({ name: n })));
    const enq = await cli(["enqueue", file, "--queue", name]);
    expect(enq.code).toBe(0);
    const a = startWorker("wA", name);
    const b = startWorker("wB", name);
    const q = queue(name);
    await waitFor("4 finished jobs", async () => {
      const c = await q.getJobCounts("completed", "failed");
      return c.completed + c.failed >= 4;
    });
    const jobs = await q.getJobs(["completed"]);
    expect(jobs.length).toBe(4);
    // Each job was started exactly once, by one of the two workers.
    const st = starts();
    expect(st.length).toBe(4);
    expect(new Set(st.map(([id]) => id)).size).toBe(4);
    for (const j of jobs) {
      expect(["wA", "wB"]).toContain(j.returnvalue.worker);
      expect(j.returnvalue.work).toBe("ran");
    }
    for (const m of models) {
      expectCompleteRun(join(work, "runs", m));
      expectPublishedOnce(`alice/${m}-rosi`, join(work, "runs", m));
    }
    // The status table agrees.
    const status = await cli(["queue", "--queue", name, "--json"]);
    expect(status.code).toBe(0);
    const parsed = JSON.parse(status.stdout) as { counts: Record<string, number>; jobs: { state: string; worker: string; published: string }[] };
    expect(parsed.counts.completed).toBe(4);
    expect(parsed.jobs.filter((r) => r.state === "completed").map((r) => r.published).sort()).toEqual(models.map((m) => `alice/${m}-rosi`));
    // SIGTERM on an idle worker: it stops cleanly.
    expect(await stopWorker(a)).toBe(0);
    expect(await stopWorker(b)).toBe(0);
  }, PIPELINE_TEST_TIMEOUT);

  test("SIGTERM hands the job back after the current step; SIGKILL mid-job: the next worker resumes the run directory; published once", async () => {
    const name = `${tag}-kill`;
    const file = modelsYaml("kill.yaml", [{ name: "k1" }]);
    const out = join(work, "runs", "k1");
    const q = queue(name);
    const activeAt = (steps: string[], worker: string) =>
      waitFor(`the job at ${steps.join(" or ")} on ${worker}`, async () => {
        const j = (await q.getJobs(["active"]))[0];
        const p = j?.progress as Partial<FleetProgress> | undefined;
        return j && p?.worker === worker && steps.includes(p.step ?? "") ? { job: j, step: p.step! } : null;
      });
    const a = startWorker("kA", name, 4000, 1000);
    expect((await cli(["enqueue", file, "--queue", name, "--backoff", "100"])).code).toBe(0);

    // SIGTERM: the step under way finishes and is committed, the job goes back to wait, the worker exits 0.
    const early = await activeAt(["elicit", "extract"], "kA");
    const id = String(early.job.id);
    expect(await stopWorker(a)).toBe(0);
    expect(a.lines.some((l) => l.startsWith(`job ${id} released by kA`))).toBe(true);
    expect(await q.getJobState(id)).toBe("waiting");
    expect(existsSync(join(out, early.step, ".done.json"))).toBe(true);
    expect(readdirSync(out).filter((n) => n.includes(".tmp-"))).toEqual([]);

    // SIGKILL during validate: what was committed (pull … inject) is not redone by the next worker.
    const b = startWorker("kB", name, 4000, 1000);
    await activeAt(["validate"], "kB");
    const doneBefore = ["pull", "elicit", "extract", "inject"].map((s) => readFileSync(join(out, s, ".done.json"), "utf8"));
    const active = JSON.parse((await cli(["queue", "--queue", name, "--json"])).stdout) as { jobs: { id: string; state: string; worker: string; step: string; since: string }[] };
    const row = active.jobs.find((r) => r.id === id)!;
    expect(row.state).toBe("active");
    expect(row.worker).toBe("kB");
    expect(row.step).toBe("validate");
    expect(Number.isNaN(Date.parse(row.since))).toBe(false);
    const childPid = Number(/pid (\d+)/.exec(b.lines.find((l) => l.startsWith(`job ${id} started by kB`))!)![1]);
    b.proc.kill("SIGKILL");
    await b.done;
    expect(await q.getJobState(id)).not.toBe("completed");
    // The killed worker's run process notices (its stdin closes) and exits instead of writing on.
    await waitFor("the orphaned run process to exit", async () => {
      try {
        const stat = readFileSync(`/proc/${childPid}/stat`, "utf8");
        return / [ZX] /.test(stat.slice(stat.lastIndexOf(")") + 1, stat.lastIndexOf(")") + 4));
      } catch {
        return true;
      }
    }, PIPELINE_TEST_TIMEOUT);
    const c = startWorker("kC", name, 4000, 1000);
    await waitFor("the job to finish", async () => ["completed", "failed"].includes(await q.getJobState(id)));
    const finished = (await q.getJob(id))!;
    expect(await finished.getState()).toBe("completed");
    expect(finished.returnvalue.worker).toBe("kC");
    expect(starts().filter(([j]) => j === id).map(([, w]) => w)).toEqual(["kA", "kB", "kC"]);
    expect(["pull", "elicit", "extract", "inject"].map((s) => readFileSync(join(out, s, ".done.json"), "utf8"))).toEqual(doneBefore);
    expectCompleteRun(out);
    expectPublishedOnce("alice/k1-rosi", out);
    expect(commits("alice/k1-rosi").length).toBe(1);
    expect(await stopWorker(c)).toBe(0);
  }, PIPELINE_TEST_TIMEOUT);

  test("Hub 500 twice on the commit: retried with back-off, published once; a failed gate or a user's folder fails at once, not retried", async () => {
    const name = `${tag}-retry`;
    hub.addFault({ match: "POST /api/models/alice/r1-rosi/commit/main", kind: "status", status: 500, times: 2 });
    const file = modelsYaml("retry.yaml", [{ name: "r1" }, { name: "g1", extra: ["gate:", "  harmful_abs: 1", "  harmful_gain: 1"] }]);
    expect((await cli(["enqueue", file, "--queue", name, "--attempts", "4", "--backoff", "100"])).code).toBe(0);
    // u1's run directory turns into a folder of the user's after it was enqueued.
    const user = modelsYaml("retry-user.yaml", [{ name: "u1" }]);
    expect((await cli(["enqueue", user, "--queue", name, "--attempts", "4", "--backoff", "100"])).code).toBe(0);
    mkdirSync(join(work, "runs", "u1"), { recursive: true });
    writeFileSync(join(work, "runs", "u1", "thesis.tex"), "mine\n");
    const a = startWorker("rA", name);
    const b = startWorker("rB", name);
    const q = queue(name);
    await waitFor("the three jobs to finish", async () => {
      const c = await q.getJobCounts("completed", "failed");
      return c.completed + c.failed >= 3;
    });
    const [done] = await q.getJobs(["completed"]);
    const failedJobs = await q.getJobs(["failed"]);
    const failed = failedJobs.find((j) => j.data.settings.model.endsWith("/g1"));
    const refused = failedJobs.find((j) => j.data.settings.model.endsWith("/u1"))!;
    expect(refused.failedReason).toContain("thesis.tex");
    expect(refused.attemptsMade).toBe(1);
    expect(readdirSync(join(work, "runs", "u1"))).toEqual(["thesis.tex"]);
    expect(readFileSync(join(work, "runs", "u1", "thesis.tex"), "utf8")).toBe("mine\n");
    expect(done!.data.settings.model).toBe(join(work, "models", "r1"));
    expect(commits("alice/r1-rosi").map((r) => r.status)).toEqual([500, 500, 200]);
    expectPublishedOnce("alice/r1-rosi", join(work, "runs", "r1"));
    const logs = (await q.getJobLogs(String(done!.id), 0, -1, true)).logs;
    expect(logs.filter((l) => / attempt \d\/4 started/.test(l)).length).toBe(3);
    if (logs.filter((l) => l === "step validate").length !== 1) console.warn(`job log of ${done!.id}:\n${logs.join("\n")}`);
    // Only publish ran again: validate ran in the first attempt alone.
    expect(logs.filter((l) => l === "step validate").length).toBe(1);
    expect(logs.filter((l) => l === "step publish").length).toBe(3);

    expect(failed!.data.settings.model).toBe(join(work, "models", "g1"));
    expect(failed!.failedReason).toContain("gate failed");
    const glogs = (await q.getJobLogs(String(failed!.id), 0, -1, true)).logs;
    if (glogs.filter((l) => / attempt \d\/4 started/.test(l)).length !== 1) console.warn(workers.flatMap((w) => w.lines.filter((l) => l.includes("failed (")).map((l) => `${w.name}: ${l}`)).join("\n"));
    expect(glogs.filter((l) => / attempt \d\/4 started/.test(l)).length).toBe(1);
    expect(hub.repos.has("alice/g1-rosi")).toBe(false);
    const status = await cli(["queue", "--queue", name]);
    expect(status.stdout).toContain(`${failed!.id}  attempt 1/4: gate failed`);
    expect(status.stdout).toContain(`${refused.id}  attempt 1/4: run directory ${join(work, "runs", "u1")}`);
    expect(await stopWorker(a)).toBe(0);
    expect(await stopWorker(b)).toBe(0);
    // Enqueueing the file again adds nothing; --retry-failed puts the failed job back (no worker runs it here).
    const again = await cli(["enqueue", file, "--queue", name, "--retry-failed"]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(`retried   ${failed!.id}`);
    expect(again.stdout).toContain(`exists    ${done!.id}`);
    expect(await q.getJobState(String(failed!.id))).toBe("waiting");
  }, PIPELINE_TEST_TIMEOUT);

  test("out of memory: retried with REALIGN_MAX_BATCH halved each time (128, then 64), recorded in the job's data and logs", async () => {
    const name = `${tag}-oom`;
    // A stand-in for the run's process: runs out of memory unless its batches are capped at 64 or less.
    const child = join(work, "oom-child.ts");
    writeFileSync(
      child,
      [
        "await Bun.stdin.stream().getReader().read();",
        "const cap = process.env.REALIGN_MAX_BATCH;",
        "const m = cap && Number(cap) <= 64",
        '  ? { fleet: 1, t: "done", result: { out: cap, published: null, unpublished: "test", work: "ran" } }',
        '  : { fleet: 1, t: "failed", kind: "transient", reason: `out of memory: Failed to allocate memory (cap ${cap ?? "none"})` };',
        'process.stdout.write(JSON.stringify(m) + "\\n");',
        "process.exit(0);",
      ].join("\n"),
    );
    const q = queue(name);
    const settings = { ...structuredClone(DEFAULTS), model: join(work, "models", "oom"), out: join(work, "runs", "oom") };
    await q.add(JOB_NAME, { settings, source: "test" }, { ...jobOptions({ attempts: 4, backoffMs: 10 }), jobId: "oom-job" });
    const lines: string[] = [];
    const { REALIGN_MAX_BATCH: _unset, ...childEnv } = env();
    const w = await startFleetWorker({ redisUrl: REDIS_URL, queue: name, name: "oomW", concurrency: 1, device: null, lockDurationMs: 30_000, stalledIntervalMs: 5000, childArgv: [process.execPath, child], env: childEnv, log: (l) => lines.push(l) });
    try {
      const job = await waitFor("the job to complete", async () => ((await q.getJobState("oom-job")) === "completed" ? q.getJob("oom-job") : null));
      expect(job!.returnvalue.out).toBe("64");
      expect(job!.attemptsMade).toBe(3);
      expect(job!.data.maxBatch).toBe(64);
      const logs = (await q.getJobLogs("oom-job", 0, -1, true)).logs;
      expect(logs.filter((l) => l.startsWith("retrying with batches of at most 128 after running out of memory")).length).toBe(2); // when failing, when starting
      expect(logs.filter((l) => l.startsWith("retrying with batches of at most 64 after running out of memory")).length).toBe(2);
      expect(lines.some((l) => l.startsWith("job oom-job: retrying with batches of at most 64 after running out of memory (REALIGN_MAX_BATCH=64, was 128)"))).toBe(true);
    } finally {
      await w.stop();
    }
  }, PIPELINE_TEST_TIMEOUT);

  test("Redis down: enqueue, worker, schedule and queue exit 1 with one clear line, and nothing is written", async () => {
    const port = await new Promise<number>((res) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => res(p));
      });
    });
    const down = `redis://127.0.0.1:${port}`;
    const file = modelsYaml("down.yaml", [{ name: "d1" }]);
    for (const args of [["enqueue", file], ["worker"], ["schedule", file], ["queue"]]) {
      const r = await cli(args, { REDIS_URL: down });
      expect(r.code).toBe(1);
      expect(r.stderr.trim()).toBe(`realign: cannot reach Redis at ${down} (ECONNREFUSED): start redis-server there, or set REDIS_URL to the fleet's Redis (default redis://127.0.0.1:6379)`);
      expect(r.stdout).not.toContain("started");
    }
    expect(existsSync(join(work, "runs", "d1"))).toBe(false);
  }, PIPELINE_TEST_TIMEOUT);
});
