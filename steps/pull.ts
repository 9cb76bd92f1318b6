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

/** The licence a model card declares in its YAML front matter, if any. */
function cardLicense(dir: string): string | null {
  const card = join(dir, "README.md");
  if (!existsSync(card)) return null;
  const m = /^---\n([\s\S]*?)\n---/.exec(readFileSync(card, "utf8"));
  const lic = m && /^license:\s*(\S+)/m.exec(m[1]);
  return lic ? lic[1] : null;
}

/**
 * Opens the checkpoint and checks it against its config (unsupported architectures, sizes out of
 * bounds, missing or misshapen tensors fail here, before any work) and describes it.
 */
function describeSource(dir: string, repo: string | null, commit: string | null): SourceInfo {
  const ckpt = Checkpoint.open(dir);
  try {
    validateCheckpoint(ckpt);
    return { dir, repo, commit, fingerprint: ckpt.fingerprint(), license: cardLicense(dir) };
  } finally {
    ckpt.close();
  }
}

export const pullStep: Step<Settings> = {
  name: "pull",
  version: 1,
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
