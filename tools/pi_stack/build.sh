#!/usr/bin/env bash
# Build (or refresh from cache) an emulated Raspberry Pi OS Bookworm software stack and install
# edgecls into it:  Debian 12 arm64 userland, Python 3.11, aarch64 wheels only, qemu user mode.
#
#   tools/pi_stack/build.sh            -> prints the launcher path on its last line
#
# Then:  $CACHE/pi-python ENV ARGS...   runs the emulated python 3.11 with one of the environments
#   litert      edgecls[device] as pip resolves it: ai-edge-litert, onnxruntime, NumPy 2
#   tflite      edgecls + tflite-runtime 2.14 + NumPy<2 + onnxruntime (older Pi OS images)
#   tflite-np2  edgecls + tflite-runtime 2.14 + NumPy 2 (the trap `edgecls doctor` must warn about)
#
# Why user mode and not a chroot: debootstrap's second stage under emulation takes ~4-6 minutes;
# unpacking the downloaded .debs with `dpkg -x` takes seconds, and nothing edgecls runs on the device
# starts a subprocess (in user mode a subprocess would run the HOST's binary).
#
# Knobs (environment):
#   EDGECLS_PI_CACHE  cache dir (default ~/.cache/edgecls-pi-stack): rootfs + downloaded wheels
#   PYTHON            host python with pip (default: the python running edgecls, else python3)
#   MIRROR            Debian mirror for debootstrap (default: debootstrap's own)
#   EDGECLS_WHEEL     a prebuilt edgecls wheel (default: built now from this checkout)
# Needs root (debootstrap), qemu-user-static and debootstrap:
#   apt-get install -y --no-install-recommends qemu-user-static debootstrap
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${EDGECLS_PI_CACHE:-$HOME/.cache/edgecls-pi-stack}
MIRROR=${MIRROR:-}   # empty: debootstrap's default Debian mirror
PYTHON=${PYTHON:-$(command -v python3)}
ROOT=$CACHE/rootfs
WHEELS=$CACHE/wheels
# Bump when the rootfs recipe below changes, so cached copies are rebuilt.
ROOTFS_RECIPE="bookworm-arm64-minbase-python3-v1"
# Bookworm's glibc is 2.36, so wheels up to manylinux_2_34 run there; tflite-runtime 2.14.0 exists
# for aarch64 only as manylinux_2_34 (no manylinux2014 build).
PLAT=(--only-binary=:all: --python-version 3.11 --implementation cp
      --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64
      --platform manylinux_2_28_aarch64 --platform manylinux_2_34_aarch64)

T0=$SECONDS
step() { echo "=== [$((SECONDS - T0))s] $*" >&2; }
die() { echo "pi-stack: error: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap); set EDGECLS_SKIP_PI_STACK=1 to skip the Pi-stack test"
for tool in qemu-aarch64-static debootstrap dpkg; do
  command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y --no-install-recommends qemu-user-static debootstrap"
done
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON=...)"
mkdir -p "$CACHE" "$WHEELS"
exec 9>"$CACHE/.lock"; flock 9   # one build at a time per cache

