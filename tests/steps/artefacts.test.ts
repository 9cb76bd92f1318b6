// The artefact table is the steps' contract: every step declares exactly its row, and the readers
// refuse names the producer does not write and files without the fields consumers rely on.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ARTEFACTS, ArtefactError, artefact, readSelection, readSource, type ArtefactName } from "../../steps/artefacts.ts";
import { getSteps } from "../../steps/index.ts";
import type { StepContext } from "../../pipeline/runner.ts";

const work = mkdtempSync(join(tmpdir(), "realign-artefacts-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function ctxReading(deps: string[]): StepContext<unknown> {
  return {
    upstream(name: string) {
      if (!deps.includes(name)) throw new Error(`reads upstream "${name}" but does not list it in deps`);
      return join(work, name);
    },
  } as StepContext<unknown>;
}

describe("artefact table", () => {
  test("each step's outputs are its row of the table, and the table names only real steps", () => {
    const steps = getSteps();
    expect(steps.map((s) => s.name)).toEqual(Object.keys(ARTEFACTS));
    for (const s of steps) expect(s.outputs).toEqual([...ARTEFACTS[s.name as keyof typeof ARTEFACTS]]);
  });

  test("a name the producer does not write is refused", () => {
    const ctx = ctxReading(["extract"]);
    expect(() => artefact(ctx, "extract", "calibration.json" as ArtefactName<"extract">)).toThrow(ArtefactError);
    expect(() => artefact(ctx, "extract", "calibration.json" as ArtefactName<"extract">)).toThrow(/extract does not produce calibration.json/);
    expect(artefact(ctx, "extract", "selection.json")).toBe(join(work, "extract", "selection.json"));
  });

  test("a reader of a step not in deps fails as the runner says", () => {
    expect(() => readSource(ctxReading(["elicit"]))).toThrow(/does not list it in deps/);
  });

  test("a file missing a field, or not JSON, is refused with the file and field named", () => {
    mkdirSync(join(work, "pull"), { recursive: true });
    writeFileSync(join(work, "pull", "source.json"), JSON.stringify({ dir: "/m", repo: null, commit: null }));
    expect(() => readSource(ctxReading(["pull"]))).toThrow(/source\.json: field "fingerprint" should be string, found undefined/);
    writeFileSync(join(work, "pull", "source.json"), JSON.stringify({ dir: "/m", repo: null, commit: null, fingerprint: "abc", license: null }));
    expect(readSource(ctxReading(["pull"])).dir).toBe("/m");
    mkdirSync(join(work, "extract"), { recursive: true });
    writeFileSync(join(work, "extract", "selection.json"), "{ truncated");
    expect(() => readSelection(ctxReading(["extract"]))).toThrow(/selection\.json: unreadable/);
  });
});
