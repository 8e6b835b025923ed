#!/usr/bin/env bash
# Runs `flamingo bench` in every weight format and the PyTorch reference (f32) at the same
# shape, one after the other on a quiet machine, and prints one table of the figures and the
# ratios to PyTorch. Needs the reference environment (tests/reference/README.md).
#   tests/reference/bench_side_by_side.sh 3b /path/to/venv/bin/python /path/to/mpt_redpajama
# FORMATS="f32 q8_0" limits the formats; THREADS (default 2) sets the threads of both sides;
# KEEP=folder keeps each side's JSON there (every figure, the cold caption's parts too).
# Cold captions and re-queries are run 3 times (REPEATS) and shown as their median [range].
set -euo pipefail
shape=${1:-tiny}; py=${2:-python3}; code=${3:?folder with MosaicGPT remote code}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${FLAMINGO_BIN:-$root/target/release/flamingo}
threads=${THREADS:-2}
out=${KEEP:-$(mktemp -d)}
mkdir -p "$out"
for f in ${FORMATS:-f32 f16 q8_0 q4k}; do
  echo "== flamingo bench --shape $shape --dtype $f" >&2
  "$bin" bench --shape "$shape" --threads "$threads" --dtype "$f" --repeats "${REPEATS:-3}" \
    >"$out/$f.json"
done
echo "== PyTorch reference" >&2
"$py" "$root/tests/reference/bench_reference.py" --shape "$shape" --threads "$threads" \
  --mosaic-gpt-code "$code" 2>/dev/null >"$out/torch.json"
"$py" - "$out" ${FORMATS:-f32 f16 q8_0 q4k} <<'PY'
import json, sys, os
d, fmts = sys.argv[1], sys.argv[2:]
t = json.load(open(os.path.join(d, "torch.json")))
rows = [(f, json.load(open(os.path.join(d, f + ".json")))) for f in fmts]
cols = [("encode_s_per_image", "encode/img s"), ("prefill_s", "prefill s"),
        ("decode_s_per_token", "decode/tok s"), ("cold_caption_s", "cold caption s"),
        ("prepared_caption_s", "caption after work-ahead s"),
        ("requery_ttft_s", "re-query TTFT s"), ("peak_rss_bytes", "peak RSS GB")]
def cell(v, k):
    return f"{v / 1e9:.2f}" if k == "peak_rss_bytes" else f"{v:.3f}"
print("| | " + " | ".join(c[1] for c in cols)
      + " | re-query / floor | weights GB | RSS / weights | logit cos min | top-1 vs f32 |")
print("|---" * (len(cols) + 6) + "|")
def fid(r):
    f = r.get("fidelity_vs_f32")
    return (f"{f['cosine_min']:.5f}", f"{100 * f['top1_agreement']:.1f}%") if f else ("1", "100%")
pt = ["PyTorch f32"]
for k, _ in cols:
    pt.append(cell(t[k], k) if k in t else "")
print("| " + " | ".join(pt) + " | | | | | |")
for f, r in rows:
    cells = [f"flamingo {f}"]
    for k, _ in cols:
        v = cell(r[k], k)
        if k in t and t[k]:
            v += f" ({r[k] / t[k]:.2f}x)"
        if k == "cold_caption_s" and "cold_caption_parts_s" in r:
            # Its images, prompt and tokens.
            v += " (" + " + ".join(f"{p:.2f}" for p in r["cold_caption_parts_s"]) + ")"
        if k == "cold_caption_s" and len(r.get("cold_caption_runs_s", [])) > 1:
            # The median run's figure above; every run's range here.
            runs = r["cold_caption_runs_s"]
            v += f" [{min(runs):.2f}-{max(runs):.2f}]"
        cells.append(v)
    # The floor of a re-query: the query's encode plus the final prompt alone.
    floor = r["requery_encode_s"] + r["requery_final_prefill_s"]
    ratio = f"{r['requery_ttft_s'] / floor:.2f}x"
    if len(r.get("requery_runs_s", [])) > 1:
        # Each run's time to first token over its own floor.
        each = [q[0] / (q[1] + q[2]) for q in r["requery_runs_s"]]
        ratio += f" [{min(each):.2f}-{max(each):.2f}]"
    cells.append(ratio)
    w = r.get("weights_bytes")
    cells += [f"{w / 1e9:.2f}", f"{r['peak_rss_bytes'] / w:.2f}x"] if w else ["", ""]
    print("| " + " | ".join(cells) + " | " + " | ".join(fid(r)) + " |")
# PyTorch has no re-query cache: its re-query costs an encode of every image plus the whole
# prefill again; this line gives that figure for comparison.
if "encode_s_per_image" in t and "prefill_s" in t:
    n = rows[0][1].get("images", 3) if rows else 3
    print(f"\nPyTorch re-query (no caches): {n} encodes + prefill = "
          f"{n * t['encode_s_per_image'] + t['prefill_s']:.3f} s")
PY
[ -n "${KEEP:-}" ] || rm -rf "$out"
