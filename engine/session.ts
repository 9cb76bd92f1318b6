// Execution providers and ONNX Runtime sessions. `auto` tries a GPU EP and falls back to CPU,
// and always says which one it picked.
import * as ort from "onnxruntime-node";

import { DEVICES, type Device } from "./device.ts";
import { UsageError } from "../util/errors.ts";
import { positiveIntFromEnv, switchFromEnv } from "../util/env.ts";

export { DEVICES, type Device };

export class DeviceError extends Error {
  override name = "DeviceError";
}

export interface OpenedSession {
  session: ort.InferenceSession;
  /** The execution provider that actually runs the graph. */
  ep: "cpu" | "cuda" | "webgpu";
  /** Why a GPU EP was not used (auto only). */
  fallbackReason: string | null;
}

const CUDA_HINT =
  "the CUDA execution provider is not installed with onnxruntime-node by default; reinstall it with CUDA 12 binaries: " +
  "`ONNXRUNTIME_NODE_INSTALL=cuda12 npm install` (needs CUDA 12 and cuDNN 9 on the machine)";

export const THREADS_ENV = "REALIGN_ORT_THREADS";
export const SPIN_ENV = "REALIGN_ORT_SPIN";

/** Intra-op threads of every CPU session from REALIGN_ORT_THREADS; null when unset (ONNX Runtime's default: one per physical core). */
export function ortThreads(env: Record<string, string | undefined> = process.env): number | null {
  return positiveIntFromEnv(env, THREADS_ENV, "threads", (m) => new UsageError(m));
}

/**
 * Whether idle intra-op threads spin (REALIGN_ORT_SPIN=1, ONNX Runtime's default) or sleep (0); null
 * when unset. Spinning buys a little latency alone on a machine; two processes side by side on two
 * cores, each spinning its two threads, ran 2.2× slower each, and without spinning at their solo speed
 * (the demo model's 24-row decode: 9.1–10.3 ms a step side by side, 8.5–9.8 alone). `npm test` runs two
 * test files at a time with one thread each instead (REALIGN_ORT_THREADS=1: 802 s for the suite against
 * 837 s with two non-spinning threads), where spinning does not arise.
 */
export function ortSpin(env: Record<string, string | undefined> = process.env): boolean | null {
  return switchFromEnv(env, SPIN_ENV, { off: "idle threads sleep", on: "they spin" }, (m) => new UsageError(m));
}

export const PREPACK_ENV = "REALIGN_ORT_PREPACK";

/** REALIGN_ORT_PREPACK: 1 packs every session's weights, 0 none; null when unset (then prepackWeights decides). */
export function ortPrepack(env: Record<string, string | undefined> = process.env): boolean | null {
  return switchFromEnv(env, PREPACK_ENV, { off: "weights used as stored", on: "a packed copy for the GEMM kernels" }, (m) => new UsageError(m));
}

/** The share of the machine's memory a packed copy of full-precision weights may take by default. */
export const PREPACK_MEMORY_SHARE = 0.1;

/**
 * Whether a session packs its weights for the GEMM kernels. ONNX Runtime's prepacking keeps a second copy of
 * every float matrix; measured on the Qwen2.5-0.5B shape (two idle cores, batch 8, two alternating pairs) it
 * made decoding 1.5× faster (63–68 against 39–43 tok/s, ≈ 75 % of the memory-bandwidth bound against ≈ 50 %)
 * and prefill 5–10 % faster, for +550 MB of peak RSS. So float weights are packed when that copy takes at
 * most PREPACK_MEMORY_SHARE of the memory (a 0.5B model on a 24 GB machine: yes; an 8B one: no); quantised
 * weights always are (MatMulNBits needs it: 13× on int4 decode; int8-dynamic's int8 copy is small).
 * REALIGN_ORT_PREPACK overrides.
 */
export function prepackWeights(o: { quantized: boolean; floatWeightBytes: number; totalMemory: number; env?: Record<string, string | undefined> }): boolean {
  const asked = ortPrepack(o.env ?? process.env);
  if (asked !== null) return asked;
  return o.quantized || o.floatWeightBytes <= PREPACK_MEMORY_SHARE * o.totalMemory;
}

