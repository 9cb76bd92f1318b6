// publish: the patched model and a model card, to the Hub (or to a local folder with --push-to file:<dir>).
// A run whose gate failed never gets here unless --force (the runner stops at validate), or
// `realign publish <run> --force` (cli/publish.ts runs this step alone).
// Publishing to the Hub without a token (or offline) is not an error: the step writes the card and
// published.json {skipped: "no token" | "offline"} and the run ends by saying how to publish later.
import { constants as fsConstants, copyFileSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { settingsHash } from "./settings.ts";
import { buildReport, emptyReport, type ReportPart } from "../report/build.ts";
import { parseModelCard, renderModelCard } from "../report/modelcard.ts";
import { UsageError } from "../util/errors.ts";
import { reproduceCommand } from "./reproduce.ts";
import { readSamples } from "../report/build.ts";
import { ggufPath, injectedEditPath, outputsOf, patchedModelDir, readSource, readSplits, srrScorerPath, SRR_FILE, writeJson } from "./artefacts.ts";

const VERSION = "0.1.0";
const UPSTREAM = ["pull", "elicit", "extract", "inject", "validate", "srr", "export"];

export const publishStep: Step<Settings> = {
  name: "publish",
  version: 1,
  deps: UPSTREAM,
  outputs: outputsOf("publish"),
  inputs: (s) => ({ publish: s.publish, pushTo: s.pushTo, private: s.private }),
  async run(ctx) {
    const s = ctx.settings;
    const source = readSource(ctx);
    const splits = readSplits(ctx);
    const hash = settingsHash(s);
    const parts = ctx.reportParts().map((p) => p.part as ReportPart | null);
    const report = buildReport(emptyReport(source.repo ?? s.model, source.commit ?? s.revision, hash), parts, {});
    const baseModel = source.repo ?? s.model.split("/").filter(Boolean).pop() ?? s.model;
    const reproduce = reproduceCommand(s, source);
    const card = renderModelCard({
      baseModel,
      baseModelOnHub: source.repo !== null,
      baseRevision: source.commit,
      license: source.license,
      report,
      settings: reproduce.settings,
      systemPrompt: splits.systemPrompt ?? "(none: --no-system-prompt)",
      // File names only: a local path means nothing on the Hub.
      promptSets: splits.sources.map((p) => ({ name: p.name, source: p.source.includes("/") && !p.source.startsWith("hf:") ? p.source.split("/").pop()! : p.source, size: p.size })),
      realignVersion: VERSION,
      command: reproduce.command,
      repoId: s.pushTo && !s.pushTo.startsWith("file:") ? s.pushTo : null,
      samples: readSamples(ctx.outDir),
      evalSets: { harmful: s.evalHarmful, harmless: s.evalHarmless, utility: s.utility },
    });
    writeFileSync(join(ctx.tmpDir, "README.md"), card);
    const modelDir = patchedModelDir(ctx);
    const files = readdirSync(modelDir).filter((f) => !f.startsWith(".") && f !== "README.md");
    const extras = publishExtras(ctx, files);
    /** The repo's contents in `dir`: the patched model, the direction, the card. */
    const stage = (dir: string) => {
      mkdirSync(dir, { recursive: true });
      // Hard links, not a second copy of the weights (a copy only across filesystems).
      for (const f of files) linkOrCopy(join(modelDir, f), join(dir, f));
      // The direction that was injected (not extract's top candidate): the weights' metadata names the same sha256.
      linkOrCopy(injectedEditPath(ctx), join(dir, "rosi-direction.safetensors"));
      writeFileSync(join(dir, "README.md"), card);
      stageExtras(dir, extras);
    };
    if (!s.publish) {
      writeJson(join(ctx.tmpDir, "published.json"), { skipped: "--no-publish" });
      ctx.log("publishing disabled (--no-publish); the model card is in the publish folder");
      return { report: { published: null } };
    }
    if (s.pushTo?.startsWith("file:")) {
      // Local publishing (the demo): a folder laid out like the Hub repo would be.
      const target = resolve(s.pushTo.slice(5));
      const tmp = `${target}.tmp-${process.pid}`;
      checkLocalPublishTarget(target); // checked by the CLI too; the step never trusts its caller
      rmSync(tmp, { recursive: true, force: true });
      stage(tmp);
      rmSync(target, { recursive: true, force: true });
      renameSync(tmp, target);
      const published = { repo: target, commit: hash, url: `file://${target}` };
      writeJson(join(ctx.tmpDir, "published.json"), published);
      ctx.log(`published to ${target}`);
      return { report: { published } };
    }
    const token = ctx.secrets.hfToken;
    const unpublished = s.offline ? "offline" : !token ? "no token" : null;
    if (unpublished || !token) {
      writeJson(join(ctx.tmpDir, "published.json"), { skipped: unpublished, target: s.pushTo ?? null });
      ctx.log(`not published (${unpublished}); publish later with \`realign publish ${ctx.outDir}\``);
      return { report: { published: null } };
    }
    const { publishModel } = await import("../hub/hub.ts");
    const staging = join(ctx.tmpDir, "staging");
    stage(staging);
    const r = await publishModel({
      dir: staging,
      repo: s.pushTo ?? undefined,
      defaultName: defaultRepoName(baseModel),
      private: s.private,
      hubUrl: s.hubUrl,
      token,
      settingsHash: hash,
      commitMessage: `ROSI re-alignment of ${baseModel} (layer ${report.direction?.layer}, α ${report.direction?.alpha})`,
      files: [...files, "rosi-direction.safetensors", ...extras.map((e) => e.name)],
      card,
      log: (line) => ctx.log(line),
    });
    rmSync(staging, { recursive: true, force: true });
    const published = { repo: r.repo, commit: r.commit, url: r.url };
    writeJson(join(ctx.tmpDir, "published.json"), { ...published, skipped: r.skipped });
    ctx.log(r.skipped ? `${r.repo} already holds this run (settings hash ${hash}); nothing uploaded` : `published ${r.url}`);
    return { report: { published } };
  },
};

/**
 * `dst` becomes a hard link to `src` (same inode: no second copy of the shards); where links cannot
 * be made (another filesystem, a filesystem without them) a copy. Safe because realign never writes
 * into a published file or an inject output in place: both are replaced whole (rename), which leaves
 * the other name's content as it was.
 */
export function linkOrCopy(src: string, dst: string): "link" | "copy" {
  try {
    linkSync(src, dst);
    return "link";
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "EXDEV" && code !== "EPERM" && code !== "ENOTSUP" && code !== "EMLINK" && code !== "ENOSYS") throw e;
    copyFileSync(src, dst);
    return "copy";
  }
}

