// The real CLI entry with the fake steps injected (SIGINT and end-to-end CLI tests).
import { main } from "../../../cli/cli.ts";
import { fakeOptionsFromEnv, makeFakeSteps } from "./fake-steps.ts";

process.exit(await main(process.argv, { getSteps: () => makeFakeSteps(fakeOptionsFromEnv()), interactive: false }));
