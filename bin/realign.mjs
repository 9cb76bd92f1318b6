#!/usr/bin/env node
// `realign` as an npm bin (npx realign, npm link): runs cli/cli.ts with the Bun that npm installed
// (the bun dev dependency), else a bun on PATH; arguments, stdio, signals and the exit code pass through.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const local = join(root, "node_modules", ".bin", process.platform === "win32" ? "bun.exe" : "bun");
const bun = existsSync(local) ? local : "bun";
const child = spawn(bun, [join(root, "cli", "cli.ts"), ...process.argv.slice(2)], { stdio: "inherit" });
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => child.kill(sig));
child.on("error", (e) => {
  console.error(`realign: cannot start Bun (${e.message}); run npm install first`);
  process.exit(1);
});
child.on("exit", (code, signal) => process.exit(code ?? (signal === "SIGINT" ? 130 : 143)));