function sessionOptions(ep: "cpu" | "cuda" | "webgpu", prepack: boolean, profilePrefix?: string, deviceOutputs: string[] = []): ort.InferenceSession.SessionOptions {
  const threads = ortThreads();
  const spin = ortSpin();
  return {
    // WebGPU: these outputs (the KV cache) stay in GPU buffers and are fed back as the next step's inputs, instead
    // of a download and an upload per step. REALIGN_KV_ON_HOST=1 brings them back to host memory.
    ...(ep === "webgpu" && deviceOutputs.length && process.env.REALIGN_KV_ON_HOST !== "1"
      ? { preferredOutputLocation: Object.fromEntries(deviceOutputs.map((n) => [n, "gpu-buffer" as const])) }
      : {}),
    // ORT's profiler: a JSON trace (every node run: op type, provider, duration) written by endProfiling().
    ...(profilePrefix ? { enableProfiling: true, profileFilePrefix: profilePrefix } : {}),
    executionProviders: [ep],
    graphOptimizationLevel: "all",
    ...(threads === null ? {} : { intraOpNumThreads: threads }),
    // Page-aligned external initializers are mapped from the cache file rather than copied.
    enableCpuMemArena: true,
    logSeverityLevel: 3,
    // Weight prepacking: see prepackWeights.
    extra: {
      session: {
        ...(prepack ? {} : { disable_prepacking: "1" }),
        ...(spin === null ? {} : { "intra_op.allow_spinning": spin ? "1" : "0" }),
      },
    },
  };
}

async function openWith(modelPath: string, ep: "cpu" | "cuda" | "webgpu", prepack: boolean, profilePrefix?: string, deviceOutputs?: string[]): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(modelPath, sessionOptions(ep, prepack, profilePrefix, deviceOutputs));
}

function bundled(ep: string): boolean {
  return ort.listSupportedBackends().some((b) => b.name === ep && b.bundled);
}

/** Why an explicitly asked device cannot be used at all (its EP is not installed), checked before any download; null when it may work. */
export function deviceUnavailable(device: Device): string | null {
  return device === "cuda" && !bundled("cuda") ? `--device cuda: ${CUDA_HINT}` : null;
}

export async function openSession(modelPath: string, device: Device, opts: { prepack?: boolean; profilePrefix?: string; deviceOutputs?: string[] } = {}): Promise<OpenedSession> {
  const prepack = opts.prepack ?? false;
  const tryOpen = (path: string, ep: "cpu" | "cuda" | "webgpu", pre: boolean) => openWith(path, ep, pre, opts.profilePrefix, opts.deviceOutputs);
  if (!DEVICES.includes(device)) throw new DeviceError(`unknown device "${device}"; use one of ${DEVICES.join(", ")}`);
  if (device === "cpu") return { session: await tryOpen(modelPath, "cpu", prepack), ep: "cpu", fallbackReason: null };
  if (device === "cuda" || device === "webgpu") {
    if (device === "cuda" && !bundled("cuda")) throw new DeviceError(`--device cuda: ${CUDA_HINT}`);
    try {
      return { session: await tryOpen(modelPath, device, prepack), ep: device, fallbackReason: null };
    } catch (e) {
      const why = (e as Error).message.split("\n")[0];
      throw new DeviceError(device === "cuda" ? `--device cuda failed to initialise (${why}); ${CUDA_HINT}` : `--device webgpu failed to initialise: ${why} (needs a Vulkan-capable GPU and driver)`);
    }
  }
  // auto: first GPU EP that initialises, else CPU.
  const reasons: string[] = [];
  for (const ep of ["cuda", "webgpu"] as const) {
    if (ep === "cuda" && !bundled("cuda")) {
      reasons.push("cuda: not installed");
      continue;
    }
    if (ep === "webgpu" && !gpuLikelyPresent()) {
      reasons.push("webgpu: no GPU device found");
      continue;
    }
    try {
      return { session: await tryOpen(modelPath, ep, prepack), ep, fallbackReason: null };
    } catch (e) {
      reasons.push(`${ep}: ${(e as Error).message.split("\n")[0]}`);
    }
  }
  return { session: await tryOpen(modelPath, "cpu", prepack), ep: "cpu", fallbackReason: reasons.join("; ") };
}

/** Cheap check before paying for a WebGPU adapter probe: a GPU shows up under /dev. */
function gpuLikelyPresent(): boolean {
  try {
    const fs = require("node:fs") as typeof import("node:fs");
    if (process.env.REALIGN_FORCE_WEBGPU_PROBE) return true;
    return fs.existsSync("/dev/nvidia0") || fs.existsSync("/dev/dri/renderD128") || process.platform !== "linux";
  } catch {
    return false;
  }
}

export { ort };
