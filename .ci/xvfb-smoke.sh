#!/usr/bin/env bash
# Starts the real binary in a real window under Xvfb with the tiny test model, presses
# Generate, takes a screenshot, and checks that it is not blank.
#   .ci/xvfb-smoke.sh BINARY OUT.png
# Every way out that is not a pass says why and prints what Xvfb and the app wrote.
set -euo pipefail
bin=$1; out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
export XDG_RUNTIME_DIR=$tmp/run; mkdir -m 700 -p "$XDG_RUNTIME_DIR"
export HOME=$tmp/home; mkdir -p "$HOME"
app=; xvfb=

logs() {
  echo "--- Xvfb log"; cat "$tmp/xvfb.log" 2>/dev/null || true
  echo "--- app log"; cat "$tmp/app.log" 2>/dev/null || true
}
fail() { echo "xvfb smoke: $*"; logs; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || { echo "xvfb smoke: a step failed (line $LINENO, exit $rc)"; logs; }' ERR
trap 'kill $app $xvfb 2>/dev/null || true; rm -rf "$tmp"' EXIT

# Xvfb picks a free display itself and writes its number to fd 3 once it accepts clients.
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$tmp/display" >"$tmp/xvfb.log" 2>&1 &
xvfb=$!
for _ in $(seq 100); do [ -s "$tmp/display" ] && break; kill -0 $xvfb 2>/dev/null || break; sleep 0.1; done
[ -s "$tmp/display" ] || fail "Xvfb did not start"
export DISPLAY=:$(head -n1 "$tmp/display")
xdpyinfo >/dev/null 2>&1 || fail "Xvfb on $DISPLAY does not answer"

start=$SECONDS
HF_HUB_OFFLINE=1 HF_HOME="$root/tests/fixtures/hf" WGPU_BACKEND=gl \
  "$bin" app --data-dir "$tmp/data" >"$tmp/app.log" 2>&1 &
app=$!
# Wait for the window (a busy machine can be slow to start it), then for the model and
# the sample images.
win=
for _ in $(seq 600); do
  win=$(xdotool search --name Flamingo 2>/dev/null | head -n1 || true)
  [ -n "$win" ] && break
  kill -0 $app 2>/dev/null || fail "the app exited before its window appeared"
  sleep 0.1
done
[ -n "$win" ] || fail "no window appeared within 60 s"
echo "window $win after $((SECONDS - start)) s"
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
kill -0 $app 2>/dev/null || fail "the app exited"
colors=$(convert "$out" -format %k info:)
echo "screenshot $out: $colors colours"
[ "$colors" -ge 50 ] || fail "the screenshot looks blank"
