#!/bin/sh
# GPU smoke run, on a GPU machine after the device bundle is unpacked (see README, "Running on a
# GPU machine"): the WebGPU benchmark and the GPU test file. Usage: sh scripts/gpu-smoke.sh
# Exit status: 0 when both pass, 1 when either fails, 2 when bun is missing.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -f .device/env.sh ]; then . ./.device/env.sh; fi
if ! command -v bun >/dev/null 2>&1; then
  echo "gpu-smoke: bun not found: unpack the device bundle first (sh .device/a/unpack.sh)" >&2
  exit 2
fi
echo "bun $(bun --version) in $ROOT"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L || true; else echo "gpu-smoke: nvidia-smi not found"; fi

# The WebGPU EP runs on Vulkan on Linux: it needs the loader (libvulkan.so.1) and the driver's ICD.
# Without a loader, Debian packages of it carried in .gl/ (git-ignored) are unpacked first.
if command -v ldconfig >/dev/null 2>&1 && ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  if ls .gl/*.deb >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
    echo "gpu-smoke: no libvulkan.so.1; unpacking .gl/*.deb"
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  else
    echo "gpu-smoke: WARNING: no libvulkan.so.1 on this machine (and no .gl/*.deb to unpack); the WebGPU EP will find no adapter" >&2
  fi
fi
ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$ICD" ]; then export VK_DRIVER_FILES="$ICD"; fi

status=0
echo "== bench --device webgpu"
bun run bench --device webgpu --json || status=1
echo "== tests/gpu.test.ts"
REALIGN_GPU_TESTS=1 bun test tests/gpu.test.ts || status=1
echo "gpu-smoke: $([ $status -eq 0 ] && echo passed || echo FAILED)"
exit $status
