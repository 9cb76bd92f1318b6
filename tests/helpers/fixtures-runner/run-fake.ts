// Child process for the SIGKILL/resume test: runs the fake pipeline into argv[2] via the runner.
import { resolveSettings } from "../../../cli/settings.ts";
import { settingsHash } from "../../../steps/settings.ts";
import { runPipeline } from "../../../pipeline/runner.ts";
import { fakeOptionsFromEnv, makeFakeSteps } from "./fake-steps.ts";
import { writeRunReport } from "../../../report/build.ts";

const out = process.argv[2];
if (!out) throw new Error("usage: run-fake.ts <out>");
const { settings } = resolveSettings({ repo: "test/fake-model", cli: { out, publish: false, nTrain: 8 }, env: {} });
const outcome = await runPipeline({
  steps: makeFakeSteps(fakeOptionsFromEnv()),
  settings,
  outDir: out,
});
writeRunReport({ outDir: out, run: outcome, base: { model: settings.model, revision: settings.revision, settings_hash: settingsHash(settings) } });
console.log(`DONE ${outcome.steps.map((s) => `${s.name}:${s.status}`).join(" ")}`);
