// Settings resolution (precedence, env mapping, hashing, token handling), models.yaml validation
// with file:line:key messages, the shipped models.yaml, and the cron matcher.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DEFAULTS, envName, settingsHash, type Settings } from "../../steps/settings.ts";
import { resolveSettings } from "../../cli/settings.ts";
import { resolveToken } from "../../hub/repo.ts";
import { cronMatches, nextRun, parseCron } from "../../cli/cron.ts";
import { ConfigError } from "../../util/errors.ts";
import { loadModelsFile, parseModelsFile } from "../../cli/models-file.ts";
import { REPO_ROOT, CLI } from "../helpers/shared.ts";

const TMP = mkdtempSync(join(tmpdir(), "realign-config-"));
afterAll(() => rmSync(TMP, { recursive: true, force: true }));

const parse = (text: string) => parseModelsFile(text, join(TMP, "models.yaml"), "models.yaml");
/** The ConfigError problems a models.yaml text produces. */
function problemsOf(text: string): string[] {
  try {
    parse(text);
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  throw new Error("expected a ConfigError");
}

describe("resolveSettings", () => {
  test("built-in defaults, out derived from the model", () => {
    const { settings, sources } = resolveSettings({ repo: "cognitivecomputations/Dolphin3.0-Qwen2.5-0.5B", env: {} });
    expect(settings).toMatchObject({ nTrain: 64, nVal: 32, nEval: 100, maxNewTokens: 128, rank: 1, method: "auto", device: "auto", publish: true, seed: 0, useSystemPrompt: true, alpha: null, judge: null });
    expect(settings.gate).toEqual({ harmfulGain: 0.1, harmfulAbs: 0.9, overRefusal: 0.05, kl: 0.1, utilityDrop: 0.02 });
    expect(settings.elicitMinGap).toBe(0.2);
    expect(settings.systemPrompt).toBe("auto");
    expect(settings.out).toBe(join("runs", "cognitivecomputations--Dolphin3.0-Qwen2.5-0.5B"));
    expect(settings.model).toBe("cognitivecomputations/Dolphin3.0-Qwen2.5-0.5B");
    expect(sources.nTrain).toBe("default");
    expect(sources.model).toBe("argument");
  });

  test("precedence: CLI > env > models.yaml entry > models.yaml defaults > built-in, per key", () => {
    const file = parse(`defaults:
  n_train: 10
  seed: 1
  n_eval: 11
  max_new_tokens: 12
models:
  - repo: org/m
    n_train: 20
    seed: 2
    n_eval: 21
`);
    const env = { REALIGN_N_TRAIN: "30", REALIGN_SEED: "3" };
    const cli = { nTrain: 40 };
    const r = resolveSettings({ repo: "org/m", env, cli, modelsYaml: file });
    expect([r.settings.nTrain, r.settings.seed, r.settings.nEval, r.settings.maxNewTokens, r.settings.nVal]).toEqual([40, 3, 21, 12, 32]);
    expect(r.sources.nTrain).toBe("cli --n-train");
    expect(r.sources.seed).toBe("env REALIGN_SEED");
    expect(r.sources.nEval).toBe("models.yaml:10 (models[0])");
    expect(r.sources.maxNewTokens).toBe("models.yaml:5 (defaults)");
    expect(r.sources.nVal).toBe("default");
    // Peel off each level: the next one shows through.
    expect(resolveSettings({ repo: "org/m", env, modelsYaml: file }).settings.nTrain).toBe(30);
    expect(resolveSettings({ repo: "org/m", env: {}, modelsYaml: file }).settings.nTrain).toBe(20);
    expect(resolveSettings({ repo: "org/other", env: {}, modelsYaml: file }).settings.nTrain).toBe(10);
    expect(resolveSettings({ repo: "org/m", env: {} }).settings.nTrain).toBe(64);
    // Entries match case-insensitively, like Hub repo ids.
    expect(resolveSettings({ repo: "ORG/M", env: {}, modelsYaml: file }).settings.nTrain).toBe(20);
  });

  test("gate thresholds merge key by key across levels", () => {
    const file = parse(`defaults:
  gate: {kl: 0.5}
models:
  - repo: org/m
    gate:
      harmful_abs: 0.8
`);
    const r = resolveSettings({ repo: "org/m", env: { REALIGN_GATE_OVER_REFUSAL: "0.01" }, cli: { gate: { utilityDrop: 0.1 } }, modelsYaml: file });
    expect(r.settings.gate).toEqual({ harmfulGain: 0.1, harmfulAbs: 0.8, overRefusal: 0.01, kl: 0.5, utilityDrop: 0.1 });
    expect(r.sources["gate.kl"]).toBe("models.yaml:2 (defaults)");
    expect(r.sources["gate.utilityDrop"]).toBe("cli --gate-utility-drop");
  });

  test("environment names and value parsing", () => {
    expect(envName("nTrain")).toBe("REALIGN_N_TRAIN");
    expect(envName("maxNewTokens")).toBe("REALIGN_MAX_NEW_TOKENS");
    expect(envName("gate.harmfulGain")).toBe("REALIGN_GATE_HARMFUL_GAIN");
    const r = resolveSettings({
      repo: "org/m",
      env: {
        REALIGN_N_TRAIN: "128",
        REALIGN_DEVICE: "CUDA",
        REALIGN_USE_SYSTEM_PROMPT: "false",
        REALIGN_PUBLISH: "0",
        REALIGN_ALPHA: "2.5",
        REALIGN_LAYER: "auto",
        REALIGN_PUSH_TO: "me/x",
        REALIGN_HUB_URL: "http://localhost:9999",
        REALIGN_N_TRIAN: "1",
        // Read elsewhere (graph cache, debugging): understood, not warned about.
        REALIGN_CACHE: "/tmp/cache",
        REALIGN_DEBUG: "1",
        PATH: "/bin",
      },
    });
    expect(r.settings).toMatchObject({ nTrain: 128, device: "cuda", useSystemPrompt: false, publish: false, alpha: 2.5, layer: null, pushTo: "me/x", hubUrl: "http://localhost:9999" });
    expect(r.warnings).toEqual(["ignoring unknown environment variable REALIGN_N_TRIAN (did you mean REALIGN_N_TRAIN?)"]);
  });

  test("bad values from every source are collected into one ConfigError naming the source", () => {
    let err: unknown;
    try {
      resolveSettings({ repo: "org/m", env: { REALIGN_N_TRAIN: "many", REALIGN_DEVICE: "cdua" }, cli: { rank: 0, alpha: 0, pushTo: "nope", "gate.kl": "x" } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      'REALIGN_N_TRAIN: expected an integer, got "many"',
      'REALIGN_DEVICE: expected one of auto, cpu, cuda, webgpu, got "cdua" (did you mean cuda?)',
      "--rank: must be ≥ 1, got 0",
      "--alpha: must not be 0 (that would change nothing)",
      '--gate-kl: expected a number, got "x"',
      'pushTo (cli --push-to): expected owner/name (or file:<dir> for a local folder), got "nope"',
    ]);
  });

  test("settingsHash covers result-affecting settings only; the system prompt counts by content", () => {
    const base = resolveSettings({ repo: "org/m", env: {} }).settings;
    const h = settingsHash(base);
    const with_ = (o: Partial<Settings>) => settingsHash({ ...base, ...o });
    expect(with_({ out: "elsewhere", device: "cuda", publish: false, pushTo: "me/x", private: true, offline: true, hubUrl: "http://x" })).toBe(h);
    expect(with_({ nTrain: 65 })).not.toBe(h);
    expect(with_({ gate: { ...base.gate, kl: 0.2 } })).not.toBe(h);
    expect(with_({ useSystemPrompt: false })).not.toBe(h);
    const a = join(TMP, "a.md");
    const b = join(TMP, "b.md");
    writeFileSync(a, "Refuse harmful requests.");
    writeFileSync(b, "Refuse harmful requests.");
    expect(with_({ systemPrompt: a })).toBe(with_({ systemPrompt: b }));
    writeFileSync(b, "Refuse harmful requests!");
    expect(with_({ systemPrompt: a })).not.toBe(with_({ systemPrompt: b }));
  });

  test("the HF token is never part of settings or their hash", () => {
    const env = { HF_TOKEN: "hf_secret_123", HF_HOME: join(TMP, "no-hf-home") };
    const { settings } = resolveSettings({ repo: "org/m", env });
    expect(JSON.stringify(settings)).not.toContain("hf_secret");
    expect(settingsHash(settings)).toBe(settingsHash(resolveSettings({ repo: "org/m", env: {} }).settings));
    expect(resolveToken("hf_cli", env)).toBe("hf_cli");
    expect(resolveToken(null, env)).toBe("hf_secret_123");
    writeFileSync(join(TMP, "token"), "hf_from_file\n");
    expect(resolveToken(null, { HF_HOME: TMP })).toBe("hf_from_file");
    expect(resolveToken(null, { HF_HOME: join(TMP, "none") })).toBeNull();
  });

  test("relative paths: CLI ones against cwd, models.yaml ones against the file's folder", () => {
    const file = parseModelsFile("models:\n  - repo: org/m\n    system_prompt: prompts/safety.md\n", join(TMP, "cfg", "models.yaml"));
    expect(resolveSettings({ repo: "org/m", env: {}, modelsYaml: file }).settings.systemPrompt).toBe(join(TMP, "cfg", "prompts", "safety.md"));
    expect(resolveSettings({ repo: "org/m", env: {}, cli: { systemPrompt: "p.md" }, cwd: "/work/x" }).settings.systemPrompt).toBe("/work/x/p.md");
  });
});

describe("models.yaml validation", () => {
  test("unknown key: file, line, key path and a suggestion", () => {
    const text = `defaults:
  n_train: 32
models:
  - repo: org/a
  - repo: org/b
  - repo: org/c
    alpah: 3
`;
    expect(problemsOf(text)).toEqual(["models.yaml:7: models[2].alpah: unknown key (did you mean alpha?)"]);
  });

  test("every problem is reported with its line", () => {
    const text = `defaults:
  n_train: -4
  device: tpu
  out: runs/x
  pushTo: me/x
schedule: "61 * * * *"
modles: []
models:
  - repo: org/a
    enabled: maybe
    gate:
      kl: big
      klx: 1
  - alpha: 2
  - repo: org/a
  - repo: not a repo
  - just-a-string
`;
    expect(problemsOf(text)).toEqual([
      "models.yaml:2: defaults.n_train: must be ≥ 1, got -4",
      'models.yaml:3: defaults.device: expected one of auto, cpu, cuda, webgpu, got "tpu" (did you mean cpu?)',
      "models.yaml:4: defaults.out: cannot be set in defaults (set it per model)",
      "models.yaml:5: defaults.pushTo: unknown key (did you mean push_to?)",
      "models.yaml:6: schedule: invalid cron expression: minute: 61 is out of range 0-59",
      "models.yaml:7: modles: unknown top-level key (did you mean models?)",
      'models.yaml:10: models[0].enabled: expected true or false, got "maybe"',
      'models.yaml:12: models[0].gate.kl: expected a number, got "big"',
      "models.yaml:13: models[0].gate.klx: unknown key (did you mean kl?)",
      "models.yaml:14: models[1]: missing required key repo",
      "models.yaml:15: models[2].repo: duplicate of models[0] (org/a)",
      'models.yaml:16: models[3].repo: "not a repo" is not a repo id (owner/name); local directories start with ./ or /',
      "models.yaml:17: models[4]: expected a mapping with at least repo:",
    ]);
  });

  test("YAML syntax errors carry a line", () => {
    const problems = problemsOf("models:\n  - repo: org/a\n    alpha: [1, 2\n");
    expect(problems.length).toBeGreaterThan(0);
    expect(problems[0]).toMatch(/^models\.yaml:\d+: YAML syntax error: /);
    expect(problemsOf("defaults:\n  seed: 1\n  seed: 2\nmodels:\n  - repo: a/b\n    alpha: 1\n    alpha: 2\n")).toEqual([
      "models.yaml:3: defaults.seed: duplicate key (first set at line 2)",
      "models.yaml:7: models[0].alpha: duplicate key (first set at line 6)",
    ]);
  });

  test("top-level gate: acts as defaults and conflicts with defaults.gate are reported", () => {
    expect(parse("gate:\n  kl: 0.3\n").defaults["gate.kl"]).toEqual({ value: 0.3, line: 2 });
    expect(problemsOf("defaults:\n  gate: {kl: 0.2}\ngate:\n  kl: 0.3\n")).toEqual(["models.yaml:4: gate.kl: also set in defaults.gate at line 2; keep one"]);
  });

  test("a missing file is a ConfigError naming it", () => {
    expect(() => loadModelsFile(join(TMP, "missing.yaml"))).toThrow(/missing\.yaml: file not found/);
  });

  test("the shipped models.yaml: Dolphin 3.0 family, big ones disabled, weekly schedule", () => {
    const file = loadModelsFile(resolve(REPO_ROOT, "models.yaml"));
    const repos = file.models.map((m) => m.repo);
    for (const name of ["Llama3.2-1B", "Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-3B", "Llama3.1-8B", "Mistral-24B"]) {
      expect(repos).toContain(`cognitivecomputations/Dolphin3.0-${name}`);
    }
    const disabled = file.models.filter((m) => !m.enabled).map((m) => m.repo);
    expect(disabled).toEqual(["cognitivecomputations/Dolphin3.0-Llama3.1-8B", "cognitivecomputations/Dolphin3.0-Mistral-24B"]);
    const sched = parseCron(file.schedule!);
    // Weekly: exactly 7 days between consecutive runs.
    const a = nextRun(sched, new Date(2030, 0, 1))!;
    expect(nextRun(sched, a)!.getTime() - a.getTime()).toBe(7 * 24 * 3600 * 1000);
    // Every model resolves with the built-in gate and prompt-set sizes (the file does not fork them).
    for (const m of file.models) {
      const s = resolveSettings({ repo: m.repo, env: {}, modelsYaml: file }).settings;
      expect(s.gate).toEqual(DEFAULTS.gate);
      expect([s.nTrain, s.nVal, s.nEval]).toEqual([DEFAULTS.nTrain, DEFAULTS.nVal, DEFAULTS.nEval]);
    }
  });
});

describe("cron", () => {
  const at = (y: number, mo: number, d: number, h = 0, mi = 0) => new Date(y, mo - 1, d, h, mi);

  test("next run for common expressions", () => {
    // 2030-01-06 is a Sunday.
    expect(nextRun(parseCron("0 3 * * 1"), at(2030, 1, 6, 12))).toEqual(at(2030, 1, 7, 3));
    expect(nextRun(parseCron("0 3 * * mon"), at(2030, 1, 7, 3))).toEqual(at(2030, 1, 14, 3));
    expect(nextRun(parseCron("*/15 * * * *"), at(2030, 1, 1, 10, 7))).toEqual(at(2030, 1, 1, 10, 15));
    expect(nextRun(parseCron("30 9-17/4 * * *"), at(2030, 1, 1, 10))).toEqual(at(2030, 1, 1, 13, 30));
    expect(nextRun(parseCron("0 0 31 * *"), at(2030, 2, 1))).toEqual(at(2030, 3, 31));
    expect(nextRun(parseCron("0 0 29 feb *"), at(2030, 3, 1))).toEqual(at(2032, 2, 29));
    expect(nextRun(parseCron("@weekly"), at(2030, 1, 6, 0, 0))).toEqual(at(2030, 1, 13));
    expect(nextRun(parseCron("0 12 * * 7"), at(2030, 1, 1))).toEqual(at(2030, 1, 6, 12));
  });

  test("day-of-month and day-of-week both restricted: either matches", () => {
    const s = parseCron("0 0 13 * 5");
    expect(cronMatches(s, at(2030, 1, 4))).toBe(true); // a Friday
    expect(cronMatches(s, at(2030, 1, 13))).toBe(true); // the 13th (a Sunday)
    expect(cronMatches(s, at(2030, 1, 14))).toBe(false);
  });

  test("invalid expressions are rejected with a reason", () => {
    expect(() => parseCron("0 3 * *")).toThrow(/expected 5 fields/);
    expect(() => parseCron("0 24 * * *")).toThrow(/hour: 24 is out of range/);
    expect(() => parseCron("0 0 * * fun")).toThrow(/day of week: "fun" is not a number or name/);
    expect(() => parseCron("*/0 * * * *")).toThrow(/step must be a positive integer/);
    expect(() => parseCron("0 0 5-1 * *")).toThrow(/goes backwards/);
    expect(() => parseCron("0 0 30 2 *")).toThrow(/never matches/);
    expect(() => parseCron("@fortnightly")).toThrow(/unknown macro/);
  });
});
