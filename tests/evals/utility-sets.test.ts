// --utility: multiple-choice question sets in the layouts of ARC and MMLU, from CSV / JSONL / Parquet files,
// local or on a Hub (local server). Parquet fixtures are written with hyparquet-writer (another library
// than the reader), the layouts follow the datasets' published schemas.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parquetWriteBuffer } from "hyparquet-writer";
import { DatasetError, loadMultipleChoice, loadPrompts } from "../../evals/datasets.ts";

const dir = mkdtempSync(join(tmpdir(), "realign-mc-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, data: string | ArrayBuffer) => {
  const p = join(dir, name);
  writeFileSync(p, typeof data === "string" ? data : new Uint8Array(data));
  return p;
};

// allenai/ai2_arc: id, question, choices {text, label}, answerKey (labels are letters or digits)
const arcParquet = parquetWriteBuffer({
  columnData: [
    { name: "id", data: ["q1", "q2"] },
    { name: "question", data: ["Which gas do plants take in?", "How many legs does a spider have?"] },
    { name: "choices", data: [{ text: ["oxygen", "carbon dioxide", "helium"], label: ["A", "B", "C"] }, { text: ["6", "8", "10", "12"], label: ["1", "2", "3", "4"] }] },
    { name: "answerKey", data: ["B", "2"] },
  ],
});
// cais/mmlu: question, subject, choices (list), answer (int64 class index)
const mmluParquet = parquetWriteBuffer({
  columnData: [
    { name: "question", data: ["2 + 2 = ?", "The capital of France is"] },
    { name: "subject", data: ["elementary_mathematics", "geography"] },
    { name: "choices", data: [["3", "4", "5", "6"], ["Rome", "Berlin", "Paris", "Madrid"]] },
    { name: "answer", data: [1n, 2n], type: "INT64" },
  ],
});

describe("multiple-choice utility sets", () => {
  test("ARC (Parquet, letter and digit labels)", async () => {
    const set = await loadMultipleChoice(file("arc.parquet", arcParquet));
    expect(set.items).toEqual([
      { question: "Which gas do plants take in?", choices: ["oxygen", "carbon dioxide", "helium"], answer: 1 },
      { question: "How many legs does a spider have?", choices: ["6", "8", "10", "12"], answer: 1 },
    ]);
  });

  test("MMLU (Parquet, int64 answer index)", async () => {
    const set = await loadMultipleChoice(file("mmlu.parquet", mmluParquet));
    expect(set.items.map((i) => [i.choices[i.answer], i.choices.length])).toEqual([["4", 4], ["Paris", 4]]);
  });

  test("ARC's original JSONL (question.stem, choices [{text, label}])", async () => {
    const line = { id: "x", question: { stem: "Water boils at sea level at", choices: [{ text: "50 °C", label: "A" }, { text: "100 °C", label: "B" }, { text: "150 °C", label: "C" }, { text: "200 °C", label: "D" }] }, answerKey: "B" };
    const set = await loadMultipleChoice(file("arc.jsonl", JSON.stringify(line) + "\n"));
    expect(set.items).toEqual([{ question: "Water boils at sea level at", choices: ["50 °C", "100 °C", "150 °C", "200 °C"], answer: 1 }]);
  });

  test("letter columns (CSV: input, A–D, target)", async () => {
    const set = await loadMultipleChoice(file("mmlu.csv", 'input,A,B,C,D,target\n"Largest planet, by mass?",Mars,Jupiter,Venus,Earth,B\n'));
    expect(set.items).toEqual([{ question: "Largest planet, by mass?", choices: ["Mars", "Jupiter", "Venus", "Earth"], answer: 1 }]);
  });

  test("builtin is the project's own set", async () => {
    const set = await loadMultipleChoice("builtin");
    expect(set.source).toBe("builtin:utility");
    expect(set.items.length).toBeGreaterThan(40);
  });

  test("bad sets are clear errors that name the row", async () => {
    const bad = file("bad.jsonl", [JSON.stringify({ question: "Q1", choices: ["a", "b"], answer: 1 }), JSON.stringify({ question: "Q2", choices: ["a", "b"], answer: 5 })].join("\n"));
    await expect(loadMultipleChoice(bad)).rejects.toThrow(/bad\.jsonl: row 2: answer 5 does not name one of the 2 choices/);
    await expect(loadMultipleChoice(file("noq.json", JSON.stringify([{ choices: ["a", "b"], answer: 0 }])))).rejects.toThrow(/row 1: no question/);
    await expect(loadMultipleChoice(file("onechoice.json", JSON.stringify([{ question: "Q", choices: ["a"], answer: 0 }])))).rejects.toThrow(/two or more non-empty strings/);
    await expect(loadMultipleChoice(file("strings.json", JSON.stringify(["just a prompt"])))).rejects.toThrow(DatasetError);
    await expect(loadMultipleChoice(file("broken.parquet", "PAR1 not really"))).rejects.toThrow(/not a readable Parquet file/);
  });

  test("prompt sets read Parquet too (a column of a Hub-style file)", async () => {
    const p = file("prompts.parquet", parquetWriteBuffer({ columnData: [{ name: "goal", data: ["first prompt", "second prompt", "first prompt"] }] }));
    expect((await loadPrompts(p, { kind: "harmful" })).prompts).toEqual(["first prompt", "second prompt"]);
  });
});

describe("--utility hf:… from a Hub (local server)", () => {
  let server: ReturnType<typeof Bun.serve>;
  let hubUrl: string;
  const path = "/datasets/allenai/ai2_arc/resolve/main/ARC-Challenge/test-00000-of-00001.parquet";
  beforeAll(() => {
    const bytes = new Uint8Array(arcParquet);
    server = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      fetch(req) {
        if (new URL(req.url).pathname !== path) return new Response("Entry not found", { status: 404, headers: { "X-Error-Code": "EntryNotFound" } });
        if (req.headers.get("range") === "bytes=0-0") return new Response(bytes.slice(0, 1), { status: 206, headers: { "Content-Range": `bytes 0-0/${bytes.length}`, ETag: '"p1"' } });
        return new Response(bytes, { headers: { ETag: '"p1"' } });
      },
    });
    hubUrl = `http://127.0.0.1:${server.port}`;
  });
  afterAll(() => server.stop(true));

  test("a Parquet file of an ARC-layout dataset", async () => {
    const set = await loadMultipleChoice("hf:allenai/ai2_arc/ARC-Challenge/test-00000-of-00001.parquet", { hubUrl });
    expect(set.source).toBe("hf:allenai/ai2_arc@main/ARC-Challenge/test-00000-of-00001.parquet");
    expect(set.items.map((i) => i.answer)).toEqual([1, 1]);
  });
});
