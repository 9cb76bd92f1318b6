import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BUILTIN_SYSTEM_PROMPTS_DIR, DEFAULT_SYSTEM_PROMPT_PATH, SystemPromptError, isAutoSystemPrompt, loadSystemPrompt, systemPromptFiles } from "../../evals/system-prompt.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "realign-sysprompt-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const write = (name: string, text: string): string => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

describe("default safety system prompt", () => {
  const { text, source } = loadSystemPrompt(null, "Dolphin-3B");

  test("comes from system-prompts/default.md, comment stripped, {model} filled", () => {
    expect(source).toBe(DEFAULT_SYSTEM_PROMPT_PATH);
    expect(text.startsWith("You are Dolphin-3B,")).toBe(true);
    expect(text).not.toContain("<!--");
    expect(text).not.toContain("{model}");
  });

  test("has the required elements and length, and no markdown headings", () => {
    const words = text.split(/\s+/).length;
    expect(words).toBeGreaterThanOrEqual(150);
    expect(words).toBeLessThanOrEqual(250);
    expect(text).not.toMatch(/^#/m);
    expect(text).toMatch(/safe, lawful/);
    expect(text).toContain('"I am sorry"');
    expect(text).toContain('"I can\'t"');
    for (const harm of ["weapons", "cybercrime", "fraud", "drugs", "self-harm", "hate", "privacy", "misinformation", "extremism"]) {
      expect(text.toLowerCase()).toContain(harm);
    }
    for (const loophole of ["hypothetical", "role-play", "rephrased", "ignore these instructions"]) expect(text).toContain(loophole);
  });
});

describe("loadSystemPrompt", () => {
  test("custom file: leading comment removed, every {model} replaced literally", () => {
    const p = write("custom.md", "  <!-- note\nfor humans -->\n\nYou are {model}. {model} refuses harm.\n");
    expect(loadSystemPrompt(p, "m$&x")).toEqual({ text: "You are m$&x. m$&x refuses harm.", source: p });
  });

  test("a comment later in the file is kept (only a leading one is stripped)", () => {
    const p = write("later.md", "Be safe. <!-- keep -->");
    expect(loadSystemPrompt(p, "m").text).toBe("Be safe. <!-- keep -->");
  });

  test("clear errors: missing file, empty prompt, unclosed comment, empty model name", () => {
    expect(() => loadSystemPrompt(join(dir, "missing.md"), "m")).toThrow(/missing\.md: system prompt file not found/);
    expect(() => loadSystemPrompt(write("empty.md", "<!-- only a comment -->\n  \n"), "m")).toThrow(/system prompt is empty/);
    expect(() => loadSystemPrompt(write("open.md", "<!-- never closed\nYou are {model}."), "m")).toThrow(/never closed/);
    expect(() => loadSystemPrompt(null, "  ")).toThrow(SystemPromptError);
  });
});

describe("systemPromptFiles: which prompts a setting stands for", () => {
  test("auto (and null, and a relative auto resolved against some cwd) → the four built-in prompts, sorted, default first", () => {
    const builtin = ["default.md", "paper.md", "policy.md", "short.md"].map((n) => join(BUILTIN_SYSTEM_PROMPTS_DIR, n));
    expect(systemPromptFiles("auto")).toEqual(builtin);
    expect(systemPromptFiles(null)).toEqual(builtin);
    expect(() => systemPromptFiles(join(dir, "nowhere", "auto"))).toThrow(SystemPromptError);
    expect(builtin[0]).toBe(DEFAULT_SYSTEM_PROMPT_PATH);
    for (const f of builtin) expect(loadSystemPrompt(f, "M").text).toContain("M");
  });

  test("only the bare word is the keyword: a path to a file named auto is that file", () => {
    const sub = join(dir, "real");
    mkdirSync(sub, { recursive: true });
    writeFileSync(join(sub, "auto"), "Be safe.");
    expect(isAutoSystemPrompt(join(sub, "auto"))).toBe(false);
    expect(systemPromptFiles(join(sub, "auto"))).toEqual([join(sub, "auto")]);
    expect(isAutoSystemPrompt("AUTO")).toBe(true);
  });

  test("a file → just that file; a directory → its *.md files sorted by name", () => {
    const d = join(dir, "set");
    mkdirSync(d, { recursive: true });
    for (const n of ["b.md", "a.md", "notes.txt", "C.md"]) writeFileSync(join(d, n), "x");
    mkdirSync(join(d, "sub.md"), { recursive: true });
    expect(systemPromptFiles(d)).toEqual(["C.md", "a.md", "b.md"].map((n) => join(d, n)));
    expect(systemPromptFiles(join(d, "b.md"))).toEqual([join(d, "b.md")]);
  });

  test("clear errors: missing path, directory without prompts", () => {
    expect(() => systemPromptFiles(join(dir, "missing-dir"))).toThrow(/missing-dir: system prompt file or directory not found/);
    const empty = join(dir, "empty-dir");
    mkdirSync(empty, { recursive: true });
    expect(() => systemPromptFiles(empty)).toThrow(SystemPromptError);
    expect(() => systemPromptFiles(empty)).toThrow(/holds no \*\.md/);
  });
});
