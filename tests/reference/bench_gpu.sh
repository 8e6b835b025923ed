#!/usr/bin/env bash
# The CUDA checks and the side-by-side benchmark on a GPU machine, in one go (the device tool's
# machines have PyTorch but no Rust: the `cuda` build is made elsewhere, ../shared/CUDA.md).
#   BIN=path/to/flamingo(cuda build) WHEELS=dir MOSAIC=dir [FIXTURES=tests/fixtures] \
#     tests/reference/bench_gpu.sh OUTDIR
# Every result is appended as one JSON line to OUTDIR/results.jsonl as soon as it is known, so a
# run cut short keeps what it finished.
# 1. Parity on the GPU: `flamingo caption --json` on the tiny fixture models in f32, f16 and
#    q8_0 (PARITY_FORMATS), against the reference's greedy tokens and step logits
#    (max |diff| / max |ref|), and against the same binary on the CPU.
# 2. `flamingo bench --shape 3b --dtype f32` on the GPU, the GPU memory in use sampled by
#    nvidia-smi every 100 ms.
# 3. `flamingo bench` in the other formats (FORMATS, default "f32 q8_0 f16 q4k": all four).
# 4. The PyTorch reference at the same shape on the same GPU (f32, then autocast f16 and bf16).
#    WHEELS holds the reference's pure-Python packages (open-flamingo 2.0.1, open_clip_torch
#    2.20.0, transformers 4.33.3, huggingface_hub 0.17.3, einops-exts, ftfy, wcwidth); the
#    machine's own torch, numpy and tokenizers are used. transformers 4.33.3 pins
#    tokenizers<0.14, which has no wheel for Python 3.12: the pin check is switched off in the
#    installed copy (the tokenizer only serves the special-token ids here).
set -uo pipefail
out=${1:?output folder}
mkdir -p "$out"
work=$(mktemp -d)
res="$out/results.jsonl"
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BIN:?flamingo cuda binary}
fx=${FIXTURES:-$root/tests/fixtures}
py=${PYTHON:-python3}
shape=${SHAPE:-3b}
log() { echo "== $*" >&2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2

# 1. Parity against the reference on the tiny fixtures, each format on the GPU and, for
#    comparison, the same binary on the CPU (CUDA_VISIBLE_DEVICES= hides the GPU).
for tag in every1_twoshot every1_zeroshot; do
  args=$($py - "$fx/reference/$tag.json" "$fx/images" <<'PY'
import json, sys, shlex
d, img = json.load(open(sys.argv[1])), sys.argv[2]
a = []
for s in d["shots"]:
    a += ["--shot", f"{img}/{s['image']}", s["caption"]]
a += [f"{img}/{d['query']}", "--max-new-tokens", str(d["max_new_tokens"])]
print(" ".join(shlex.quote(x) for x in a))
PY
)
  eval "set -- $args"
  for dtype in ${PARITY_FORMATS:-f32 f16 q8_0}; do
    for where in gpu cpu; do
      log "caption $tag $dtype on the $where"
      hide=()
      [ "$where" = cpu ] && hide=(env CUDA_VISIBLE_DEVICES=)
      HF_HOME="$fx/hf" HF_HUB_OFFLINE=1 timeout 60 "${hide[@]}" "$bin" caption --json \
        --dtype "$dtype" --logits-out "$work/$tag-$dtype-$where.npy" "$@" \
        >"$work/$tag-$dtype-$where.json"
      echo "exit $?" >&2
    done
    $py - "$fx/reference/$tag" "$work/$tag-$dtype" <<'PY' | tee -a "$res"
import json, sys
import numpy as np
from safetensors.numpy import load_file
ref, got = sys.argv[1], sys.argv[2]
want = json.load(open(ref + ".json"))
r = load_file(ref + ".safetensors")["step_logits"]
out = {"parity": got.rsplit("/", 1)[1]}
def rel(a, b):
    n = min(len(a), len(b))
    return float(np.abs(a[:n] - b[:n]).max() / np.abs(b[:n]).max()) if n else None
logits = {}
for where in ["gpu", "cpu"]:
    have = json.load(open(f"{got}-{where}.json"))
    g = np.load(f"{got}-{where}.npy").reshape(-1, r.shape[-1])
    logits[where] = g
    out[where] = {"device": have.get("device"), "tokens": have["token_ids"],
                  "tokens_equal_reference": have["token_ids"] == want["generated_token_ids"],
                  "all_finite": bool(np.isfinite(g).all()),
                  "logits_rel_err_vs_reference": rel(g, r),
                  "first_step_rel_err_vs_reference": rel(g[:1], r[:1])}
out["reference_tokens"] = want["generated_token_ids"]
out["first_step_rel_err_gpu_vs_cpu"] = rel(logits["gpu"][:1], logits["cpu"][:1])
print(json.dumps(out))
PY
  done
done

bench() {
  local f=$1
  log "flamingo bench --shape $shape --dtype $f"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$work/mem-$f.txt" &
  local smi=$!
  timeout "${BENCH_TIMEOUT:-120}" "$bin" bench --shape "$shape" --dtype "$f" >"$work/bench-$f.json"
  echo "exit $?" >&2
  kill $smi
  wait $smi 2>/dev/null
  # The GPU memory in use at its peak during the run (the whole card: nothing else runs).
  $py - "$work/bench-$f.json" "$work/mem-$f.txt" <<'PY' | tee -a "$res"
import json, sys
r = json.load(open(sys.argv[1]))
mem = [int(x) for x in open(sys.argv[2]).read().split() if x.strip().isdigit()]
r["peak_gpu_mib_in_use"] = max(mem, default=None)
print(json.dumps(r))
PY
}

# 2-3. flamingo bench on the GPU, f32 first (FORMATS= skips them all).
for f in ${FORMATS-f32 q8_0 f16 q4k}; do
  bench "$f"
done

# 4. The PyTorch reference on the same GPU.
if [ -n "${WHEELS:-}" ]; then
  log "PyTorch reference"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl
  python3 - <<'PY' >&2
import re, pathlib
p = pathlib.Path("/tmp/site/transformers/dependency_versions_check.py")
s = p.read_text()
s = re.sub(r"require_version_core\(deps\[pkg\]\)", "pass  # pins not checked here", s)
p.write_text(s)
PY
  FLAMINGO_FIXTURES="$fx" PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout "${TORCH_TIMEOUT:-300}" \
    python3 "$root/tests/reference/bench_reference.py" --shape "$shape" --device cuda \
    --threads 16 --dtypes f32,f16,bf16 --mosaic-gpt-code "$MOSAIC" >"$work/torch.json" \
    2>"$work/torch.log"
  echo "exit $?" >&2
  tail -5 "$work/torch.log" >&2
  $py -c 'import json,sys; print(json.dumps({"torch": json.load(open(sys.argv[1]))}))' \
    "$work/torch.json" | tee -a "$res"
fi