# ---- rootfs: debootstrap download + dpkg -x, cached -------------------------------------------
if [ "$(cat "$ROOT/.recipe" 2>/dev/null)" != "$ROOTFS_RECIPE" ]; then
  step "rootfs: debootstrap --foreign arm64 bookworm minbase + python3 (download), then dpkg -x"
  rm -rf "$ROOT" "$ROOT.tmp"
  debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 bookworm "$ROOT.tmp" ${MIRROR:+"$MIRROR"} \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed"; }
  # No maintainer scripts run (they would need the emulated second stage): python3.11 needs none to start.
  for deb in "$ROOT.tmp"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ROOT.tmp"; done
  rm -f "$ROOT.tmp"/var/cache/apt/archives/*.deb
  # Debian compiles the stdlib's bytecode in a maintainer script; without it every emulated start
  # compiles imports again. Bytecode is the same on every CPU, so the host's Python 3.11 writes it.
  if "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    "$PYTHON" -m compileall -q -j0 -s "$ROOT.tmp" -p / "$ROOT.tmp/usr/lib/python3.11" >/dev/null 2>&1 || true
  fi
  : > "$ROOT.tmp/etc/ld.so.cache"   # the aarch64 ld.so must not read the host's x86 cache
  echo "$ROOTFS_RECIPE" > "$ROOT.tmp/.recipe"
  mv "$ROOT.tmp" "$ROOT"
else
  step "rootfs: cached ($ROOT)"
fi

# onnxruntime's cpuinfo reads /proc/cpuinfo and /sys cpu lists: the host's x86 ones make it segfault
# on import, none at all make it fail. qemu -L serves these plain files from the rootfs instead.
# A Raspberry Pi 4 (Cortex-A72, part 0xd08); the CPU that qemu emulates is set by QEMU_CPU.
N=$(nproc)   # the host's count: more threads than that trips onnxruntime's affinity setup
mkdir -p "$ROOT/proc" "$ROOT/sys/devices/system/cpu"
for ((i = 0; i < N; i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
done > "$ROOT/proc/cpuinfo"
printf 'Revision\t: c03111\nSerial\t\t: 100000000000000\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n' >> "$ROOT/proc/cpuinfo"
echo "0-$((N - 1))" > "$ROOT/sys/devices/system/cpu/possible"
mkdir -p "$ROOT/proc/device-tree"   # what `edgecls doctor` reads to name the board
printf 'Raspberry Pi 4 Model B Rev 1.1\0' > "$ROOT/proc/device-tree/model"
echo "0-$((N - 1))" > "$ROOT/sys/devices/system/cpu/present"

# ---- our wheel, built on the host -------------------------------------------------------------
if [ -n "${EDGECLS_WHEEL:-}" ]; then
  WHEEL=$EDGECLS_WHEEL
else
  step "edgecls wheel: pip wheel --no-deps $REPO"
  rm -rf "$CACHE/dist"
  "$PYTHON" -m pip wheel -q --no-deps "$REPO" -w "$CACHE/dist" >"$CACHE/wheel.log" 2>&1 \
    || { tail -20 "$CACHE/wheel.log" >&2; die "building the edgecls wheel failed"; }
  WHEEL=$(ls "$CACHE"/dist/edgecls-*.whl)
fi
# The dependency lines of the wheel: a change there (not in the code) invalidates the cached envs.
DEPS=$("$PYTHON" - "$WHEEL" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
print("\n".join(l for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")))
EOF
)

# ---- environments -------------------------------------------------------------------------------
# env NAME REQUIREMENTS... ; "WHEEL" stands for our wheel (with extras appended, e.g. WHEEL[device]).
env_install() {
  local name=$1; shift
  local dir=$ROOT/opt/envs/$name reqs=() r
  for r in "$@"; do reqs+=("${r/WHEEL/$WHEEL}"); done
  local key
  key=$(printf '%s\n' "$ROOTFS_RECIPE" "$*" "$DEPS" "${PLAT[*]}" | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/.key" 2>/dev/null)" = "$key" ]; then
    step "env $name: cached dependencies; reinstalling edgecls only"
    "$PYTHON" -m pip install -q --no-deps --upgrade --target "$dir" "${PLAT[@]}" "$WHEEL" \
      >"$CACHE/pip-$name.log" 2>&1 || { tail -20 "$CACHE/pip-$name.log" >&2; die "pip install into env $name failed"; }
    return
  fi
  step "env $name: download aarch64 cp311 wheels + install: $*"
  # The download resolves against the index; the install then uses only what was downloaded. An edgecls wheel
  # left in $WHEELS by an earlier build has the same file name: pip would take ITS dependencies ("already
  # downloaded") and miss those the new one added, so it goes first.
  rm -f "$WHEELS"/edgecls-*.whl
  "$PYTHON" -m pip download -q "${PLAT[@]}" -d "$WHEELS" "${reqs[@]}" >"$CACHE/pip-$name.log" 2>&1 \
    || { grep -v '^WARNING: Location' "$CACHE/pip-$name.log" | tail -20 >&2; die "no aarch64 cp311 wheels for env $name (see above)"; }
  rm -rf "$dir" "$dir.tmp"
  "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" --target "$dir.tmp" "${PLAT[@]}" "${reqs[@]}" \
    >>"$CACHE/pip-$name.log" 2>&1 || { tail -20 "$CACHE/pip-$name.log" >&2; die "pip install into env $name failed"; }
  echo "$key" > "$dir.tmp/.key"
  mv "$dir.tmp" "$dir"
}
mkdir -p "$ROOT/opt/envs"
env_install litert "WHEEL[device]"
env_install tflite "WHEEL" "tflite-runtime==2.14.0" "numpy<2" "onnxruntime"
env_install tflite-np2 "WHEEL" "tflite-runtime==2.14.0" "numpy>=2"

# ---- launcher -----------------------------------------------------------------------------------
# A clean environment, so nothing of the host's Python setup leaks into the emulated one. Paths
# outside the rootfs (bundles, images, output files) fall through to the host's files under qemu -L.
# PYTHONSAFEPATH: `-m edgecls` run inside a source checkout must import the installed wheel, not ./edgecls.
cat > "$CACHE/pi-python.tmp" <<EOF
#!/bin/sh
# pi-python ENV ARGS...  (ENV: $(ls "$ROOT/opt/envs" | tr '\n' ' '))  QEMU_CPU: cortex-a72 (Pi 4) unless set
ENV=\${1:?usage: pi-python ENV ARGS...}; shift
[ -d "$ROOT/opt/envs/\$ENV" ] || { echo "pi-python: no env \$ENV" >&2; exit 2; }
exec env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONSAFEPATH=1 \\
  QEMU_CPU="\${QEMU_CPU:-cortex-a72}" QEMU_LD_PREFIX="$ROOT" PYTHONPATH="/opt/envs/\$ENV" \\
  \${COLUMNS:+COLUMNS=\$COLUMNS} qemu-aarch64-static "$ROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$CACHE/pi-python.tmp"
mv "$CACHE/pi-python.tmp" "$CACHE/pi-python"
step "ready"
echo "$CACHE/pi-python"
