// The kernel path of a decoder: which ONNX Runtime kernels run, on which execution provider, and how much of
// the time each op type takes, read from ORT's profiler trace (one event per node run, after ORT's own graph
// fusions, so fused kernels appear under their fused names, e.g. FusedMatMul or MatMulIntegerToFloat).
// A separate, profiled session runs one short prefill and a few decode steps: profiling is never on while
// bench times anything.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DecoderModel, type LoadOptions } from "../engine/model.ts";
import { generateGreedy } from "../engine/generate.ts";

export interface KernelShare {
  op: string;
  provider: string;
  /** Runs of this op type over the profiled passes. */
  runs: number;
  ms: number;
  /** Of all node time. */
  share: number;
}

export interface KernelPath {
  /** The profiled work: rows × prompt tokens, then decode steps. */
  profiled: { batch: number; prompt_tokens: number; decode_steps: number };
  providers: string[];
  /** By op type, most time first. */
  ops: KernelShare[];
}

interface TraceEvent {
  cat?: string;
  name?: string;
  dur?: number;
  args?: { op_name?: string; provider?: string };
}

/** Summarises an ORT profiler trace (the JSON array endProfiling writes). */
export function summariseTrace(events: TraceEvent[]): { providers: string[]; ops: KernelShare[] } {
  const byOp = new Map<string, { op: string; provider: string; runs: number; us: number }>();
  let total = 0;
  for (const e of events) {
    // Node events come in pairs (…_fence_before / _kernel_time / _fence_after): only the kernel time counts.
    if (e.cat !== "Node" || !e.name?.endsWith("_kernel_time") || !e.args?.op_name) continue;
    const op = e.args.op_name;
    const provider = (e.args.provider ?? "?").replace(/ExecutionProvider$/, "");
    const key = `${op}@${provider}`;
    const row = byOp.get(key) ?? { op, provider, runs: 0, us: 0 };
    row.runs++;
    row.us += e.dur ?? 0;
    total += e.dur ?? 0;
    byOp.set(key, row);
  }
  const ops = [...byOp.values()]
    .sort((a, b) => b.us - a.us)
    .map((r) => ({ op: r.op, provider: r.provider, runs: r.runs, ms: Number((r.us / 1000).toFixed(2)), share: Number((r.us / (total || 1)).toFixed(3)) }));
  return { providers: [...new Set(ops.map((o) => o.provider))], ops };
}

/** Loads `dir` once more with profiling on, runs `prompts` (prefill) plus `decodeSteps` steps, and summarises. */
export async function kernelPath(dir: string, load: LoadOptions, prompts: number[][], decodeSteps = 2): Promise<KernelPath> {
  const work = mkdtempSync(join(tmpdir(), "realign-profile-"));
  try {
    const model = await DecoderModel.load(dir, { ...load, profilePrefix: join(work, "ort") });
    try {
      await generateGreedy(model, prompts, { maxNewTokens: decodeSteps + 1 });
      await model.endProfiling();
    } finally {
      await model.close();
    }
    const trace = readdirSync(work).find((f) => f.startsWith("ort") && f.endsWith(".json"));
    if (!trace) throw new Error(`ONNX Runtime wrote no profile in ${work}`);
    const summary = summariseTrace(JSON.parse(readFileSync(join(work, trace), "utf8")) as TraceEvent[]);
    return { profiled: { batch: prompts.length, prompt_tokens: prompts[0]?.length ?? 0, decode_steps: decodeSteps }, ...summary };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
