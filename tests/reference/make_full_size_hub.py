#!/usr/bin/env python3
"""Writes a random-weight model of a released OpenFlamingo shape as a Hugging Face hub cache: the
real repo ids, file names, shard layout, dtypes and key names, one tensor at a time (a 7B
language model is never whole in memory). For measuring how the app loads the big models
(memory while converting, the kept model's load) without downloading anything.

    python tests/reference/make_full_size_hub.py --shape 9b --out /tmp/hf9b/hub

Shapes: 4b (OpenFlamingo-4B-vitl-rpj3b: GPT-NeoX, f16 pytorch_model.bin), 9b
(OpenFlamingo-9B-vitl-mpt7b: MPT-7B, two bf16 shards). About 12 GB (4b) and 20 GB (9b) on
disk. Nothing here is committed; the tokenizer comes from the test fixtures.
"""

import argparse
import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
CLIP_REPO = "timm/vit_large_patch14_clip_224.openai"

SHAPES = {
    "4b": dict(ckpt="openflamingo/OpenFlamingo-4B-vitl-rpj3b",
               lm="togethercomputer/RedPajama-INCITE-Base-3B-v1", every=2, d=2560, layers=32),
    "9b": dict(ckpt="openflamingo/OpenFlamingo-9B-vitl-mpt7b", lm="anas-awadalla/mpt-7b",
               every=4, d=4096, layers=32),
}
VOCAB = 50280  # after OpenFlamingo's resize
LM_VOCAB = 50432


def rand(shape, name, gen, dtype=torch.float32):
    """Ones for a norm's weight, else normal values of a spread that keeps activations sane."""
    last = name.rsplit(".", 1)[-1]
    if len(shape) == 1 and last == "weight" and ("norm" in name or "ln" in name):
        return torch.ones(shape, dtype=dtype)
    if "latents" in name:
        std = 1.0
    elif name.endswith("_gate"):
        std = 0.5
    elif len(shape) >= 2 and "embed" not in name and "wte" not in name and "positional" not in name:
        std = 1.0 / math.sqrt(math.prod(shape[1:]))
    else:
        std = 0.02
    return (torch.randn(shape, generator=gen) * std).to(dtype)


def write_repo(cache, repo, files, tag):
    folder = cache / ("models--" + repo.replace("/", "--"))
    rev = hashlib.sha1(tag.encode()).hexdigest()
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    snap = folder / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        blob = folder / "blobs" / h.hexdigest()
        shutil.move(str(src), blob)
        link = snap / name
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (folder / "refs" / "main").write_text(rev)


def clip(out, gen):
    w, layers, p = 1024, 24, 14
    t = {"visual.conv1.weight": rand((w, 3, p, p), "conv1.weight", gen),
         "visual.class_embedding": rand((w,), "class_embedding", gen),
         "visual.positional_embedding": rand((257, w), "positional_embedding", gen),
         "visual.ln_pre.weight": torch.ones(w), "visual.ln_pre.bias": rand((w,), "ln_pre.bias", gen)}
    for i in range(layers):
        b = f"visual.transformer.resblocks.{i}"
        for ln in ["ln_1", "ln_2"]:
            t[f"{b}.{ln}.weight"] = torch.ones(w)
            t[f"{b}.{ln}.bias"] = rand((w,), "bias", gen)
        for n, s in [("attn.in_proj_weight", (3 * w, w)), ("attn.in_proj_bias", (3 * w,)),
                     ("attn.out_proj.weight", (w, w)), ("attn.out_proj.bias", (w,)),
                     ("mlp.c_fc.weight", (4 * w, w)), ("mlp.c_fc.bias", (4 * w,)),
                     ("mlp.c_proj.weight", (w, 4 * w)), ("mlp.c_proj.bias", (w,))]:
            t[f"{b}.{n}"] = rand(s, n, gen)
    save_file(t, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 768, "quick_gelu": True,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14}}}))


def checkpoint(out, s, gen, layers_path, embed_names):
    d, vis = s["d"], 1024
    t = {"perceiver.latents": rand((64, vis), "latents", gen)}
    for i in range(6):
        b = f"perceiver.layers.{i}"
        for ln in ["0.norm_media", "0.norm_latents", "1.0"]:
            t[f"{b}.{ln}.weight"] = torch.ones(vis)
            t[f"{b}.{ln}.bias"] = rand((vis,), "bias", gen)
        for n, sh in [("0.to_q.weight", (512, vis)), ("0.to_kv.weight", (1024, vis)),
                      ("0.to_out.weight", (vis, 512)), ("1.1.weight", (4 * vis, vis)),
                      ("1.3.weight", (vis, 4 * vis))]:
            t[f"{b}.{n}"] = rand(sh, n, gen)
    t["perceiver.norm.weight"] = torch.ones(vis)
    t["perceiver.norm.bias"] = rand((vis,), "bias", gen)
    for i in range(s["layers"]):
        if (i + 1) % s["every"]:
            continue
        b = f"lang_encoder.{layers_path}.{i}.gated_cross_attn_layer"
        t[f"{b}.attn_gate"] = rand((1,), "attn_gate", gen)
        t[f"{b}.ff_gate"] = rand((1,), "ff_gate", gen)
        for ln in ["attn.norm", "ff.0"]:
            t[f"{b}.{ln}.weight"] = torch.ones(d)
            t[f"{b}.{ln}.bias"] = rand((d,), "bias", gen)
        for n, sh in [("attn.to_q.weight", (512, d)), ("attn.to_kv.weight", (1024, vis)),
                      ("attn.to_out.weight", (d, 512)), ("ff.1.weight", (4 * d, d)),
                      ("ff.3.weight", (d, 4 * d))]:
            t[f"{b}.{n}"] = rand(sh, n, gen)
    for n in embed_names:
        t[f"lang_encoder.{n}"] = rand((VOCAB, d), "embed", gen)
    torch.save(t, out / "checkpoint.pt")


