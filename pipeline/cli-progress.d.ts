// Minimal typings for the parts of cli-progress we use (the package ships none).
declare module "cli-progress" {
  export interface BarParams {
    progress: number;
    value: number;
    total: number;
    startTime: number;
  }
  export interface BarOptions {
    format?: string | ((options: BarOptions & { barCompleteString?: string; barIncompleteString?: string }, params: BarParams, payload: any) => string);
    stream?: NodeJS.WritableStream;
    hideCursor?: boolean;
    clearOnComplete?: boolean;
    stopOnComplete?: boolean;
    barsize?: number;
    fps?: number;
    autopadding?: boolean;
    gracefulExit?: boolean;
    noTTYOutput?: boolean;
    formatValue?: (v: number, options: unknown, type: string) => string;
  }
  export class SingleBar {
    constructor(options: BarOptions, preset?: unknown);
    start(total: number, startValue: number, payload?: Record<string, unknown>): void;
    update(value: number, payload?: Record<string, unknown>): void;
    increment(step?: number, payload?: Record<string, unknown>): void;
    setTotal(total: number): void;
    stop(): void;
  }
  export class MultiBar {
    constructor(options: BarOptions, preset?: unknown);
    create(total: number, startValue: number, payload?: Record<string, unknown>, barOptions?: BarOptions): SingleBar;
    remove(bar: SingleBar): boolean;
    log(text: string): void;
    stop(): void;
  }
  export const Presets: { shades_classic: unknown; shades_grey: unknown; rect: unknown; legacy: unknown };
  const cliProgress: { SingleBar: typeof SingleBar; MultiBar: typeof MultiBar; Presets: typeof Presets };
  export default cliProgress;
}
