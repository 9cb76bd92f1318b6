// published/ holds hard links to the edited shards (same inode), not a second copy; across file
// systems it falls back to a copy; the source files are never changed. And the card's "Reproduce":
// non-default settings only, no absolute local path, `realign demo` for the demo model.
import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { linkOrCopy } from "../../steps/publish.ts";
import { DEMO_MODEL_DIR, DEMO_SETTINGS, reproduceCommand } from "../../steps/reproduce.ts";
import { DEFAULTS, type Settings } from "../../steps/settings.ts";

const dirs: string[] = [];
const tmp = (root = tmpdir()) => {
  const d = mkdtempSync(join(root, "realign-links-"));
  dirs.push(d);
  return d;
};
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

test("same file system: a hard link (same inode, link count 2), the source's bytes unchanged", () => {
  const d = tmp();
  const src = join(d, "model.safetensors");
  writeFileSync(src, "weights-bytes");
  expect(linkOrCopy(src, join(d, "published.safetensors"))).toBe("link");
  expect(statSync(join(d, "published.safetensors")).ino).toBe(statSync(src).ino);
  expect(statSync(src).nlink).toBe(2);
  expect(readFileSync(src, "utf8")).toBe("weights-bytes");
  // Replacing the published folder (rm) leaves the run's file as it was.
  rmSync(join(d, "published.safetensors"));
  expect(readFileSync(src, "utf8")).toBe("weights-bytes");
  expect(statSync(src).nlink).toBe(1);
  // An existing destination is an error, never overwritten.
  writeFileSync(join(d, "user.txt"), "mine");
  expect(() => linkOrCopy(src, join(d, "user.txt"))).toThrow(/EEXIST/);
  expect(readFileSync(join(d, "user.txt"), "utf8")).toBe("mine");
});

test("another file system (/dev/shm when it is one): a copy with the same bytes", () => {
  if (!existsSync("/dev/shm") || statSync("/dev/shm").dev === statSync(tmpdir()).dev) {
    console.warn("skipped: /dev/shm is not a separate file system here");
    return;
  }
  const src = join(tmp(), "model.safetensors");
  writeFileSync(src, "weights-bytes");
  const dst = join(tmp("/dev/shm"), "model.safetensors");
  expect(linkOrCopy(src, dst)).toBe("copy");
  expect(readFileSync(dst, "utf8")).toBe("weights-bytes");
  expect(statSync(src).nlink).toBe(1);
});

const settings = (over: Partial<Settings>): Settings => ({ ...DEFAULTS, model: "acme/chat", out: "/home/me/runs/acme--chat", gate: { ...DEFAULTS.gate }, ...over }) as Settings;

test("Reproduce: repo id, commit and every non-default result-affecting setting; local paths by file name only", () => {
  const s = settings({ nEval: 50, alpha: -150, method: "rosi", utility: "/home/me/data/mmlu.parquet", systemPrompt: "/home/me/prompts/strict.md", gate: { ...DEFAULTS.gate, kl: 0.2 }, device: "cuda", pushTo: "me/x" });
  const r = reproduceCommand(s, { repo: "acme/chat", commit: "abc123" });
  expect(r.command).toBe("realign acme/chat --revision abc123 --system-prompt strict.md --alpha=-150 --method rosi --utility mmlu.parquet --n-eval 50 --gate-kl 0.2");
  expect(r.settings).toEqual({ system_prompt: "strict.md", alpha: -150, method: "rosi", utility: "mmlu.parquet", n_eval: 50, "gate.kl": 0.2 });
  expect(r.command).not.toContain("/home/me");
  expect(reproduceCommand(settings({}), { repo: "acme/chat", commit: null }).command).toBe("realign acme/chat");
  expect(reproduceCommand(settings({ includeEmbeddings: true, useSystemPrompt: false }), { repo: "acme/chat", commit: null }).command).toBe("realign acme/chat --include-embeddings --no-system-prompt");
});

test("Reproduce for the demo: `realign demo`, its own sizes not repeated, other settings kept", () => {
  const s = settings({ model: DEMO_MODEL_DIR, ...DEMO_SETTINGS, method: "gated" });
  expect(reproduceCommand(s, { repo: null, commit: null }).command).toBe("realign demo --method gated");
  const local = reproduceCommand(settings({ model: "/home/me/models/my-finetune" }), { repo: null, commit: null });
  expect(local.command).toBe("realign ./my-finetune");
});
