#!/usr/bin/env bash
# The real window under Xvfb (1180x760) generating again and again
# for SECONDS while the pointer moves: every generation's frame-time histogram and the
# process's memory go to OUT/frames.jsonl; the end prints the merged p99 frame time (frames
# while generating), the number of generations and the memory at the start and the end.
#   .ci/window-soak.sh BINARY SECONDS OUT_DIR
# The model: the tiny test model in f32 by default; HF_HOME or HF_HUB_CACHE and WEIGHTS pick
# another (a full-size cache made by tests/reference/make_full_size_cache.py, say, in q8_0).
set -euo pipefail
bin=$1; secs=$2; out=$3
mkdir -p "$out"; rm -f "$out/frames.jsonl"
. "$(dirname "$0")/window.sh"
FLAMINGO_FRAME_STATS="$out/frames.jsonl" open_window "$bin" 1180 760 --weights "${WEIGHTS:-f32}"
sleep "${LOADWAIT:-6}"
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$app/status"; }
rss0=$(rss)
end=$((SECONDS + secs)); i=0
while [ $SECONDS -lt $end ]; do
  xdotool mousemove --window "$win" 433 345 click 1      # Generate
  for k in $(seq 8); do
    xdotool mousemove --window "$win" $((500 + (i * 37 + k * 53) % 600)) $((380 + (k * 29) % 300))
    sleep 0.15
  done
  i=$((i + 1))
done
sleep 2
rss1=$(rss)
kill -0 "$app" || { echo "the app is gone"; cat "$tmp/app.log"; exit 1; }
python3 - "$out/frames.jsonl" "$rss0" "$rss1" "$i" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
hist = [0] * 101
for l in lines:
    for ms, c in enumerate(l["frames"].get("histogram_ms") or []):
        hist[ms] += c
total = sum(hist); seen = 0; p99 = None
for ms, c in enumerate(hist):
    seen += c
    if p99 is None and total and seen >= 0.99 * total:
        p99 = ms + 1
worst = max((l["frames"]["max_ms_while_running"] for l in lines), default=0)
rss0, rss1 = float(sys.argv[2]), float(sys.argv[3])
print(json.dumps({"clicks": int(sys.argv[4]), "generations": len(lines),
  "outcomes": {o: sum(l["outcome"] == o for l in lines) for o in {l["outcome"] for l in lines}},
  "frames_while_generating": total, "p99_ms": p99, "worst_ms": worst,
  "rss_start_mb": round(rss0 / 1e6, 1), "rss_end_mb": round(rss1 / 1e6, 1)}))
PY
