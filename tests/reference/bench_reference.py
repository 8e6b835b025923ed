#!/usr/bin/env python3
"""The PyTorch side of `flamingo bench`: the real open_flamingo model at a named shape with random
weights (no download), timed the same way, printed as the same JSON keys.

    python tests/reference/bench_reference.py --shape 3b --mosaic-gpt-code /path/to/mpt_redpajama
    ... --device cuda --dtypes f32,f16   (on a GPU; later dtypes come as sub-objects)
    python tests/reference/bench_reference.py --shape 4b --mosaic-gpt-code /unused
        (OpenFlamingo-4B: RedPajama-INCITE-3B, transformers' own GPT-NeoX; about 16 GB)
"""

import argparse
import contextlib
import sys
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("FLAMINGO_FIXTURES", ROOT / "tests/fixtures"))
TOKENIZER_DIR = next((FIXTURES / "hf/hub/models--anas-awadalla--mpt-1b-redpajama-200b/snapshots").iterdir())
NEOX_DIR = FIXTURES / "hf-neox/hub/models--togethercomputer--RedPajama-INCITE-Base-3B-v1/snapshots"

SHAPES = {
    "tiny": ({"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
             {"d_model": 32, "n_heads": 4, "n_layers": 4}),
    "3b": ({"image_size": 224, "layers": 24, "width": 1024, "head_width": 64, "patch_size": 14},
           {"d_model": 2048, "n_heads": 16, "n_layers": 24}),
    # RedPajama-INCITE-Base-3B-v1's config.json (the fixture's, at the real sizes).
    "4b": ({"image_size": 224, "layers": 24, "width": 1024, "head_width": 64, "patch_size": 14},
           {"hidden_size": 2560, "num_attention_heads": 32, "num_hidden_layers": 32,
            "intermediate_size": 10240, "vocab_size": 50432}),
}
# Cross-attention every n layers, as released.
EVERY = {"tiny": 1, "3b": 1, "4b": 2}


def main():
    # Library chatter goes to stderr; stdout carries the JSON only.
    with contextlib.redirect_stdout(sys.stderr):
        result = run()
    print(json.dumps(result, indent=2))


def run():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tiny", choices=SHAPES)
    ap.add_argument("--mosaic-gpt-code", required=True)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtypes", default="f32",
                    help="comma-separated: f32, f16, bf16; the first gives the top-level figures")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import open_clip
    from open_flamingo import create_model_and_transforms

    vcfg, lcfg = SHAPES[a.shape]
    work = Path(tempfile.mkdtemp())
    clip_name = f"ViT-bench-{a.shape}"
    (work / f"{clip_name}.json").write_text(json.dumps({
        "embed_dim": 768, "quick_gelu": True, "vision_cfg": vcfg,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}}))
    open_clip.add_model_config(str(work / f"{clip_name}.json"))
    from transformers import AutoConfig, AutoModelForCausalLM
    if a.shape == "4b":
        # The folder's name makes open_flamingo's factory treat it as RedPajama-INCITE.
        lm_dir = work / "RedPajama-INCITE-Base-3B-v1"
        lm_dir.mkdir()
        src = next(NEOX_DIR.iterdir())
        for f in src.iterdir():
            if f.name != "pytorch_model.bin":
                shutil.copy(f, lm_dir / f.name)
        cfg = json.loads((src / "config.json").read_text())
        cfg.update(lcfg)
        (lm_dir / "config.json").write_text(json.dumps(cfg))
        tok_dir = lm_dir
        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(lm_dir)))
    else:
        lm_dir = work / "mpt-1b-redpajama-200b"
        lm_dir.mkdir()
        for f in Path(a.mosaic_gpt_code).glob("*.py"):
            shutil.copy(f, lm_dir / f.name)
        cfg = json.loads((TOKENIZER_DIR / "config.json").read_text())
        cfg.update(lcfg)
        cfg["auto_map"] = {"AutoConfig": "configuration_mosaic_gpt.MosaicGPTConfig",
                           "AutoModelForCausalLM": "mosaic_gpt.MosaicGPT"}
        (lm_dir / "config.json").write_text(json.dumps(cfg))
        tok_dir = TOKENIZER_DIR
        lm = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(str(lm_dir), trust_remote_code=True), trust_remote_code=True)
    lm.save_pretrained(str(lm_dir), safe_serialization=False)
    del lm
    t0 = time.perf_counter()
    model, _, tok = create_model_and_transforms(clip_name, None, str(lm_dir), str(tok_dir),
                                                cross_attn_every_n_layers=EVERY[a.shape],
                                                use_local_files=True)
    model.eval()
    build_s = time.perf_counter() - t0
    shutil.rmtree(work)

    media, eoc = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("<|endofchunk|>")
    prompt = []
    for chunk in range(3):
        prompt.append(media)
        prompt += [1000 + chunk * 100 + i for i in range(11 if chunk < 2 else 10)]
        if chunk < 2:
            prompt.append(eoc)
    device = torch.device(a.device)
    result = {"shape": a.shape, "device": a.device, "threads": torch.get_num_threads(),
              "build_s": build_s, "torch": torch.__version__}
    model.to(device)
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    dtypes = a.dtypes.split(",")
    for i, name in enumerate(dtypes):
        # Half precision the way open_flamingo's evaluation runs it: autocast (amp_fp16 /
        # amp_bf16) over the f32 model; MosaicGPT's attention cannot run on a cast model.
        dtype = {"f32": None, "f16": torch.float16, "bf16": torch.bfloat16}[name]
        amp = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with amp:
            timed = time_model(model, prompt, a, device)
        timed["dtype"] = name if dtype is None else "amp_" + name
        if i == 0:
            result.update(timed)
        else:
            result[name] = timed
    return result


def time_model(model, prompt, a, device):
    """Per-image encode, prefill and per-token decode (KV cache), timed like `flamingo bench`."""
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    ids = torch.tensor([prompt], device=device)
    with torch.no_grad():
        one = torch.randn(1, 1, 1, 3, 224, 224, device=device)
        model._encode_vision_x(one)
        sync()
        t = time.perf_counter()
        for _ in range(a.images):
            model._encode_vision_x(one)
        sync()
        encode = (time.perf_counter() - t) / a.images
        vision_x = torch.randn(1, 3, 1, 3, 224, 224, device=device)
        model.lang_encoder._use_cached_vision_x = True
        model._encode_vision_x(vision_x)
        mask = torch.ones_like(ids)
        model.lang_encoder(input_ids=ids, attention_mask=mask, use_cache=True)  # warm-up
        sync()
        t = time.perf_counter()
        out = model.lang_encoder(input_ids=ids, attention_mask=mask, use_cache=True)
        sync()
        prefill = time.perf_counter() - t
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(a.tokens - 1):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype, device=device)], 1)
            out = model.lang_encoder(input_ids=nxt, attention_mask=mask, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            nxt.cpu()  # the token is read back each step, as a caption streams
        decode = (time.perf_counter() - t) / (a.tokens - 1)
    timed = {
        "encode_s_per_image": encode, "prompt_tokens": len(prompt), "prefill_s": prefill,
        "decode_s_per_token": decode, "decode_tokens": a.tokens,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if cuda:
        timed["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
    return timed


if __name__ == "__main__":
    main()
