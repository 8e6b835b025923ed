#!/usr/bin/env python3
"""Writes a random-weight model of the full OpenFlamingo-3B-vitl-mpt1b shape as a Hugging Face
cache (the real repo ids and file formats, built with the real reference code), for measuring
load times and the app's responsiveness under real compute without downloading anything.

    python tests/reference/make_full_size_cache.py --mosaic-gpt-code DIR --out /tmp/hf3b/hub

About 11 GB on disk. Nothing here is committed.
"""

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_fixtures as g  # noqa: E402

FULL_VISION = {
    "embed_dim": 768,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mosaic-gpt-code", required=True)
    ap.add_argument("--out", required=True, help="hub cache folder to write")
    a = ap.parse_args()
    torch.set_num_threads(2)
    cache = Path(a.out)
    work = Path(tempfile.mkdtemp(prefix="flamingo-3b-"))
    tok_src = next((g.FIX / "hf/hub/models--anas-awadalla--mpt-1b-redpajama-200b/snapshots").iterdir())
    tok_dir = work / "tokenizer"
    tok_dir.mkdir()
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tok_src / f, tok_dir / f)
    g.LM_CFG.update({"d_model": 2048, "n_heads": 16, "n_layers": 24})
    g.VISION_CFG.clear()
    g.VISION_CFG.update(FULL_VISION)
    lm_dir = g.build_lm_folder(work, a.mosaic_gpt_code, 0)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tok_dir / f, lm_dir / f)
    g.register_clip(work)
    model, _, _ = g.build_flamingo(lm_dir, tok_dir, 1, 0)
    out = work / "out"
    out.mkdir()
    visual = {f"visual.{k}": v.contiguous() for k, v in model.vision_encoder.state_dict().items()}
    save_file(visual, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": FULL_VISION}))
    torch.save(g.trainable_checkpoint(model), out / "checkpoint.pt")
    del model
    g.write_repo(cache, g.CKPT_REPO, {"checkpoint.pt": out / "checkpoint.pt"}, hashlib.sha1(b"c3b").hexdigest())
    g.write_repo(cache, g.CLIP_REPO, {"open_clip_config.json": out / "open_clip_config.json",
                                      "open_clip_model.safetensors": out / "open_clip_model.safetensors"},
                 hashlib.sha1(b"v3b").hexdigest())
    files = {"config.json": lm_dir / "config.json", "pytorch_model.bin": lm_dir / "pytorch_model.bin"}
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        files[f] = lm_dir / f
    g.write_repo(cache, g.LM_REPO, files, hashlib.sha1(b"l3b").hexdigest())
    shutil.rmtree(work)
    print("written", cache)


if __name__ == "__main__":
    main()
