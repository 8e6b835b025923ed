#!/usr/bin/env bash
# Runs `flamingo bench` and the PyTorch reference at the same shape, one after the other, and
# prints both JSON objects and the ratios (Rust / PyTorch). Needs the reference environment.
#   tests/reference/bench_side_by_side.sh 3b /path/to/venv/bin/python /path/to/mpt_redpajama
set -euo pipefail
shape=${1:-tiny}; py=${2:-python3}; code=${3:?folder with MosaicGPT remote code}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FLAMINGO_BIN:-$root/target/release/flamingo}
rust=$("$bin" bench --shape "$shape" --threads 2)
torch=$("$py" "$root/tests/reference/bench_reference.py" --shape "$shape" --threads 2 --mosaic-gpt-code "$code" 2>/dev/null)
echo "rust:  $rust"
echo "torch: $torch"
"$py" - "$rust" "$torch" <<'PY'
import json, sys
r, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ["encode_s_per_image", "prefill_s", "decode_s_per_token", "peak_rss_bytes"]:
    print(f"{k:22s} rust {r[k]:.4g}  torch {t[k]:.4g}  ratio {r[k] / t[k]:.2f}x")
PY
