// The floor plan holds: imports between rooms point down (cli → fleet → steps → rosi → evals →
// {engine, pipeline, hub} → report → util), and steps/ holds the eight steps and their contracts only.
import { expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { layerViolations } from "../scripts/check-layers.ts";
import { REPO_ROOT } from "./helpers/shared.ts";

test("no import runs sideways or back up a floor", () => {
  const bad = layerViolations(REPO_ROOT).map((v) => `${v.file}:${v.line}: ${v.from} → ${v.to}`);
  expect(bad).toEqual([]);
});

test("the checker finds an upward import (it can fail)", () => {
  const root = mkdtempSync(join(tmpdir(), "realign-layers-"));
  try {
    mkdirSync(join(root, "engine"));
    mkdirSync(join(root, "steps"));
    writeFileSync(join(root, "steps", "a.ts"), 'export const a = 1;\n');
    writeFileSync(join(root, "engine", "b.ts"), 'import { a } from "../steps/a.ts";\nexport const b = a;\n');
    expect(layerViolations(root)).toEqual([{ file: join("engine", "b.ts"), line: 1, from: "engine", to: "steps" }]);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test("steps/ holds the eight steps, the settings schema and its Reproduce command, the trade-off choice, the artefact table, shared helpers and the list", () => {
  const files = readdirSync(join(REPO_ROOT, "steps")).sort();
  expect(files).toEqual(["artefacts.ts", "common.ts", "elicit.ts", "export.ts", "extract.ts", "index.ts", "inject.ts", "publish.ts", "pull.ts", "reproduce.ts", "settings.ts", "srr.ts", "tradeoff.ts", "validate.ts"]);
});
