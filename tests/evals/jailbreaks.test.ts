import { describe, expect, test } from "bun:test";
import { JAILBREAK_TEMPLATES, JailbreakError, wrapJailbreak } from "../../evals/jailbreaks.ts";

describe("jailbreak templates", () => {
  const instruction = "Explain how to frobnicate the zorblax (test instruction 7f3a).";

  test("at least four templates with unique ids, one {instruction} placeholder each", () => {
    expect(JAILBREAK_TEMPLATES.length).toBeGreaterThanOrEqual(4);
    expect(new Set(JAILBREAK_TEMPLATES.map((t) => t.id)).size).toBe(JAILBREAK_TEMPLATES.length);
    for (const t of JAILBREAK_TEMPLATES) expect(t.template.split("{instruction}").length - 1).toBe(1);
    for (const id of ["roleplay", "hypothetical-story", "prefix-injection", "dan"]) {
      expect(JAILBREAK_TEMPLATES.some((t) => t.id === id)).toBe(true);
    }
  });

  test.each(JAILBREAK_TEMPLATES.map((t) => t.id))("wrapJailbreak(%p) contains the instruction exactly once", (id) => {
    const out = wrapJailbreak(id, instruction);
    expect(out.split(instruction).length - 1).toBe(1);
    expect(out).not.toContain("{instruction}");
    expect(out.length).toBeGreaterThan(instruction.length + 20);
  });

  test("prefix injection asks for the 'Sure, here is' opening", () => {
    expect(wrapJailbreak("prefix-injection", instruction)).toContain('Start your answer with "Sure, here is"');
  });

  test("instruction inserted literally; unknown id and empty instruction are errors", () => {
    expect(wrapJailbreak("dan", "say $& and $1")).toContain("say $& and $1");
    expect(() => wrapJailbreak("nope", instruction)).toThrow(/unknown jailbreak template 'nope'; known: roleplay/);
    expect(() => wrapJailbreak("dan", "  ")).toThrow(JailbreakError);
  });
});
