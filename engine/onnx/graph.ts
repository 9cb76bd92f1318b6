// A small, typed helper for writing ONNX graphs node by node. Large initializers are streamed
// to an external-data file so that the .onnx protobuf stays small (and under its 2 GB limit)
// and ONNX Runtime can map the weights from disk instead of copying them.
import { closeSync, fsyncSync, openSync, writeSync } from "node:fs";
import {
  AttributeType,
  OnnxDataType,
  encodeModel,
  type AttributeProto,
  type DimSpec,
  type ModelProto,
  type NodeProto,
  type OnnxDataTypeId,
  type TensorProto,
  type ValueInfoProto,
} from "./schema.ts";

export type AttrValue = number | string | number[] | { floats: number[] } | { float: number } | TensorProto;
export type Attrs = Record<string, AttrValue | undefined>;

/** Page alignment lets ONNX Runtime memory-map external initializers directly. */
const EXTERNAL_ALIGN = 4096;
/** Initializers at least this large go to the external file; small ones stay inline. */
const EXTERNAL_MIN_BYTES = 1024;

/** Streams initializer bytes into one file and records where each one lives. */
export class ExternalDataWriter {
  private fd: number;
  private offset = 0;
  constructor(
    readonly path: string,
    readonly location: string,
  ) {
    this.fd = openSync(path, "w");
  }
  append(bytes: Uint8Array): { offset: number; length: number } {
    const pad = (EXTERNAL_ALIGN - (this.offset % EXTERNAL_ALIGN)) % EXTERNAL_ALIGN;
    if (pad) {
      writeSync(this.fd, new Uint8Array(pad));
      this.offset += pad;
    }
    const at = this.offset;
    let written = 0;
    while (written < bytes.byteLength) written += writeSync(this.fd, bytes, written, bytes.byteLength - written);
    this.offset += bytes.byteLength;
    return { offset: at, length: bytes.byteLength };
  }
  close(): void {
    fsyncSync(this.fd);
    closeSync(this.fd);
  }
}

export class OnnxGraph {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  readonly inputs: ValueInfoProto[] = [];
  readonly outputs: ValueInfoProto[] = [];
  private counter = 0;
  private constCache = new Map<string, string>();

  constructor(private readonly external: ExternalDataWriter | null) {}

  /** A fresh, readable value name. */
  name(hint: string): string {
    return `${hint}__${this.counter++}`;
  }

  input(name: string, dtype: OnnxDataTypeId, dims: DimSpec[]): string {
    this.inputs.push(valueInfo(name, dtype, dims));
    return name;
  }

  output(name: string, dtype: OnnxDataTypeId, dims: DimSpec[]): void {
    this.outputs.push(valueInfo(name, dtype, dims));
  }

  /** Adds a node; returns its output names (one fresh name per requested output unless given). */
  node(opType: string, inputs: string[], attrs: Attrs = {}, opts: { outputs?: number | string[]; domain?: string; name?: string } = {}): string[] {
    const outs = Array.isArray(opts.outputs)
      ? opts.outputs
      : Array.from({ length: opts.outputs ?? 1 }, () => this.name(opts.name ?? opType));
    const attribute: AttributeProto[] = [];
    for (const [key, value] of Object.entries(attrs)) if (value !== undefined) attribute.push(attr(key, value));
    this.nodes.push({
      name: this.name(`n_${opts.name ?? opType}`),
      opType,
      domain: opts.domain ?? "",
      input: inputs,
      output: outs,
      attribute,
    });
    return outs;
  }

  /** Single-output convenience. */
  op(opType: string, inputs: string[], attrs: Attrs = {}, opts: { domain?: string; name?: string; output?: string } = {}): string {
    return this.node(opType, inputs, attrs, { domain: opts.domain, name: opts.name, outputs: opts.output ? [opts.output] : 1 })[0];
  }

  /** A weight or constant tensor. Big ones are written to the external-data file. */
  initializer(name: string, dtype: OnnxDataTypeId, dims: number[], bytes: Uint8Array): string {
    const tensor: TensorProto = { name, dims, dataType: dtype };
    if (this.external && bytes.byteLength >= EXTERNAL_MIN_BYTES) {
      const { offset, length } = this.external.append(bytes);
      tensor.dataLocation = 1;
      tensor.externalData = [
        { key: "location", value: this.external.location },
        { key: "offset", value: String(offset) },
        { key: "length", value: String(length) },
      ];
    } else {
      tensor.rawData = bytes;
    }
    this.initializers.push(tensor);
    return name;
  }

  constF32(values: number[] | Float32Array, dims: number[] = [values.length], hint = "c"): string {
    const data = values instanceof Float32Array ? values : new Float32Array(values);
    return this.cachedConst(`f32:${dims}:${data.join(",")}`, () =>
      this.initializer(this.name(hint), OnnxDataType.FLOAT, dims, new Uint8Array(data.buffer, data.byteOffset, data.byteLength)),
    );
  }

  constI64(values: number[], dims: number[] = [values.length], hint = "c"): string {
    const data = new BigInt64Array(values.map((v) => BigInt(v)));
    return this.cachedConst(`i64:${dims}:${values.join(",")}`, () =>
      this.initializer(this.name(hint), OnnxDataType.INT64, dims, new Uint8Array(data.buffer)),
    );
  }

  scalarF32(value: number): string {
    return this.constF32([value], []);
  }

  scalarI64(value: number): string {
    return this.constI64([value], []);
  }

  private cachedConst(key: string, make: () => string): string {
    // Small constants recur (axes, shapes); share one initializer per value.
    if (key.length > 2000) return make();
    let found = this.constCache.get(key);
    if (!found) {
      found = make();
      this.constCache.set(key, found);
    }
    return found;
  }

  toModel(opts: { opsets: Record<string, number>; metadata?: Record<string, string>; name?: string }): ModelProto {
    return {
      irVersion: 10,
      producerName: "realign",
      producerVersion: "0.1.0",
      opsetImport: Object.entries(opts.opsets).map(([domain, version]) => ({ domain, version })),
      metadataProps: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key, value })),
      graph: {
        name: opts.name ?? "decoder",
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    };
  }

  encode(opts: { opsets: Record<string, number>; metadata?: Record<string, string>; name?: string }): Uint8Array {
    return encodeModel(this.toModel(opts));
  }
}

function valueInfo(name: string, dtype: OnnxDataTypeId, dims: DimSpec[]): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: dtype,
        shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function attr(name: string, value: AttrValue): AttributeProto {
  if (typeof value === "number") {
    if (!Number.isInteger(value)) throw new Error(`attribute ${name}: use { float } for non-integer ${value}`);
    return { name, type: AttributeType.INT, i: value };
  }
  if (typeof value === "string") return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: AttributeType.INTS, ints: value };
  if ("float" in value) return { name, type: AttributeType.FLOAT, f: value.float };
  if ("floats" in value) return { name, type: AttributeType.FLOATS, floats: value.floats };
  return { name, type: AttributeType.TENSOR, t: value };
}
