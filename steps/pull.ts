// pull: resolve the model to a local checkpoint directory (a local folder as is, or a Hub repo
// downloaded into the standard HF cache).
//
// Disk space, before the weights are downloaded: from the Hub's file listing (hub/pull.ts DownloadPlan),
// what the run will write and where, against the free space of each file system (printed either way):
//
//   checkpoint   the files not yet in the HF cache               → the HF cache (<cache>/models--…)
//   ONNX graph   parameters × the measuring element size          → the graph cache ($REALIGN_CACHE or ~/.cache/realign)
//                (4 bytes float32, 2 float16, 1 int8, ≈ 0.6 int4; auto: int8 when float32 takes over
//                half the memory, as steps/common.ts decides)
//   edited copy  the weights again, in the checkpoint's dtype      → the run directory (inject/model; published/ hard-links it)
//
// Parameters come from the weights' bytes and config.json's torch_dtype (2 bytes when it names none, so
// the graph is over- rather than under-estimated). Locations on one file system add up. A disk that is
// short stops the run with DiskSpaceError (exit 1) naming each location, its need and its free space.
// `makePullStep({ statfs })` takes the free-space probe as a parameter, so that tests stub it.
import { existsSync, readFileSync, statfsSync, statSync } from "node:fs";
import { totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { bytes as fmtBytes } from "../util/format.ts";
import { defaultCacheDir } from "../engine/model.ts";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { isLocalModel } from "../hub/repo.ts";
import { Checkpoint } from "../engine/checkpoint.ts";
import { readDecoderConfig, validateCheckpoint } from "../engine/architectures.ts";
import { outputsOf, writeJson, type SourceInfo } from "./artefacts.ts";
import { parseFrontMatter } from "../util/frontmatter.ts";

/** The licence the base model declares: its card's YAML front matter, else a `license` in config.json; null when neither says. */
export function modelLicense(dir: string): string | null {
  const card = join(dir, "README.md");
  if (existsSync(card)) {
    try {
      const lic = parseFrontMatter(readFileSync(card, "utf8"), "model card").frontMatter.license;
      if (typeof lic === "string" && lic.trim()) return lic.trim();
    } catch {
      // a card without valid front matter declares nothing
    }
  }
  try {
    const lic = (JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as { license?: unknown }).license;
    if (typeof lic === "string" && lic.trim()) return lic.trim();
  } catch {
    // validateCheckpoint reports a broken config
  }
  return null;
}

/**
 * Opens the checkpoint and checks it against its config (unsupported architectures, sizes out of
 * bounds, missing or misshapen tensors fail here, before any work) and describes it.
 */
function describeSource(dir: string, repo: string | null, commit: string | null): SourceInfo {
  const ckpt = Checkpoint.open(dir);
  try {
    validateCheckpoint(ckpt);
    return { dir, repo, commit, fingerprint: ckpt.fingerprint(), license: modelLicense(dir) };
  } finally {
    ckpt.close();
  }
}

/** What the pull step can be given besides the settings (tests: a stubbed free-space probe). */
export interface PullParams {
  statfs?: StatFs;
}

export const pullStep: Step<Settings> = makePullStep();

export function makePullStep(params: PullParams = {}): Step<Settings> {
  return {
    name: "pull",
    // 2: the licence is read from the card's front matter (parsed), else config.json.
    version: 2,
    deps: [],
    outputs: outputsOf("pull"),
    inputs: (s) => ({ model: s.model, revision: s.revision, offline: s.offline }),
    async run(ctx) {
      const s = ctx.settings;
      let info: SourceInfo;
      if (isLocalModel(s.model)) {
        const dir = resolve(s.model);
        info = describeSource(dir, null, null);
        ctx.log(`local checkpoint ${dir}`);
      } else {
        const { pullModel } = await import("../hub/hub.ts");
        const finished = new Set<string>();
        const pulled = await pullModel(s.model, {
          revision: s.revision ?? undefined,
          hubUrl: s.hubUrl,
          token: ctx.secrets.hfToken ?? undefined,
          offline: s.offline,
          // Back-off lines of retried requests ("…; retrying in 4 s (3/6)") go to the run's log.
          log: (line) => ctx.log(line),
          beforeDownload: (plan) => {
            // An architecture the engine cannot build is refused from config.json alone, before the weights.
            readDecoderConfig(plan.config, `${s.model}/config.json`);
            const needs = diskEstimate(plan, { hfCache: plan.repoDir, graphCache: join(defaultCacheDir(), "graphs"), runDir: ctx.outDir }, s);
            ctx.log(`disk space this run needs: ${formatEstimate(needs)}`);
            checkDiskSpace(needs, params.statfs);
          },
          onProgress: (e) => {
            if (e.done === e.total && !finished.has(e.file)) {
              finished.add(e.file);
              ctx.log(`downloaded ${e.file} (${fmtBytes(e.total)})`);
            }
          },
        });
        info = describeSource(pulled.dir, s.model, pulled.commit);
        ctx.log(`pulled ${s.model}@${pulled.commit} into ${pulled.dir}`);
      }
      writeJson(join(ctx.tmpDir, "source.json"), info);
      return { report: { revision: info.commit ?? s.revision } };
    },
  };
}

/** A disk that cannot hold what the run will write: exit code 1 (cli/errors.ts, the run failed), before any weights are downloaded. */
export class DiskSpaceError extends Error {
  override name = "DiskSpaceError";
}

/** Free space as node:fs statfs reports it (blocks available to this user × block size). */
export type StatFs = (path: string) => { bavail: number | bigint; bsize: number | bigint };

export interface DiskNeed {
  what: "checkpoint" | "ONNX graph" | "edited copy";
  /** Where it goes (a folder that may not exist yet). */
  path: string;
  bytes: number;
}

const DTYPE_BYTES: Record<string, number> = { float32: 4, float: 4, float16: 2, half: 2, bfloat16: 2, bf16: 2, fp16: 2, fp32: 4 };

/** What the run will write, per location (see the table above). */
export function diskEstimate(
  plan: { weights: { size: number; cached: boolean }[]; metadata: { size: number; cached: boolean }[]; config: Record<string, unknown> },
  where: { hfCache: string; graphCache: string; runDir: string },
  s: Pick<Settings, "dtype" | "quantize">,
  memoryBytes = totalmem(),
): DiskNeed[] {
  const weightBytes = plan.weights.reduce((a, f) => a + f.size, 0);
  const toFetch = [...plan.weights, ...plan.metadata].filter((f) => !f.cached).reduce((a, f) => a + f.size, 0);
  const torchDtype = typeof plan.config.torch_dtype === "string" ? plan.config.torch_dtype : typeof plan.config.dtype === "string" ? plan.config.dtype : "";
  const params = weightBytes / (DTYPE_BYTES[torchDtype.toLowerCase()] ?? 2);
  const element = s.dtype === "float16" ? 2 : 4;
  const quantised = s.quantize === "auto" ? (params * 4 > 0.5 * memoryBytes ? "int8" : "none") : s.quantize;
  const perParam = quantised === "int8" || quantised === "int8-dynamic" ? 1 : quantised === "int4" ? 0.5 + element / 32 : element;
  return [
    { what: "checkpoint", path: where.hfCache, bytes: toFetch },
    { what: "ONNX graph", path: where.graphCache, bytes: Math.round(params * perParam) },
    { what: "edited copy", path: where.runDir, bytes: weightBytes },
  ];
}

/** "checkpoint 1.0 GB (HF cache …), ONNX graph ≈ 2.0 GB (…), edited copy 1.0 GB (…)". */
export function formatEstimate(needs: readonly DiskNeed[]): string {
  return needs.map((n) => `${n.what} ${n.what === "ONNX graph" ? "≈ " : ""}${fmtBytes(n.bytes)} (${n.path})`).join(", ");
}

/** The nearest folder of `path` that exists (the file system it will be written to). */
function existingAncestor(path: string): string {
  let p = resolve(path);
  while (!existsSync(p) && dirname(p) !== p) p = dirname(p);
  return p;
}

/** Throws DiskSpaceError when a file system cannot hold what goes to it (needs on one file system add up). */
export function checkDiskSpace(needs: readonly DiskNeed[], statfs: StatFs = statfsSync): void {
  const byDevice = new Map<string, { at: string; needs: DiskNeed[] }>();
  for (const n of needs) {
    if (n.bytes <= 0) continue;
    const at = existingAncestor(n.path);
    const dev = String(statSync(at).dev);
    const entry = byDevice.get(dev) ?? { at, needs: [] };
    entry.needs.push(n);
    byDevice.set(dev, entry);
  }
  const short: string[] = [];
  for (const { at, needs: here } of byDevice.values()) {
    const st = statfs(at);
    const free = Number(st.bavail) * Number(st.bsize);
    const need = here.reduce((a, n) => a + n.bytes, 0);
    if (need > free) short.push(`${at}: ${fmtBytes(need)} needed (${here.map((n) => `${n.what} ${fmtBytes(n.bytes)}`).join(" + ")}), ${fmtBytes(free)} free`);
  }
  if (short.length) {
    throw new DiskSpaceError(
      `not enough disk space for this model; nothing was downloaded: ${short.join("; ")}. ` +
        "Free some space, or point HF_HUB_CACHE / HF_HOME (the download), REALIGN_CACHE (the ONNX graph) or --out (the edited copy) at a larger disk",
    );
  }
}