def mpt7b(out, s, gen):
    d, L = s["d"], s["layers"]
    cfg = {"architectures": ["MPTForCausalLM"], "model_type": "mpt", "d_model": d, "n_heads": 32,
           "n_layers": L, "expansion_ratio": 4, "max_seq_len": 2048, "vocab_size": LM_VOCAB,
           "no_bias": True, "norm_type": "low_precision_layernorm", "learned_pos_emb": True,
           "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch",
                           "qk_ln": False, "clip_qkv": None, "softmax_scale": None,
                           "attn_type": "multihead_attention", "prefix_lm": False,
                           "attn_uses_sequence_id": False, "attn_pdrop": 0.0},
           "logit_scale": None, "torch_dtype": "bfloat16", "tokenizer_name": "EleutherAI/gpt-neox-20b"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    weight_map = {}
    halves = [range(0, L // 2), range(L // 2, L)]
    for k, layers in enumerate(halves):
        name = f"pytorch_model-0000{k + 1}-of-00002.bin"
        t = {}
        if k == 0:
            t["transformer.wte.weight"] = rand((LM_VOCAB, d), "wte", gen, torch.bfloat16)
        for i in layers:
            b = f"transformer.blocks.{i}"
            t[f"{b}.norm_1.weight"] = torch.ones(d, dtype=torch.bfloat16)
            t[f"{b}.norm_2.weight"] = torch.ones(d, dtype=torch.bfloat16)
            for n, sh in [("attn.Wqkv.weight", (3 * d, d)), ("attn.out_proj.weight", (d, d)),
                          ("ffn.up_proj.weight", (4 * d, d)), ("ffn.down_proj.weight", (d, 4 * d))]:
                t[f"{b}.{n}"] = rand(sh, n, gen, torch.bfloat16)
        if k == 1:
            t["transformer.norm_f.weight"] = torch.ones(d, dtype=torch.bfloat16)
        torch.save(t, out / name)
        weight_map.update({n: name for n in t})
        del t
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))


def redpajama(out, s, gen):
    d, L, m = s["d"], s["layers"], 4 * s["d"]
    cfg = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": d,
           "num_attention_heads": 32, "num_hidden_layers": L, "intermediate_size": m,
           "hidden_act": "gelu", "rotary_pct": 1.0, "rotary_emb_base": 10000,
           "max_position_embeddings": 2048, "layer_norm_eps": 1e-5, "use_parallel_residual": False,
           "tie_word_embeddings": False, "vocab_size": LM_VOCAB, "torch_dtype": "float16"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    f16 = torch.float16
    t = {"gpt_neox.embed_in.weight": rand((LM_VOCAB, d), "embed", gen, f16),
         "embed_out.weight": rand((LM_VOCAB, d), "embed", gen, f16)}
    for i in range(L):
        b = f"gpt_neox.layers.{i}"
        for ln in ["input_layernorm", "post_attention_layernorm"]:
            t[f"{b}.{ln}.weight"] = torch.ones(d, dtype=f16)
            t[f"{b}.{ln}.bias"] = rand((d,), "bias", gen, f16)
        for n, o, i_ in [("attention.query_key_value", 3 * d, d), ("attention.dense", d, d),
                         ("mlp.dense_h_to_4h", m, d), ("mlp.dense_4h_to_h", d, m)]:
            t[f"{b}.{n}.weight"] = rand((o, i_), n, gen, f16)
            t[f"{b}.{n}.bias"] = rand((o,), "bias", gen, f16)
    t["gpt_neox.final_layer_norm.weight"] = torch.ones(d, dtype=f16)
    t["gpt_neox.final_layer_norm.bias"] = rand((d,), "bias", gen, f16)
    torch.save(t, out / "pytorch_model.bin")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", required=True, choices=SHAPES)
    ap.add_argument("--out", required=True, help="hub cache folder to write")
    a = ap.parse_args()
    s = SHAPES[a.shape]
    cache = Path(a.out)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"flamingo-{a.shape}-", dir=cache.parent))
    gen = torch.Generator().manual_seed(0)
    tok = next((FIX / "hf/hub/models--anas-awadalla--mpt-1b-redpajama-200b/snapshots").iterdir())
    (work / "clip").mkdir()
    clip(work / "clip", gen)
    write_repo(cache, CLIP_REPO, {f: work / "clip" / f for f in
                                  ["open_clip_config.json", "open_clip_model.safetensors"]}, "clip")
    (work / "lm").mkdir()
    if a.shape == "9b":
        mpt7b(work / "lm", s, gen)
        layers_path, embeds = "transformer.blocks", ["transformer.wte.weight"]
    else:
        redpajama(work / "lm", s, gen)
        layers_path, embeds = "gpt_neox.layers", ["gpt_neox.embed_in.weight", "embed_out.weight"]
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tok / f, work / "lm" / f)
    write_repo(cache, s["lm"], {f.name: f for f in (work / "lm").iterdir()}, "lm")
    (work / "ckpt").mkdir()
    checkpoint(work / "ckpt", s, gen, layers_path, embeds)
    write_repo(cache, s["ckpt"], {"checkpoint.pt": work / "ckpt" / "checkpoint.pt"}, "ckpt")
    shutil.rmtree(work)
    print("written", cache)


if __name__ == "__main__":
    main()
