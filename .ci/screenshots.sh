#!/usr/bin/env bash
# Screenshots of the in-context-learning views from the real window under Xvfb, with the tiny
# test model (its captions are noise; the views are what is shown):
#   .ci/screenshots.sh BINARY OUT_DIR
# Clicks go to where the controls are at the default window size (1180 wide); the window is
# made 1000 tall so that each view fits.
set -euo pipefail
bin=$1; out=$2
mkdir -p "$out"
. "$(dirname "$0")/window.sh"
open_window "$bin" 1180 1000
sleep 4
click() { xdotool mousemove --window "$win" "$1" "$2" click 1; sleep "${3:-0.5}"; }
shot() { xdotool mousemove --window "$win" "$1" "$2"; sleep 1.2; import -window root "$out/$3.png"; }
click 433 417 3                     # Generate
shot 470 519 tokens                 # a token's alternatives
click 450 600 0.5                   # open "Shot sweep"
click 751 623 4                     # Run sweep
shot 1100 900 sweep
click 450 600 0.5                   # close it
click 460 631 0.5                   # open "What did each example do?"
click 470 677 4                     # Explain the caption
shot 1100 900 ablation
click 460 631 0.5                   # close it
click 450 662 0.5                   # open "Where did it look?"
click 458 718 4                     # Show attention
shot 500 519 attention              # the maps of the token under the pointer
click 450 662 0.5                   # close it
click 519 459 0.5                   # Duplicate as variant
click 621 459 5                     # Generate both
shot 1100 900 variant
echo "screenshots in $out"
