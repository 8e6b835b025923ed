#!/usr/bin/env bash
# The real window under Xvfb at 1400x900, 1180x760, the minimum size (760x480) and below it
# (640x420, which a window manager would not allow), for looking at the layout:
#   .ci/window-sizes.sh BINARY OUT_DIR
set -euo pipefail
bin=$1; out=$2
mkdir -p "$out"
. "$(dirname "$0")/window.sh"
open_window "$bin" 1600 1000
sleep 4
for s in 1400x900 1180x760 760x480 640x420; do
  w=${s%x*}; h=${s#*x}
  xdotool windowsize "$win" $w $h; sleep 2
  import -window "$win" "$out/window-$s.png"
done
