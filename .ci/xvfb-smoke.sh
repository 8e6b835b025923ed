#!/usr/bin/env bash
# Starts the real binary in a real window under Xvfb with the tiny test model, presses
# Generate, takes a screenshot, and checks that it is not blank.
#   .ci/xvfb-smoke.sh BINARY OUT.png
set -euo pipefail
bin=$1; out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
export XDG_RUNTIME_DIR=$tmp/run; mkdir -m 700 -p "$XDG_RUNTIME_DIR"
export HOME=$tmp/home; mkdir -p "$HOME"
display=:$((90 + RANDOM % 9))
Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >"$tmp/xvfb.log" 2>&1 &
xvfb=$!
trap 'kill $app $xvfb 2>/dev/null || true; rm -rf "$tmp"' EXIT
export DISPLAY=$display
for _ in $(seq 50); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done
HF_HUB_OFFLINE=1 HF_HOME="$root/tests/fixtures/hf" WGPU_BACKEND=gl \
  "$bin" app --data-dir "$tmp/data" >"$tmp/app.log" 2>&1 &
app=$!
# Wait for the window, then for the model and the sample images.
for _ in $(seq 100); do xdotool search --name Flamingo >/dev/null 2>&1 && break; sleep 0.1; done
win=$(xdotool search --name Flamingo | head -n1)
if [ -z "$win" ]; then echo "no window appeared"; cat "$tmp/app.log"; exit 1; fi
sleep 3
# Press Generate with the keyboard (the app binds Ctrl+Enter to it). Without a window
# manager the keyboard focus follows the pointer, so move the pointer into the window first.
xdotool mousemove --window "$win" 700 650
sleep 0.3
xdotool key ctrl+Return
sleep 0.5
# And a click on the Generate button itself (its place at the default window size).
xdotool mousemove --window "$win" 433 372 click 1
sleep 3
import -window root "$out"
kill -0 $app || { echo "the app exited"; cat "$tmp/app.log"; exit 1; }
colors=$(convert "$out" -format %k info:)
echo "screenshot $out: $colors colours"
if [ "$colors" -lt 50 ]; then echo "the screenshot looks blank"; exit 1; fi
