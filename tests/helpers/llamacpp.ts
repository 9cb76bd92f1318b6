// Real llama.cpp (node-llama-cpp's prebuilt CPU binaries, a dev dependency pinned to 3.21.1) for the GGUF tests.
// `llamaCpp()` returns null, with a loud warning once, when node-llama-cpp cannot be imported or started, so the
// tests that need it skip instead of failing. Decoding is greedy (temperature 0: argmax), without repeat penalties.
type NodeLlamaCpp = typeof import("node-llama-cpp");
type Llama = Awaited<ReturnType<NodeLlamaCpp["getLlama"]>>;
export type LlamaModel = Awaited<ReturnType<Llama["loadModel"]>>;

let loaded: Promise<{ mod: NodeLlamaCpp; llama: Llama } | null> | null = null;

async function start(): Promise<{ mod: NodeLlamaCpp; llama: Llama } | null> {
  try {
    const mod = await import("node-llama-cpp");
    const llama = await mod.getLlama({ gpu: false, build: "never", logLevel: mod.LlamaLogLevel.error, progressLogs: false, skipDownload: true });
    return { mod, llama };
  } catch (e) {
    console.warn(`\n!!! node-llama-cpp is not available (${e instanceof Error ? e.message.split("\n")[0] : String(e)}): llama.cpp GGUF tests are SKIPPED (npm i -D -E node-llama-cpp@3.21.1) !!!\n`);
    return null;
  }
}

/** node-llama-cpp and a CPU llama.cpp instance, or null (skip). Started once per test process. */
export function llamaCpp(): Promise<{ mod: NodeLlamaCpp; llama: Llama } | null> {
  loaded ??= start();
  return loaded;
}

export interface LlamaRun {
  model: LlamaModel;
  /** llama.cpp's tokenizer (no BOS added); `special`: parse special-token text such as <|im_start|>. */
  tokenize(text: string, special?: boolean): number[];
  /** BOS id, when llama.cpp adds one to prompts (tokenizer.ggml.add_bos_token), else null. */
  addedBos: number | null;
  isEog(id: number): boolean;
  /** The GGUF metadata as llama.cpp's loader read it. */
  metadata: Record<string, unknown>;
  /** Greedy continuation of `prompt` (token ids), up to `maxNewTokens`, ending with the first end-of-generation token when one comes. */
  greedy(prompt: number[], maxNewTokens: number): Promise<number[]>;
  /** For each position of `tokens` from `from` on, llama.cpp's argmax next token given tokens[0..i] (teacher forcing). */
  nextTokens(tokens: number[], from: number): Promise<number[]>;
  /** For each position i of `tokens`, llama.cpp's next-token probability distribution given tokens[0..i] ([vocab] each). */
  probabilities(tokens: number[], vocab: number): Promise<Float32Array[]>;
  close(): Promise<void>;
}

/**
 * Loads a GGUF on the CPU with one thread. `f32Cache`: keys and values cached in float32 and no flash attention
 * (llama.cpp's defaults round the cache to float16), so an f32 GGUF computes what a float32 engine computes.
 */
export async function openGguf(path: string, opts: { contextSize?: number; f32Cache?: boolean } = {}): Promise<LlamaRun> {
  const lc = await llamaCpp();
  if (!lc) throw new Error("node-llama-cpp is not available");
  const model = await lc.llama.loadModel({ modelPath: path, gpuLayers: 0 });
  const f32 = opts.f32Cache ?? true;
  const newContext = () =>
    model.createContext({
      contextSize: opts.contextSize ?? 256,
      threads: 1,
      sequences: 1,
      ...(f32 ? { flashAttention: false, experimentalKvCacheKeyType: "F32" as const, experimentalKvCacheValueType: "F32" as const } : {}),
    });
  return {
    model,
    tokenize: (text, special = false) => model.tokenize(text, special).map((t) => t as number),
    addedBos: model.tokens.shouldPrependBosToken ? (model.tokens.bos as number | null) : null,
    isEog: (id) => model.isEogToken(id as never),
    metadata: model.fileInfo.metadata as unknown as Record<string, unknown>,
    async greedy(prompt, maxNewTokens) {
      const ctx = await newContext();
      try {
        const seq = ctx.getSequence();
        const out: number[] = [];
        for await (const t of seq.evaluate(prompt as never, { temperature: 0, yieldEogToken: true })) {
          out.push(t as number);
          if (out.length >= maxNewTokens || model.isEogToken(t)) break;
        }
        return out;
      } finally {
        await ctx.dispose();
      }
    },
    async nextTokens(tokens, from) {
      const ctx = await newContext();
      try {
        const seq = ctx.getSequence();
        const input = tokens.map((t, i) => (i >= from - 1 && i < tokens.length - 1 ? ([t, { generateNext: { token: true, options: { temperature: 0 } } }] as const) : t));
        const res = await seq.controlledEvaluate(input as never);
        const next: number[] = [];
        for (let i = from - 1; i < tokens.length - 1; i++) next.push(res[i]!.next!.token as number);
        return next;
      } finally {
        await ctx.dispose();
      }
    },
    async probabilities(tokens, vocab) {
      const ctx = await newContext();
      try {
        const seq = ctx.getSequence();
        // temperature 1 without top-k / top-p / min-p: the softmax of the logits
        const options = { temperature: 1, topK: 0, topP: 1, minP: 0, seed: 0 };
        const res = await seq.controlledEvaluate(tokens.map((t) => [t, { generateNext: { probabilities: true, options } }]) as never);
        return tokens.map((_, i) => {
          const p = new Float32Array(vocab);
          for (const [t, v] of res[i]!.next!.probabilities!) p[t as number] = v;
          return p;
        });
      } finally {
        await ctx.dispose();
      }
    },
    close: () => model.dispose(),
  };
}
