#!/usr/bin/env bash
# Screenshots of the GIMP plug-in's dialogs for docs/images/ (README, docs/gimp.md): the real
# GIMP 3 GUI runs on Xvfb in the Debian trixie chroot (tests/gimp/setup_chroot.sh) against the
# daemon running here with tiny models and a LoRA with a preview image and trigger words;
# tests/gimp/screenshots_batch.py opens each dialog and grab_dialog.sh saves it.
# Needs root; about a minute. Usage: tests/gimp/screenshots.sh [OUT_DIR]   (default docs/images)
# $SDHOST names another sdhost binary; $SDHOST_SHOTS_KEEP a folder that receives the raw grabs
# (each dialog and the whole screen) and GIMP's log, to look at a layout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$repo/docs/images}" && cd "${1:-$repo/docs/images}" && pwd)
sdhost=${SDHOST:-$repo/target/release/sdhost}
python=$repo/.venv/bin/python
root=$("$repo/tests/gimp/setup_chroot.sh")
# The X server, the window tools and a screen grabber, in the chroot once.
if ! chroot "$root" /bin/sh -c "command -v Xvfb && command -v xdotool && command -v import" >/dev/null; then
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends xvfb xauth xdotool x11-utils imagemagick && apt-get clean' >&2
fi
work=$(mktemp -d)
tag=shots-$$
home=/root/sdhost-$tag
daemon_pid=
mounted=()
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  for (( i=${#mounted[@]}-1; i>=0; i-- )); do umount "${mounted[$i]}" || true; done
  rm -rf "$work" "$root$home"
  rmdir "$root$work" 2>/dev/null || true
}
trap cleanup EXIT

# Models: two tiny checkpoints, and a LoRA with metadata (base model, trigger words), an
# activation text, a description and a preview image, as A1111's folders hold them.
mkdir -p "$work/models/Stable-diffusion"
"$sdhost" dev make-tiny-model "$work/models/Stable-diffusion/sd15-tiny.safetensors" --seed 1 >/dev/null
"$sdhost" dev make-tiny-model "$work/models/Stable-diffusion/sdxl-tiny.safetensors" --family sdxl --seed 3 >/dev/null
"$python" - "$work/models/Lora" <<'PY'
import json, struct, sys
from pathlib import Path
from PIL import Image, ImageDraw
lora = Path(sys.argv[1])
lora.mkdir(parents=True)
meta = {"ss_output_name": "add_detail", "ss_base_model_version": "sd_v1",
        "ss_tag_frequency": json.dumps({"5_detail": {"detailed": 9, "intricate": 6, "sharp focus": 4}})}
header = {"__metadata__": meta, "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight":
          {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}
head = json.dumps(header).encode()
head += b" " * (-len(head) % 8)
(lora / "add_detail.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + struct.pack("<8f", *range(8)))
(lora / "add_detail.json").write_text(json.dumps(
    {"preferred weight": 0.6, "activation text": "intricate details",
     "description": "More fine detail; 0.4-0.8 for photos."}))
card = Image.new("RGB", (96, 96), (30, 60, 110))
draw = ImageDraw.Draw(card)
for r in range(44, 4, -8):
    draw.ellipse([48 - r, 48 - r, 48 + r, 48 + r], outline=(240, 200 - 3 * r, 80), width=3)
card.save(lora / "add_detail.preview.png")
PY
mkdir -p "$work/run"
# Also on TCP, for the preferences dialog, on a free loopback port.
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
XDG_CONFIG_HOME=$work/config XDG_DATA_HOME=$work/data SDHOST_CACHE_DIR=$work/cache \
  "$sdhost" serve --socket "$work/run/sdhost.sock" --models-dir "$work/models" --threads 1 \
  --listen "127.0.0.1:$port" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 600); do [ -S "$work/run/sdhost.sock" ] && [ -s "$work/config/sdhost/token" ] && break; sleep 0.1; done
[ -S "$work/run/sdhost.sock" ] || { cat "$work/daemon.log"; echo "screenshots: the daemon did not start" >&2; exit 1; }

# The work folder at the same path inside the chroot: the socket, and the preview image whose
# path the daemon hands to the dialog.
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount -t sysfs sysfs "$root/sys" && mounted+=("$root/sys")
mount --bind /dev "$root/dev" && mounted+=("$root/dev")
mkdir -p "$root$work"
mount --bind "$work" "$root$work" && mounted+=("$root$work")

# A fresh GIMP profile with the plug-in installed the way users install it, no welcome dialog.
rm -rf "$root$home"
"$repo/gimp-bridge/install.sh" "$root$home/.config/GIMP/3.0/plug-ins" >/dev/null
printf '(show-welcome-dialog no)\n(show-tips no)\n' >"$root$home/.config/GIMP/3.0/gimprc"
install -m 644 "$repo/tests/gimp/screenshots_batch.py" "$root$home/"
install -m 755 "$repo/tests/gimp/grab_dialog.sh" "$root$home/"
mkdir -p "$work/shots"

started=$SECONDS
status=0
timeout 600 chroot "$root" /usr/bin/env -i HOME=$home PATH=/usr/bin:/bin LANG=C.UTF-8 \
  SDHOST_SOCKET=$work/run/sdhost.sock SDHOST_SHOTS_DIR=$work/shots SDHOST_GRAB=$home/grab_dialog.sh \
  SDHOST_TCP=127.0.0.1:$port SDHOST_TOKEN="$(cat "$work/config/sdhost/token")" \
  sh -c 'Xvfb :42 -screen 0 1400x1000x24 -nolisten tcp >/dev/null 2>&1 & x=$!
    for _ in $(seq 50); do [ -e /tmp/.X11-unix/X42 ] && break; sleep 0.1; done
    DISPLAY=:42 dbus-run-session -- gimp-3.0 --no-splash --batch-interpreter=python-fu-eval \
      -b "exec(open(\"$HOME/screenshots_batch.py\").read())" --quit; s=$?
    kill $x; wait $x; exit $s' >"$work/gimp.log" 2>&1 || status=$?
grep -E '^SHOT|grab_dialog|Traceback|Error' "$work/gimp.log" || true
echo "screenshots: GIMP ran $((SECONDS - started)) s"
missing=0
for name in inpaint txt2img outpaint preferences; do
  [ -s "$work/shots/gimp-$name-dialog.png" ] || { echo "screenshots: no $name dialog" >&2; missing=1; }
done
if [ "$status" != 0 ] || [ "$missing" != 0 ]; then
  echo "--- gimp log" >&2; cat "$work/gimp.log" >&2
  [ -n "${SDHOST_SHOTS_KEEP:-}" ] && cp -r "$work/shots" "$SDHOST_SHOTS_KEEP"
  echo "screenshots: FAILED" >&2
  exit 1
fi
[ -n "${SDHOST_SHOTS_KEEP:-}" ] && cp -r "$work/shots" "$work/gimp.log" "$SDHOST_SHOTS_KEEP"
# Small PNGs for the repository: a palette of 256 colours is lossless enough for a dialog.
"$python" - "$work/shots" "$out" <<'PY'
import sys
from pathlib import Path
from PIL import Image
for shot in sorted(Path(sys.argv[1]).glob("gimp-*-dialog.png")):
    picture = Image.open(shot).convert("RGB")
    target = Path(sys.argv[2]) / shot.name
    picture.quantize(256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    print(f"{target}: {picture.width}x{picture.height}, {target.stat().st_size // 1024} KB")
PY
echo "screenshots: done"