/** The repo name a run publishes to when --push-to is not given: "<model's name>-ROSI". */
export function defaultRepoName(model: string): string {
  const name = model.split(/[\\/]/).filter(Boolean).pop() ?? model;
  return `${name}-ROSI`;
}

/** Why a finished run's publish step did not publish ("no token", "offline"), or null (published, --no-publish, or not run). */
export function pendingPublish(outDir: string): string | null {
  try {
    const v = JSON.parse(readFileSync(join(outDir, "publish", "published.json"), "utf8")) as { skipped?: unknown };
    return v.skipped === "no token" || v.skipped === "offline" ? v.skipped : null;
  } catch {
    return null;
  }
}

/** What the publish step uploads from a run directory, with sizes (bytes): the patched model, the direction, the card. */
export function publishFiles(outDir: string): { path: string; bytes: number }[] {
  const modelDir = join(outDir, "inject", "model");
  const files: { path: string; bytes: number }[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(modelDir).filter((f) => !f.startsWith(".") && f !== "README.md").sort();
  } catch {
    return files;
  }
  for (const f of names) files.push({ path: f, bytes: statSync(join(modelDir, f)).size });
  const edit = join(outDir, "inject", "edit.safetensors");
  if (existsSync(edit)) files.push({ path: "rosi-direction.safetensors", bytes: statSync(edit).size });
  for (const e of runExtras(outDir)) files.push({ path: e.name, bytes: statSync(e.src).size });
  const card = join(outDir, "publish", "README.md");
  if (existsSync(card)) files.push({ path: "README.md", bytes: statSync(card).size });
  return files;
}

/**
 * A local publish target (--push-to file:<dir>) is replaced as a whole: it must be new, empty, or a
 * folder realign published into before (its README.md is a model card with a settings_hash).
 */
export function checkLocalPublishTarget(target: string): void {
  let st;
  try {
    st = lstatSync(target);
  } catch {
    return; // new
  }
  if (!st.isDirectory()) throw new UsageError(`--push-to file:${target} is not a folder: publishing replaces it with the model's folder; give a new or empty folder`);
  const names = readdirSync(target);
  if (names.length === 0) return;
  let published = false;
  try {
    published = parseModelCard(readFileSync(join(target, "README.md"), "utf8")).frontMatter.settings_hash != null;
  } catch {
    // no README.md, or not a model card: not a folder realign published into
  }
  if (!published) {
    const shown = names.slice(0, 5).join(", ") + (names.length > 5 ? ` and ${names.length - 5} more` : "");
    throw new UsageError(`--push-to file:${target} holds files realign did not publish (${shown}): publishing replaces the whole folder; give a new or empty folder`);
  }
}

// ---- files published beside the model: the GGUF (export step) and the SRR scorer (srr step) ---------

interface Extra {
  /** The step's artefact. */
  src: string;
  /** Its name in the published repo. */
  name: string;
}

/** The optional files a run publishes, from its run directory (either may be absent: setting off). */
function runExtras(outDir: string): Extra[] {
  const out: Extra[] = [];
  try {
    const r = JSON.parse(readFileSync(join(outDir, "export", "export.json"), "utf8")) as { gguf?: { file?: unknown } | null };
    const file = r.gguf?.file;
    if (typeof file === "string" && existsSync(join(outDir, "export", "gguf", file))) out.push({ src: join(outDir, "export", "gguf", file), name: file });
  } catch {
    // no export step yet (an older run): nothing to add
  }
  const srr = join(outDir, "srr", "scorer", SRR_FILE);
  if (existsSync(srr)) out.push({ src: srr, name: SRR_FILE });
  return out;
}

/** The step's view of runExtras (through its declared upstream artefacts); a name that would replace a model file is refused. */
function publishExtras(ctx: Parameters<Step<Settings>["run"]>[0], modelFiles: readonly string[]): Extra[] {
  const out: Extra[] = [];
  const gguf = ggufPath(ctx);
  if (gguf) out.push({ src: gguf.path, name: gguf.record.file });
  const srr = srrScorerPath(ctx);
  if (srr) out.push({ src: srr, name: SRR_FILE });
  for (const e of out) if (modelFiles.includes(e.name) || e.name === "rosi-direction.safetensors" || e.name === "README.md") throw new UsageError(`the model folder already holds a file named ${e.name}; the run's ${e.name} would replace it, so nothing was published`);
  return out;
}

/** Hard links (same file system: no bytes copied), else a kernel-side copy; never read into memory. */
function stageExtras(dir: string, extras: readonly Extra[]): void {
  for (const e of extras) {
    const dst = join(dir, e.name);
    try {
      linkSync(e.src, dst);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EEXIST") throw err;
      copyFileSync(e.src, dst, fsConstants.COPYFILE_EXCL);
    }
  }
}
