#!/usr/bin/env bash
# Measures the app's frame times while it generates with a full-size model: the real window under
# Xvfb, HF_HOME pointing at a cache written by make_full_size_cache.py, Generate clicked, the
# pointer kept moving; prints FLAMINGO_FRAME_STATS's JSON line for the generation.
#   HF3B=/tmp/hf3b BIN=target/release/flamingo [WEIGHTS=q8_0] [LOADWAIT=45] tests/reference/measure_app_frames.sh
# Needs xvfb, xdotool, imagemagick.
set -u
BIN=${BIN:-target/release/flamingo}; HF3B=${HF3B:?folder whose hub/ holds the full-size cache}
rm -f /tmp/frames3b.jsonl
tmp=$(mktemp -d); export XDG_RUNTIME_DIR=$tmp/run; mkdir -m 700 -p $XDG_RUNTIME_DIR; export HOME=$tmp/home; mkdir -p $HOME
Xvfb :77 -screen 0 1280x800x24 -nolisten tcp >/dev/null 2>&1 & xv=$!
export DISPLAY=:77; sleep 1
FLAMINGO_FRAME_STATS=/tmp/frames3b.jsonl HF_HUB_OFFLINE=1 HF_HOME="$HF3B" "$BIN" app --data-dir $tmp/data ${WEIGHTS:+--weights $WEIGHTS} > /tmp/app3b.log 2>&1 & app=$!
for i in $(seq 100); do xdotool search --name Flamingo >/dev/null 2>&1 && break; sleep 0.2; done
win=$(xdotool search --name Flamingo | head -n1)
sleep ${LOADWAIT:-45}   # model load
import -window root /tmp/app3b_loaded.png
xdotool mousemove --window $win 433 372 click 1
# While it generates, keep the UI busy: move the mouse around and scroll (forces frames).
for i in $(seq 60); do xdotool mousemove --window $win $((200 + i*10)) $((300 + (i%7)*20)); sleep 0.25; done
sleep 40
import -window root /tmp/app3b_done.png
kill $app; sleep 1; kill $xv
cat /tmp/frames3b.jsonl
