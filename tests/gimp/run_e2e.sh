#!/usr/bin/env bash
# End-to-end test of gimp-bridge/ in real GIMP 3: the daemon runs here with a tiny model, GIMP
# runs headless in a Debian trixie chroot (tests/gimp/setup_chroot.sh, cached outside the
# clone) with the plug-in installed, and tests/gimp/e2e_batch.py drives every procedure
# non-interactively against the daemon through its Unix socket, bind-mounted into the chroot.
# Needs root. Prints "gimp e2e: passed" or fails.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
sdhost=$repo/target/release/sdhost
root=$("$repo/tests/gimp/setup_chroot.sh")
work=$(mktemp -d)
# Per-run names inside the shared chroot, so two runs (CI and a developer) do not collide.
tag=e2e-$$
home=/root/sdhost-$tag
run_dir=$root/run/sdhost-$tag
daemon_pid=
mounted=()
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for (( i=${#mounted[@]}-1; i>=0; i-- )); do umount "${mounted[$i]}" || true; done
  rm -rf "$work" "$root$home"
  rmdir "$run_dir" 2>/dev/null || true
}
trap cleanup EXIT

# The daemon, on a socket in a folder the chroot sees.
mkdir -p "$work/models/Stable-diffusion"
"$sdhost" dev make-tiny-model "$work/models/Stable-diffusion/tiny-a.safetensors" --seed 1 >/dev/null
"$sdhost" dev make-tiny-model "$work/models/Stable-diffusion/tiny-b.safetensors" --seed 2 >/dev/null
# An SDXL checkpoint (two text encoders, vector input, VAE scale 0.13025) and its 9-channel
# inpainting variant: the plug-in must work with them unchanged.
"$sdhost" dev make-tiny-model "$work/models/Stable-diffusion/tiny-xl.safetensors" --family sdxl --seed 3 >/dev/null
"$sdhost" dev make-tiny-model "$work/models/Stable-diffusion/tiny-xl-inpaint.safetensors" --family sdxl-inpaint --seed 4 >/dev/null
# Tiny BLIP, CLIP and DeepDanbooru where A1111 keeps them, for the Interrogate procedure.
"$repo/.venv/bin/python" "$repo/tests/reference/interrogate_models.py" --write-models "$work/models" >/dev/null
mkdir -p "$work/run" "$run_dir"
# Also on TCP (remote use through the plug-in's preferences), on a free loopback port.
port=$("$repo/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
XDG_CONFIG_HOME=$work/config XDG_DATA_HOME=$work/data SDHOST_CACHE_DIR=$work/cache \
  "$sdhost" serve --socket "$work/run/sdhost.sock" --models-dir "$work/models" --threads 1 \
  --listen "127.0.0.1:$port" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 600); do [ -S "$work/run/sdhost.sock" ] && [ -s "$work/config/sdhost/token" ] && break; sleep 0.1; done
[ -S "$work/run/sdhost.sock" ] || { cat "$work/daemon.log"; echo "gimp e2e: the daemon did not start" >&2; exit 1; }

# Mounts stack, so a concurrent run's mounts and ours come and go independently.
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
mount --bind /dev "$root/dev" && mounted+=("$root/dev")
mount --bind "$work/run" "$run_dir" && mounted+=("$run_dir")

# A fresh GIMP profile with the plug-in installed the way users install it.
rm -rf "$root$home"
"$repo/gimp-bridge/install.sh" "$root$home/.config/GIMP/3.0/plug-ins" >/dev/null
install -m 644 "$repo/tests/gimp/e2e_batch.py" "$repo/tests/gimp/e2e_workflow.py" "$root$home/"
"$repo/.venv/bin/python" - "$root$home/mask.png" <<'PY'
import sys
from PIL import Image, ImageDraw
mask = Image.new("L", (96, 64), 0)
ImageDraw.Draw(mask).ellipse([50, 30, 80, 58], fill=255)
mask.save(sys.argv[1])
PY

status=0
timeout 900 chroot "$root" /usr/bin/env -i HOME=$home PATH=/usr/bin:/bin LANG=C.UTF-8 \
  SDHOST_SOCKET=/run/sdhost-$tag/sdhost.sock SDHOST_MASK_FILE=$home/mask.png SDHOST_E2E_DIR=$home \
  SDHOST_TCP=127.0.0.1:$port SDHOST_TOKEN="$(cat "$work/config/sdhost/token")" SDHOST_DAEMON_PID=$daemon_pid \
  gimp-console-3.0 -i --batch-interpreter=python-fu-eval \
  -b "exec(open('$home/e2e_batch.py').read())" --quit >"$work/gimp.log" 2>&1 || status=$?
grep -E '^E2E' "$work/gimp.log" || true
if [ "$status" != 0 ] || ! grep -q '^E2E PASSED' "$work/gimp.log"; then
  echo "--- gimp log" >&2; cat "$work/gimp.log" >&2
  echo "--- daemon log" >&2; cat "$work/daemon.log" >&2
  echo "gimp e2e: FAILED" >&2
  exit 1
fi
echo "gimp e2e: passed"
