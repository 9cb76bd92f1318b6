// The floor plan, enforced: every import between the project's rooms must point down this list.
//
//   cli → fleet → steps → rosi → evals → {engine, pipeline, hub} → report → util
//
// A room may import itself and any room on a lower floor; rooms on the same floor (engine, pipeline,
// hub) do not import each other. Exits 1 listing each offending import (file:line), else prints a summary.
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";

export const FLOORS: readonly (readonly string[])[] = [["cli"], ["fleet"], ["steps"], ["rosi"], ["evals"], ["engine", "pipeline", "hub"], ["report"], ["util"]];
const floorOf = new Map(FLOORS.flatMap((rooms, i) => rooms.map((r) => [r, i] as const)));

export interface Violation {
  file: string;
  line: number;
  from: string;
  to: string;
}

function* tsFiles(dir: string): Generator<string> {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* tsFiles(p);
    else if (p.endsWith(".ts")) yield p;
  }
}

/** Every import that runs sideways or back up a floor, in the rooms under `root`. */
export function layerViolations(root: string): Violation[] {
  const out: Violation[] = [];
  const spec = /(?:from|import)\s*\(?\s*["'](\.{1,2}\/[^"']+)["']/g;
  for (const room of floorOf.keys()) {
    let files: string[] = [];
    try {
      files = [...tsFiles(join(root, room))];
    } catch {
      continue;
    }
    for (const file of files) {
      const lines = readFileSync(file, "utf8").split("\n");
      lines.forEach((text, i) => {
        for (const m of text.matchAll(spec)) {
          const target = relative(root, resolve(dirname(file), m[1])).split(sep)[0];
          if (target === room || !floorOf.has(target)) continue;
          if (floorOf.get(target)! <= floorOf.get(room)!) out.push({ file: relative(root, file), line: i + 1, from: room, to: target });
        }
      });
    }
  }
  return out;
}

if (import.meta.main) {
  const root = resolve(import.meta.dir, "..");
  const bad = layerViolations(root);
  for (const v of bad) console.error(`${v.file}:${v.line}: ${v.from} imports ${v.to} (imports must point down: ${FLOORS.map((f) => f.join("|")).join(" → ")})`);
  if (bad.length) process.exit(1);
  console.log(`layers ok: ${FLOORS.map((f) => f.join("|")).join(" → ")}`);
}
