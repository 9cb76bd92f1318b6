#!/bin/sh
# GPU smoke run, on a GPU machine after the device bundle is unpacked (see README, "Running on a
# GPU machine"): the WebGPU benchmark and the GPU test file. Usage: sh scripts/gpu-smoke.sh
# Exit status: 0 when both pass, 1 when either fails, 2 when bun is missing.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REALIGN_ROOT="$ROOT"
. "$ROOT/scripts/gpu-env.sh"
if ! command -v bun >/dev/null 2>&1; then
  echo "gpu-smoke: bun not found: unpack the device bundle first (sh .device/a/unpack.sh)" >&2
  exit 2
fi
echo "bun $(bun --version) in $ROOT"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L || true; else echo "gpu-smoke: nvidia-smi not found"; fi

status=0
echo "== bench --device webgpu"
bun run bench --device webgpu --json || status=1
echo "== tests/e2e/gpu.test.ts"
REALIGN_GPU_TESTS=1 bun test --timeout 120000 tests/e2e/gpu.test.ts || status=1
echo "gpu-smoke: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
