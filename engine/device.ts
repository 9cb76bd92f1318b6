// The devices a model can run on (kept apart from session.ts so that settings code can name them
// without loading ONNX Runtime).
export type Device = "auto" | "cpu" | "cuda" | "webgpu";
export const DEVICES: readonly Device[] = ["auto", "cpu", "cuda", "webgpu"];
