// YAML front matter of a Markdown file (a model card's README.md): the mapping between a first line
// "---" and the next "---" line, and the body after it. Guarantees: the front matter is a plain
// mapping ({} when there is none or it is empty); a leading BOM is ignored; a non-string, an unclosed
// block, YAML that does not parse, or YAML that is not a mapping throws FrontMatterError, whose
// message starts with what the caller calls the file ("model card front matter is not valid YAML: …").
import { parse as parseYaml } from "yaml";

export class FrontMatterError extends Error {
  override name = "FrontMatterError";
}

export interface FrontMatter {
  frontMatter: Record<string, unknown>;
  body: string;
}

/** Split `text` into its YAML front matter and the body; `what` names the file in error messages. */
export function parseFrontMatter(text: string, what: string): FrontMatter {
  if (typeof text !== "string") throw new FrontMatterError(`${what}: expected a string`);
  const src = text.replace(/^\uFEFF/, "");
  const m = /^---[ \t]*\r?\n([\s\S]*?)\r?\n---[ \t]*(?:\r?\n|$)/.exec(src) ?? /^---[ \t]*\r?\n()---[ \t]*(?:\r?\n|$)/.exec(src);
  if (!m) {
    if (/^---[ \t]*\r?\n/.test(src)) throw new FrontMatterError(`${what} front matter starts with --- but has no closing --- line`);
    return { frontMatter: {}, body: src };
  }
  let data: unknown;
  try {
    data = m[1].trim() === "" ? {} : parseYaml(m[1]);
  } catch (e) {
    throw new FrontMatterError(`${what} front matter is not valid YAML: ${e instanceof Error ? e.message : String(e)}`);
  }
  if (data === null || data === undefined) data = {};
  if (typeof data !== "object" || Array.isArray(data)) throw new FrontMatterError(`${what} front matter must be a YAML mapping (key: value)`);
  return { frontMatter: data as Record<string, unknown>, body: src.slice(m[0].length).replace(/^\r?\n/, "") };
}
