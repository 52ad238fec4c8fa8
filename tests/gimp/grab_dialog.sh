#!/bin/sh
# Inside the chroot, on the Xvfb display: waits for the window titled $1 (a plug-in dialog that
# a batch script opened in interactive mode), saves it to $2 (PNG) and the whole screen to
# $2.screen.png, then closes it with Escape (the procedure returns "cancelled"), or ends the
# plug-in's process when the dialog ignores the key. Used by tests/gimp/screenshots.sh.
title=$1 out=$2
id=
# The pointer in the screen's corner, off the dialog: a tooltip would cover part of it.
xdotool mousemove 1399 999 2>/dev/null
for _ in $(seq 120); do
  id=$(xdotool search --onlyvisible --name "^$title\$" 2>/dev/null | head -n 1)
  [ -n "$id" ] && break
  sleep 0.5
done
if [ -z "$id" ]; then
  echo "grab_dialog: no window \"$title\" appeared" >&2
  import -window root "$out.screen.png"
  exit 1
fi
# Let GTK lay out and paint the dialog (and load the LoRA's preview) before the grab.
sleep 3
xwininfo -id "$id" | grep -E 'Absolute|Width|Height' >&2
import -window "$id" "$out"
import -window root "$out.screen.png"
xdotool windowfocus --sync "$id" key --clearmodifiers Escape 2>/dev/null
for _ in $(seq 20); do
  xdotool search --onlyvisible --name "^$title\$" >/dev/null 2>&1 || exit 0
  sleep 0.25
done
echo "grab_dialog: \"$title\" ignored Escape; ending its plug-in" >&2
pid=$(xdotool getwindowpid "$id" 2>/dev/null) && kill "$pid"
