#!/usr/bin/env bash
# Installs the sdhost plug-in into GIMP 3's plug-in folder (Linux; see README for Windows and
# macOS): <plug-ins>/sdhost_gimp/ with the plug-in, its GIMP modules and the editor-independent
# sdhost_*.py modules.
# Usage: gimp-bridge/install.sh [PLUG_INS_DIR]   (default ~/.config/GIMP/3.0/plug-ins)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
plug_ins=${1:-${XDG_CONFIG_HOME:-$HOME/.config}/GIMP/3.0/plug-ins}
dest=$plug_ins/sdhost_gimp
install -d "$dest"
install -m 755 "$here/sdhost_gimp/sdhost_gimp.py" "$dest/sdhost_gimp.py"
install -m 644 "$here"/sdhost_gimp/gimp_*.py "$here"/sdhost_*.py "$dest/"
echo "installed the sdhost plug-in in $dest (restart GIMP; menu Filters > sdhost)"
