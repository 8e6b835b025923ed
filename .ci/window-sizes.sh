#!/usr/bin/env bash
# The real window under Xvfb at 1400x900, 1180x760, the minimum size (760x480) and below it
# (640x420, which a window manager would not allow), for looking at the layout:
#   .ci/window-sizes.sh BINARY OUT_DIR
set -euo pipefail
bin=$1; out=$2; root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"; tmp=$(mktemp -d)
export XDG_RUNTIME_DIR=$tmp/run; mkdir -m 700 -p "$XDG_RUNTIME_DIR"
export HOME=$tmp/home; mkdir -p "$HOME"
Xvfb -displayfd 3 -screen 0 1600x1000x24 -nolisten tcp 3>"$tmp/display" >"$tmp/xvfb.log" 2>&1 &
xvfb=$!
trap 'kill $app $xvfb 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do [ -s "$tmp/display" ] && break; sleep 0.1; done
export DISPLAY=:$(head -n1 "$tmp/display")
HF_HUB_OFFLINE=1 HF_HOME="$root/tests/fixtures/hf" WGPU_BACKEND=gl "$bin" app --data-dir "$tmp/data" >"$tmp/app.log" 2>&1 &
app=$!
win=
for _ in $(seq 600); do win=$(xdotool search --name Flamingo 2>/dev/null | head -n1 || true); [ -n "$win" ] && break; sleep 0.1; done
sleep 4
for s in 1400x900 1180x760 760x480 640x420; do
  w=${s%x*}; h=${s#*x}
  xdotool windowsize "$win" $w $h; sleep 2
  import -window "$win" "$out/window-$s.png"
done
