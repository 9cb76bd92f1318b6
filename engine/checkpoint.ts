// A Hugging Face model directory: config.json, optional generation_config.json, and safetensors
// weights (single file, sharded with an index, or loose files). Pickle-based weights are refused.
// One tensor, one place: a tensor stored in two weight files, listed twice in the index (or any JSON
// key repeated in config.json or the index), or mapped by the index to a shard that does not hold it is
// refused, naming the tensor and both places. Opening reads headers only; what the weights must hold
// for the architecture is checked by validateCheckpoint (architectures.ts).
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { basename, isAbsolute, join } from "node:path";
import { elementValue, firstNonFiniteBytes, NonFiniteError } from "./dtype.ts";
import { findDuplicateKey, SafetensorsFile, type TensorInfo } from "./safetensors.ts";

export class CheckpointError extends Error {
  override name = "CheckpointError";
}

export interface CheckpointOptions {
  /**
   * A file name inside the directory to load weights from instead of auto-detection: a
   * `.safetensors` file (e.g. "model-bf16.safetensors") or a sharded index `.json`.
   */
  weights?: string;
}

const SINGLE = "model.safetensors";
const INDEX = "model.safetensors.index.json";
const PICKLE_EXT = [".bin", ".pt", ".pth", ".ckpt"];

