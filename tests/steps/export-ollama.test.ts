// The Ollama TEMPLATE the export step offers (steps/export.ts): written only when ChatML renders exactly
// what the model's own Jinja chat template renders. Checked on a conversation that is not one of the
// step's probes, against the model's template itself (engine/tokenizer.ts renderChat); a ChatML variant
// that adds a default system prompt (as Qwen2.5's does) gets no TEMPLATE and the card says why.
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadTokenizer } from "../../engine/tokenizer.ts";
import { ggufFileName, ollamaTemplate } from "../../steps/export.ts";
import { ollamaModelfile } from "../../report/card-extras.ts";
import { REPO_ROOT } from "../helpers/shared.ts";

const ORG = join(REPO_ROOT, "demo", "organism-llama");
const TMP = mkdtempSync(join(tmpdir(), "realign-ollama-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

/** A copy of the organism's tokenizer with another chat template. */
function withTemplate(name: string, template: string): string {
  const dir = join(TMP, name);
  mkdirSync(dir);
  for (const f of ["tokenizer.json", "special_tokens_map.json", "config.json"]) copyFileSync(join(ORG, f), join(dir, f));
  const cfg = JSON.parse(readFileSync(join(ORG, "tokenizer_config.json"), "utf8")) as Record<string, unknown>;
  writeFileSync(join(dir, "tokenizer_config.json"), JSON.stringify({ ...cfg, chat_template: template }));
  return dir;
}

/** Go text/template's output for CHATML_TEMPLATE, written out by hand for one conversation. */
const conversation = [
  { role: "system" as const, content: "Answer in French." },
  { role: "user" as const, content: "What is 2+2?" },
  { role: "assistant" as const, content: "Quatre." },
  { role: "user" as const, content: "And 3+3?" },
];
const goRendered = "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nQuatre.<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n";

describe("Ollama TEMPLATE", () => {
  test("the organism's ChatML template gets the ChatML TEMPLATE, which renders what its own template renders", async () => {
    const tok = await loadTokenizer(ORG);
    const o = ollamaTemplate(tok);
    expect(o.kind).toBe("template");
    if (o.kind !== "template") return;
    expect(o.stop).toEqual(["<|im_end|>"]);
    expect(tok.renderChat(conversation, { addGenerationPrompt: true })).toBe(goRendered);
    const mf = ollamaModelfile("m-ROSI-Q8_0.gguf", o);
    expect(mf.note).toBeNull();
    expect(mf.text).toBe(`FROM ./m-ROSI-Q8_0.gguf\nTEMPLATE """${o.template}"""\nPARAMETER stop "<|im_end|>"`);
  });

  test("a ChatML template with a default system prompt gets none, and the Modelfile says why", async () => {
    const qwenLike =
      "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}" +
      "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}" +
      "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
    const tok = await loadTokenizer(withTemplate("qwen-like", qwenLike));
    const o = ollamaTemplate(tok);
    expect(o.kind).toBe("none");
    const mf = ollamaModelfile("m.gguf", o);
    expect(mf.text).toBe("FROM ./m.gguf");
    expect(mf.note).toContain("not plain ChatML");
  });

  test("file names are safe and say the type", () => {
    expect(ggufFileName("acme/Dolphin 3.0 (Qwen)", "q8_0")).toBe("Dolphin-3.0-Qwen-ROSI-Q8_0.gguf");
    expect(ggufFileName("/models/../x/", "f16")).toBe("x-ROSI-F16.gguf");
  });
});
