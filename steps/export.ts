// export: the re-aligned model (inject/model) as one GGUF file for llama.cpp, Ollama and LM Studio,
// when the gguf setting names a type (f32, f16, bf16, q8_0; default none: the step only records that).
//
// Contract: reads inject/model and pull/source.json; writes export.json (ExportRecord) and gguf/, which
// holds <repo-name>-ROSI-<TYPE>.gguf or nothing. The GGUF carries the checkpoint's realign_* metadata as
// realign.* (method, alpha, layer, position, direction_sha256: the same values as calibration.json and
// edit.safetensors) plus realign.base_model. Its inputs are the gguf setting alone, so choosing a type
// re-runs this step and publish, nothing else. It runs after validate, so a failed gate stops the run
// before minutes are spent exporting (with --force it runs).
//
// Ollama: a Modelfile's TEMPLATE is a Go template, not the model's Jinja chat template. One is written
// only when a known template (ChatML) renders exactly what the model's own chat template renders on
// probe conversations (with and without a system prompt, several turns); otherwise the record says why.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Step } from "../pipeline/runner.ts";
import type { Settings } from "./settings.ts";
import { writeGguf, type GgufType } from "../engine/gguf.ts";
import { loadTokenizer, type ChatMessage, type ModelTokenizer } from "../engine/tokenizer.ts";
import { outputsOf, patchedModelDir, readSource, writeJson, type ExportRecord, type GgufRecord } from "./artefacts.ts";

/** A file-name-safe "<name>-ROSI-<TYPE>.gguf" for the base model (its repo name, or its folder's). */
export function ggufFileName(baseModel: string, type: GgufType): string {
  const name = (baseModel.split(/[\\/]/).filter(Boolean).pop() ?? "model").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[.-]+|[.-]+$/g, "") || "model";
  return `${name}-ROSI-${type.toUpperCase()}.gguf`;
}

/** Conversations the Ollama template must render exactly as the model's chat template does. */
const PROBES: ChatMessage[][] = [
  [{ role: "user", content: "Hello there." }],
  [
    { role: "system", content: "You are terse." },
    { role: "user", content: "Name a colour." },
  ],
  [
    { role: "system", content: "Be kind." },
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Hello! How can I help?" },
    { role: "user", content: "Tell me a fact." },
  ],
];

/** Ollama's ChatML template (its .Messages list carries the system prompt first, as role "system"). */
const CHATML_TEMPLATE = `{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
`;
/** What CHATML_TEMPLATE renders for a conversation (Go's text/template semantics for this one template). */
const renderChatMl = (messages: ChatMessage[]) => messages.map((m) => `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`).join("") + "<|im_start|>assistant\n";

/** The Ollama TEMPLATE for this tokenizer's chat template, when one is known to render it faithfully. */
export function ollamaTemplate(tok: ModelTokenizer): GgufRecord["ollama"] {
  if (tok.chatTemplate === null) return { kind: "none", reason: "the model has no chat template (a base model: prompt it with raw text)" };
  if (!tok.supportsSystemRole) return { kind: "none", reason: "the chat template has no system role; Ollama reads tokenizer.chat_template from the GGUF and may map it to one of its own templates, check `ollama show --template`" };
  for (const probe of PROBES) {
    let theirs: string;
    try {
      theirs = tok.renderChat(probe, { addGenerationPrompt: true });
    } catch (e) {
      return { kind: "none", reason: `the chat template failed on a probe conversation (${e instanceof Error ? e.message.split("\n")[0] : String(e)})` };
    }
    if (theirs !== renderChatMl(probe)) {
      return { kind: "none", reason: "the chat template is not plain ChatML (it renders differently on a probe conversation, e.g. a default system prompt), so no TEMPLATE is written: Ollama reads tokenizer.chat_template from the GGUF and may map it to one of its own templates, check `ollama show --template`" };
    }
  }
  return { kind: "template", template: CHATML_TEMPLATE, stop: ["<|im_end|>"] };
}

export const exportStep: Step<Settings> = {
  name: "export",
  version: 1,
  deps: ["pull", "inject"],
  outputs: outputsOf("export"),
  inputs: (s) => ({ gguf: s.gguf }),
  async run(ctx) {
    const s = ctx.settings;
    const dir = join(ctx.tmpDir, "gguf");
    mkdirSync(dir);
    if (s.gguf === "none") {
      const none: ExportRecord = { gguf: null };
      writeJson(join(ctx.tmpDir, "export.json"), none);
      return { report: { details: { gguf: null } } };
    }
    const source = readSource(ctx);
    const baseModel = source.repo ?? s.model;
    const type: GgufType = s.gguf;
    const modelDir = patchedModelDir(ctx);
    const file = ggufFileName(baseModel, type);
    const bar = ctx.progress(`write ${file}`, 100);
    let shown = 0;
    const result = await writeGguf({
      modelDir,
      out: join(dir, file),
      type,
      name: file.replace(/-[A-Z0-9_]+\.gguf$/, ""),
      pre: null,
      metadata: { "realign.base_model": baseModel, ...(source.commit ? { "realign.base_revision": source.commit } : {}) },
      onProgress: (done, total) => {
        const pct = Math.floor((100 * done) / total);
        if (pct > shown) bar.tick(pct - shown);
        shown = Math.max(shown, pct);
      },
      signal: ctx.signal,
    });
    bar.done();
    for (const w of result.warnings) ctx.log(`warning: ${w}`);
    const record: GgufRecord = {
      file,
      type,
      bytes: result.bytes,
      sha256: result.sha256,
      architecture: result.architecture,
      tensors: result.tensors,
      tokenizer_model: result.tokenizer.model,
      pre_tokenizer: result.tokenizer.pre.name,
      pre_tokenizer_source: result.tokenizer.pre.source,
      realign: result.realign,
      warnings: result.warnings,
      fallbacks: result.fallbacks,
      ollama: ollamaTemplate(await loadTokenizer(modelDir)),
    };
    const out: ExportRecord = { gguf: record };
    writeJson(join(ctx.tmpDir, "export.json"), out);
    ctx.log(`wrote ${file} (${(result.bytes / (1 << 20)).toFixed(1)} MiB, ${type}, pre-tokenizer "${record.pre_tokenizer}" ${record.pre_tokenizer_source}); ROSI edit recorded: ${Object.entries(result.realign).map(([k, v]) => `${k}=${v}`).join(", ") || "none"}`);
    return { report: { details: { gguf: { file, type, bytes: result.bytes, sha256: result.sha256, architecture: result.architecture, pre_tokenizer: record.pre_tokenizer, pre_tokenizer_source: record.pre_tokenizer_source, realign: result.realign, fallbacks: result.fallbacks, ollama: record.ollama } } } };
  },
};