function readJsonObject(path: string, required: boolean): Record<string, unknown> | null {
  if (!existsSync(path)) {
    if (required) throw new CheckpointError(`missing ${path}`);
    return null;
  }
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new CheckpointError(`cannot read ${path}: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(`${path} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new CheckpointError(`${path} must contain a JSON object`);
  // JSON.parse keeps the last of a repeated key; two values for one setting (or one tensor) are refused.
  const dup = findDuplicateKey(text);
  if (dup) {
    if (dup.path.length === 1 && dup.path[0] === "weight_map") {
      const where = dup.values ? ` (mapped to ${dup.values[0]} and to ${dup.values[1]})` : "";
      throw new CheckpointError(`${path}: tensor "${dup.key}" is listed twice in "weight_map"${where}; a tensor must have exactly one place`);
    }
    const inside = dup.path.length === 0 ? "" : ` inside "${dup.path.join(".")}"`;
    throw new CheckpointError(`${path}: key "${dup.key}" appears twice${inside} (JSON keeps only the last; refusing an ambiguous file)`);
  }
  return v as Record<string, unknown>;
}

/** Only plain file names directly inside the checkpoint dir are accepted (no traversal via the index). */
function checkPlainName(name: string, source: string): void {
  if (name === "" || name === "." || name === ".." || isAbsolute(name) || name.includes("/") || name.includes("\\") || name.includes("\0")) {
    throw new CheckpointError(`${source}: weight file name ${JSON.stringify(name)} must be a plain file name inside the checkpoint directory`);
  }
}

export class Checkpoint {
  readonly dir: string;
  readonly config: Record<string, unknown>;
  readonly generationConfig: Record<string, unknown> | null;
  private readonly files: SafetensorsFile[];
  /** tensor name -> file that holds it, in index (or file) order */
  private readonly where: Map<string, SafetensorsFile>;
  private readonly configBytes: Uint8Array;

  private constructor(dir: string, config: Record<string, unknown>, configBytes: Uint8Array, generationConfig: Record<string, unknown> | null, files: SafetensorsFile[], where: Map<string, SafetensorsFile>) {
    this.dir = dir;
    this.config = config;
    this.configBytes = configBytes;
    this.generationConfig = generationConfig;
    this.files = files;
    this.where = where;
  }

  static open(dir: string, options: CheckpointOptions = {}): Checkpoint {
    if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new CheckpointError(`checkpoint directory ${dir} does not exist`);
    const configPath = join(dir, "config.json");
    const config = readJsonObject(configPath, true) as Record<string, unknown>;
    // hashed for fingerprint(); re-read as bytes so the hash covers exactly what is on disk
    const configBytes = new Uint8Array(readFileSync(configPath));
    const generationConfig = readJsonObject(join(dir, "generation_config.json"), false);

    const opened: SafetensorsFile[] = [];
    const openFile = (name: string): SafetensorsFile => {
      const f = SafetensorsFile.open(join(dir, name));
      opened.push(f);
      return f;
    };
    try {
      const { files, where } = Checkpoint.loadWeights(dir, options, openFile);
      return new Checkpoint(dir, config, configBytes, generationConfig, files, where);
    } catch (e) {
      for (const f of opened) f.close();
      throw e;
    }
  }

  private static loadWeights(dir: string, options: CheckpointOptions, openFile: (name: string) => SafetensorsFile): { files: SafetensorsFile[]; where: Map<string, SafetensorsFile> } {
    if (options.weights !== undefined) {
      checkPlainName(options.weights, "weights option");
      const p = join(dir, options.weights);
      if (!existsSync(p)) throw new CheckpointError(`weights file ${p} does not exist`);
      if (options.weights.endsWith(".json")) return Checkpoint.loadIndex(dir, options.weights, openFile);
      return Checkpoint.loadFiles([options.weights], openFile);
    }
    // Same preference as transformers' from_pretrained: single file, then sharded index.
    if (existsSync(join(dir, SINGLE))) return Checkpoint.loadFiles([SINGLE], openFile);
    if (existsSync(join(dir, INDEX))) return Checkpoint.loadIndex(dir, INDEX, openFile);
    const entries = readdirSync(dir).sort();
    const st = entries.filter((n) => n.endsWith(".safetensors") && statSync(join(dir, n)).isFile());
    if (st.length > 0) return Checkpoint.loadFiles(st, openFile);
    const pickles = entries.filter((n) => PICKLE_EXT.some((ext) => n.endsWith(ext)));
    if (pickles.length > 0) {
      throw new CheckpointError(
        `${dir} has only pickle-format weights (${pickles.join(", ")}). realign never unpickles weights, because loading a pickle can run arbitrary code; ` +
          `use a revision of the model that has .safetensors weights, or convert the weights to safetensors in a sandbox first`,
      );
    }
    throw new CheckpointError(`no safetensors weights in ${dir}`);
  }

  private static loadFiles(names: string[], openFile: (name: string) => SafetensorsFile): { files: SafetensorsFile[]; where: Map<string, SafetensorsFile> } {
    const files: SafetensorsFile[] = [];
    const where = new Map<string, SafetensorsFile>();
    for (const n of names) {
      const f = openFile(n);
      files.push(f);
      for (const t of f.names()) {
        const prev = where.get(t);
        if (prev) throw new CheckpointError(`tensor "${t}" appears in both ${prev.path} and ${f.path}`);
        where.set(t, f);
      }
    }
    return { files, where };
  }

  private static loadIndex(dir: string, indexName: string, openFile: (name: string) => SafetensorsFile): { files: SafetensorsFile[]; where: Map<string, SafetensorsFile> } {
    const indexPath = join(dir, indexName);
    const index = readJsonObject(indexPath, true) as Record<string, unknown>;
    const map = index.weight_map;
    if (typeof map !== "object" || map === null || Array.isArray(map)) throw new CheckpointError(`${indexPath}: "weight_map" must be an object mapping tensor names to shard files`);
    const byShard = new Map<string, SafetensorsFile>();
    const files: SafetensorsFile[] = [];
    const where = new Map<string, SafetensorsFile>();
    const misplaced: Array<[string, string]> = [];
    for (const [tensor, shard] of Object.entries(map as Record<string, unknown>)) {
      if (typeof shard !== "string") throw new CheckpointError(`${indexPath}: shard for tensor "${tensor}" must be a file name string`);
      let f = byShard.get(shard);
      if (!f) {
        checkPlainName(shard, indexPath);
        if (!existsSync(join(dir, shard))) throw new CheckpointError(`${indexPath}: shard ${shard} (for tensor "${tensor}") is missing from ${dir}`);
        f = openFile(shard);
        byShard.set(shard, f);
        files.push(f);
      }
      if (!f.has(tensor)) misplaced.push([tensor, shard]);
      where.set(tensor, f);
    }
    if (files.length === 0) throw new CheckpointError(`${indexPath}: "weight_map" is empty`);
    for (const [tensor, shard] of misplaced) {
      // checked once every shard is open, so the message can say where the tensor really is
      const holder = [...byShard].find(([, g]) => g.has(tensor));
      const really = holder ? ` (it is stored in ${holder[0]})` : "";
      throw new CheckpointError(`${indexPath}: tensor "${tensor}" is mapped to ${shard}, but that shard's header does not contain it${really}`);
    }
    // A tensor the index sends to one shard must not also be stored in another: a loader that reads whole
    // shards (and the edit, which rewrites whole shards) would see a second copy that was never checked.
    // A shard's tensors that the index does not list at all stay invisible here (the edit refuses them).
    for (const [shard, f] of byShard) {
      for (const t of f.names()) {
        const owner = where.get(t);
        if (owner && owner !== f) throw new CheckpointError(`${indexPath}: tensor "${t}" is stored in two shards, ${basename(owner.path)} and ${shard} (the index maps it to ${basename(owner.path)}); a tensor must have exactly one place`);
      }
    }
    return { files, where };
  }

  /** Tensor names: index order for sharded checkpoints, else file data order. */
  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  info(name: string): TensorInfo {
    return this.file(name).info(name);
  }

  readBytes(name: string): Uint8Array {
    return this.file(name).readBytes(name);
  }

  readF32(name: string): Float32Array {
    return this.file(name).readF32(name);
  }

  /** Weight file paths: index order (first mention) for sharded checkpoints, else the file(s). */
  shards(): string[] {
    return this.files.map((f) => f.path);
  }

  /** Names of the checkpoint's tensors stored in `shard` (a path from `shards()`), in the shard's data order. */
  shardNames(shard: string): string[] {
    const f = this.files.find((x) => x.path === shard);
    if (!f) throw new CheckpointError(`${shard} is not a weight file of checkpoint ${this.dir}`);
    return f.names().filter((n) => this.where.get(n) === f);
  }

  /**
   * sha256 (hex) of config.json plus each weight file's name, size and raw header. Cheap (no tensor
   * data is read) yet changes whenever the architecture, tensor layout or any file size changes.
   */
  fingerprint(): string {
    const h = createHash("sha256");
    h.update("config.json\0");
    h.update(this.configBytes);
    for (const f of this.files) {
      h.update(`\0${basename(f.path)}\0${f.size}\0`);
      h.update(f.headerBytes);
    }
    return h.digest("hex");
  }

  /** EOS token ids from generation_config.json, falling back to config.json; [] when neither sets one. */
  eosTokenIds(): number[] {
    const fromGen = this.generationConfig ? parseEos(this.generationConfig.eos_token_id, join(this.dir, "generation_config.json")) : null;
    if (fromGen !== null) return fromGen;
    return parseEos(this.config.eos_token_id, join(this.dir, "config.json")) ?? [];
  }

  close(): void {
    for (const f of this.files) f.close();
  }

  private file(name: string): SafetensorsFile {
    const f = this.where.get(name);
    if (!f) throw new CheckpointError(`checkpoint ${this.dir} has no tensor named "${name}"`);
    return f;
  }
}

/**
 * Throws NonFiniteError naming the first of `names` (default: every tensor) that holds NaN or ±Inf, with
 * its file and element. Reads each tensor's raw bytes once (no float32 copy); integer tensors pass.
 * Cost: one pass over the named tensors' bytes, so call it on the few tensors a step reads or writes.
 */
export function assertFiniteTensors(ckpt: Checkpoint, names: readonly string[] = ckpt.names()): void {
  for (const name of names) {
    const info = ckpt.info(name);
    const bytes = ckpt.readBytes(name);
    const bad = firstNonFiniteBytes(info.dtype, bytes);
    if (bad >= 0) {
      const value = elementValue(info.dtype, bytes, bad);
      throw new NonFiniteError(`${info.file}: tensor "${name}" (${info.dtype} [${info.shape}]) holds ${value} at element ${bad}; non-finite weights are refused`, bad, value);
    }
  }
}

function parseEos(v: unknown, source: string): number[] | null {
  if (v === undefined || v === null) return null;
  const list = Array.isArray(v) ? v : [v];
  for (const x of list) {
    if (typeof x !== "number" || !Number.isInteger(x) || x < 0) throw new CheckpointError(`${source}: eos_token_id ${JSON.stringify(v)} must be a non-negative integer or a list of them`);
  }
  return [...new Set(list as number[])];
}
