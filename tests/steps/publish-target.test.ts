// The publish step replaces a local target folder as a whole, so it checks the folder itself (the CLI
// checks first, but a step never trusts its caller): new, empty, or realign's own; anything else is a
// UsageError and the user's files stay as they were.
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkLocalPublishTarget } from "../../steps/publish.ts";
import { UsageError } from "../../util/errors.ts";

const work = mkdtempSync(join(tmpdir(), "realign-publish-target-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

test("new, empty or realign-published folders are accepted; a user's folder or a file is refused untouched", () => {
  expect(() => checkLocalPublishTarget(join(work, "new"))).not.toThrow();
  mkdirSync(join(work, "empty"));
  expect(() => checkLocalPublishTarget(join(work, "empty"))).not.toThrow();
  const ours = join(work, "ours");
  mkdirSync(ours);
  writeFileSync(join(ours, "README.md"), "---\nsettings_hash: sha256-0123\n---\n# card\n");
  expect(() => checkLocalPublishTarget(ours)).not.toThrow();
  const theirs = join(work, "theirs");
  mkdirSync(theirs);
  writeFileSync(join(theirs, "thesis.tex"), "my work");
  writeFileSync(join(theirs, "README.md"), "# my notes\n");
  expect(() => checkLocalPublishTarget(theirs)).toThrow(UsageError);
  const message = (() => {
    try {
      checkLocalPublishTarget(theirs);
    } catch (e) {
      return (e as Error).message;
    }
    return "";
  })();
  expect(message).toContain("holds files realign did not publish");
  expect(message).toContain("thesis.tex");
  expect(readFileSync(join(theirs, "thesis.tex"), "utf8")).toBe("my work");
  writeFileSync(join(work, "a-file"), "x");
  expect(() => checkLocalPublishTarget(join(work, "a-file"))).toThrow(/is not a folder/);
});
