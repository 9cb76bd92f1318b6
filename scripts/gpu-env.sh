# Source this on a GPU machine after the device bundle is unpacked (see README, "Running on a GPU
# machine"): puts the bundled bun on PATH and makes the Vulkan loader and the NVIDIA ICD visible to
# the WebGPU EP. Usage: . scripts/gpu-env.sh
REALIGN_ROOT=${REALIGN_ROOT:-$(pwd)}
if [ -f "$REALIGN_ROOT/.device/env.sh" ]; then . "$REALIGN_ROOT/.device/env.sh"; fi
# The WebGPU EP runs on Vulkan on Linux: it needs the loader (libvulkan.so.1) and the driver's ICD.
# Without a loader, Debian packages of it carried in .gl/ (git-ignored) are unpacked first.
if command -v ldconfig >/dev/null 2>&1 && ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  if ls "$REALIGN_ROOT"/.gl/*.deb >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
    echo "gpu-env: no libvulkan.so.1; unpacking .gl/*.deb"
    for f in "$REALIGN_ROOT"/.gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  else
    echo "gpu-env: WARNING: no libvulkan.so.1 on this machine (and no .gl/*.deb to unpack); the WebGPU EP will find no adapter" >&2
  fi
fi
REALIGN_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$REALIGN_ICD" ]; then export VK_DRIVER_FILES="$REALIGN_ICD"; fi
