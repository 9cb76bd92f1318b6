// Where the benches find the project: its root and the `realign` entry point (spawn with cwd: ROOT).
import { resolve } from "node:path";

export const ROOT = resolve(import.meta.dir, "..");
export const CLI = "cli/cli.ts";
