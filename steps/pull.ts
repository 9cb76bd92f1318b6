// pull: resolve the model to a local checkpoint directory (a local folder as is, or a Hub repo
// downloaded into the standard HF cache).
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { isLocalModel } from "../hub/repo.ts";
import { Checkpoint } from "../engine/checkpoint.ts";
import { validateCheckpoint } from "../engine/architectures.ts";
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

export const pullStep: Step<Settings> = {
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
        onProgress: (e) => {
          if (e.done === e.total && !finished.has(e.file)) {
            finished.add(e.file);
            ctx.log(`downloaded ${e.file} (${(e.total / 1e6).toFixed(1)} MB)`);
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
