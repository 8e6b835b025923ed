# Sourced by the scripts that drive the real window under Xvfb (screenshots, window sizes,
# the window soak): `open_window BINARY W H [app options]` starts Xvfb with a W x H screen
# and the app on the tiny test model (unless HF_HOME or HF_HUB_CACHE says otherwise), waits
# for its window, sizes it to W x H and sets $win, $app and $tmp; everything is cleaned up at
# exit. (.ci/xvfb-smoke.sh, which CI runs, keeps its own start-up with its diagnostics.)
open_window() {
  local bin=$1 w=$2 h=$3; shift 3
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  tmp=$(mktemp -d); app=; xvfb=
  export XDG_RUNTIME_DIR=$tmp/run; mkdir -m 700 -p "$XDG_RUNTIME_DIR"
  export HOME=$tmp/home; mkdir -p "$HOME"
  trap 'kill $app $xvfb 2>/dev/null || true; rm -rf "$tmp"' EXIT
  Xvfb -displayfd 3 -screen 0 "${w}x${h}x24" -nolisten tcp 3>"$tmp/display" >"$tmp/xvfb.log" 2>&1 &
  xvfb=$!
  for _ in $(seq 100); do [ -s "$tmp/display" ] && break; sleep 0.1; done
  export DISPLAY=:$(head -n1 "$tmp/display")
  [ -n "${HF_HUB_CACHE:-}" ] || export HF_HOME="${HF_HOME:-$root/tests/fixtures/hf}"
  HF_HUB_OFFLINE=1 WGPU_BACKEND=gl "$bin" app --data-dir "$tmp/data" "$@" >"$tmp/app.log" 2>&1 &
  app=$!
  win=
  for _ in $(seq 600); do
    win=$(xdotool search --name Flamingo 2>/dev/null | head -n1 || true)
    [ -n "$win" ] && break
    sleep 0.1
  done
  [ -n "$win" ] || { echo "no window"; cat "$tmp/app.log"; exit 1; }
  xdotool windowsize "$win" "$w" "$h"
}
