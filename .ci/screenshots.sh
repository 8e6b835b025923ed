#!/usr/bin/env bash
# Screenshots of the in-context-learning views from the real window under Xvfb, with the tiny
# test model (its captions are noise; the views are what is shown):
#   .ci/screenshots.sh BINARY OUT_DIR
# Clicks go to where the controls are at the default window size (1180 wide); the window is
# made 1000 tall so that each view fits.
set -euo pipefail
bin=$1; out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
tmp=$(mktemp -d)
export XDG_RUNTIME_DIR=$tmp/run; mkdir -m 700 -p "$XDG_RUNTIME_DIR"
export HOME=$tmp/home; mkdir -p "$HOME"
app=; xvfb=
trap 'kill $app $xvfb 2>/dev/null || true; rm -rf "$tmp"' EXIT
Xvfb -displayfd 3 -screen 0 1180x1000x24 -nolisten tcp 3>"$tmp/display" >"$tmp/xvfb.log" 2>&1 &
xvfb=$!
for _ in $(seq 100); do [ -s "$tmp/display" ] && break; sleep 0.1; done
export DISPLAY=:$(head -n1 "$tmp/display")
HF_HUB_OFFLINE=1 HF_HOME="$root/tests/fixtures/hf" WGPU_BACKEND=gl \
  "$bin" app --data-dir "$tmp/data" >"$tmp/app.log" 2>&1 &
app=$!
win=
for _ in $(seq 600); do
  win=$(xdotool search --name Flamingo 2>/dev/null | head -n1 || true)
  [ -n "$win" ] && break
  sleep 0.1
done
[ -n "$win" ] || { echo "no window"; cat "$tmp/app.log"; exit 1; }
xdotool windowsize "$win" 1180 1000
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
