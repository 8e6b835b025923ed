#!/usr/bin/env python3
"""Builds tiny random-weight OpenFlamingo models with the real reference code, writes them as a
Hugging Face hub cache under the real repo ids, and records the reference's outputs.

Run it inside the pinned reference environment (see README.md in this folder):

    python tests/reference/generate_fixtures.py \
        --mosaic-gpt-code /path/to/mpt_redpajama \
        --neox-tokenizer /path/to/allenai_eleuther-ai-gpt-neox-20b-pii-special.json \
        --photos /path/to/skimage/data

Everything it writes goes under tests/fixtures/ (models, images, reference outputs).
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"

CKPT_REPO = "openflamingo/OpenFlamingo-3B-vitl-mpt1b"
LM_REPO = "anas-awadalla/mpt-1b-redpajama-200b"
CLIP_REPO = "timm/vit_large_patch14_clip_224.openai"
CLIP_NAME = "ViT-fixture-tiny"

# Tiny shapes: the vision tower and the LM are small; the perceiver and the cross-attention
# blocks keep OpenFlamingo's hard-coded heads/latents (their width follows the vision width).
VISION_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
LM_CFG = {
    "architectures": ["MosaicGPT"],
    "auto_map": {
        "AutoConfig": "configuration_mosaic_gpt.MosaicGPTConfig",
        "AutoModelForCausalLM": "mosaic_gpt.MosaicGPT",
    },
    "model_type": "mosaic_gpt",
    "d_model": 32,
    "n_heads": 4,
    "n_layers": 4,
    "mlp_ratio": 4,
    "max_seq_len": 2048,
    "vocab_size": 50432,
    "alibi": True,
    "alibi_bias_max": 8,
    "attn_qk_ln": True,
    "attn_clip_qkv": None,
    "softmax_scale": None,
    "attn_impl": "torch",
    "no_bias": True,
    "low_precision_layernorm": True,
    "embedding_fraction": 1.0,
    "emb_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "logit_scale": None,
    "prefix_lm": False,
    "init_device": "cpu",
    "tokenizer_name": "EleutherAI/gpt-neox-20b",
    "use_cache": False,
}
SHOTS = [("chelsea.png", "A cat lying on a rug."), ("coffee.png", "A cup of coffee on a table.")]
QUERY = "astronaut.png"
MAX_NEW_TOKENS = 6
CANDIDATES = ["A cat lying on a rug.", "An astronaut in an orange suit.", "Output", " two  spaces"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_repo(cache, repo, files, revision):
    """Writes files into the hub cache layout: blobs/<sha256>, snapshots/<rev>/<name> -> blob."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        digest = sha256(src)
        blob = folder / "blobs" / digest
        shutil.copyfile(src, blob)
        link = snap / name
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (folder / "refs" / "main").write_text(revision)


def prepare_tokenizer(neox_json, out_dir):
    """GPT-NeoX-20B BPE from OLMo's copy, without its 3 appended PII tokens (REFERENCE-ENV.md)."""
    d = json.loads(Path(neox_json).read_text())
    d["added_tokens"] = [t for t in d["added_tokens"] if t["id"] < 50277]
    assert len(d["model"]["vocab"]) + sum(1 for t in d["added_tokens"] if t["id"] >= len(d["model"]["vocab"])) == 50277
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(d, ensure_ascii=False))
    eot = "<|endoftext|>"
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": eot, "eos_token": eot, "unk_token": eot}))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPTNeoXTokenizer", "bos_token": eot, "eos_token": eot,
        "unk_token": eot, "add_prefix_space": False, "model_max_length": 2048}))


@torch.no_grad()
def randomize(module, gen, gate_values=None):
    """Replaces every parameter with values that make a random model informative: unit-ish
    activations, LayerNorm weights near 1, non-zero gates (tanh(0) would hide the blocks)."""
    for name, p in module.named_parameters():
        if name.endswith("attn_gate") or name.endswith("ff_gate"):
            sign = 1.0 if torch.rand((), generator=gen) < 0.7 else -1.0
            p.copy_(torch.full_like(p, sign * (0.5 + torch.rand((), generator=gen).item())))
        elif "latents" in name or "wte" in name or "embedding" in name:
            p.copy_(torch.randn(p.shape, generator=gen))
        elif p.ndim == 1 and ("ln" in name or "norm" in name or name.split(".")[-2].isdigit() and p.ndim == 1):
            if name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def build_lm_folder(work, code_dir, seed):
    """A local MosaicGPT folder (remote code + config + random weights) named like the real repo
    so that open_flamingo's factory applies its MPT-1B hooks."""
    from transformers import AutoConfig, AutoModelForCausalLM

    lm_dir = work / "mpt-1b-redpajama-200b"
    lm_dir.mkdir(parents=True, exist_ok=True)
    for f in Path(code_dir).glob("*.py"):
        shutil.copy(f, lm_dir / f.name)
    (lm_dir / "config.json").write_text(json.dumps(LM_CFG, indent=2))
    cfg = AutoConfig.from_pretrained(str(lm_dir), trust_remote_code=True)
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    gen = torch.Generator().manual_seed(seed)
    randomize(lm, gen)
    lm.save_pretrained(str(lm_dir), safe_serialization=False)
    # save_pretrained rewrites config.json; keep the auto_map so the folder loads again.
    saved = json.loads((lm_dir / "config.json").read_text())
    saved["auto_map"] = LM_CFG["auto_map"]
    saved["_name_or_path"] = LM_REPO  # not the temporary folder: keeps reruns byte-identical
    (lm_dir / "config.json").write_text(json.dumps(saved, indent=2))
    return lm_dir


def register_clip(work):
    import open_clip

    cfg_dir = work / "clip_cfg"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / f"{CLIP_NAME}.json").write_text(json.dumps(VISION_CFG))
    open_clip.add_model_config(str(cfg_dir / f"{CLIP_NAME}.json"))


def build_flamingo(lm_dir, tok_dir, every, seed, clip_state=None):
    from open_flamingo import create_model_and_transforms

    torch.manual_seed(seed)
    model, image_processor, tokenizer = create_model_and_transforms(
        clip_vision_encoder_path=CLIP_NAME,
        clip_vision_encoder_pretrained=None,
        lang_encoder_path=str(lm_dir),
        tokenizer_path=str(tok_dir),
        cross_attn_every_n_layers=every,
        use_local_files=True,
    )
    gen = torch.Generator().manual_seed(seed + 1)
    if clip_state is None:
        randomize(model.vision_encoder, gen)
    else:
        model.vision_encoder.load_state_dict(clip_state)
    randomize(model.perceiver, gen)
    randomize(model.lang_encoder.gated_cross_attn_layers, gen)
    with torch.no_grad():
        emb = model.lang_encoder.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=gen))
    model.eval()
    return model, image_processor, tokenizer


def trainable_checkpoint(model):
    """The keys OpenFlamingo's training saved (its own filter function)."""
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))  # imported but unused by the filter
    from open_flamingo.train.train_utils import filter_state_dict_to_trainable

    return filter_state_dict_to_trainable(model, model.state_dict())


def user_view(path):
    """What the app deliberately does beyond the reference: EXIF orientation, alpha on white."""
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    return img


def make_images(photos, out):
    """Photos plus synthetic images of several sizes and aspect ratios."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]:
        shutil.copy(Path(photos) / name, out / name)
    rng = np.random.default_rng(7)

    def synth(w, h, channels=3):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)),
                         ((x + y) * 3) % 256], -1).astype(np.float64)
        noise = rng.normal(0, 30, size=(h, w, 3))
        blocks = ((x // 17 + y // 13) % 2)[..., None] * 60
        img = np.clip(base + noise + blocks, 0, 255).astype(np.uint8)
        if channels == 4:
            alpha = np.clip((x * 255 // max(w - 1, 1)) + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8)
            alpha[: h // 4] = 0
            alpha[-h // 4:] = 255
            img = np.concatenate([img, alpha[..., None]], -1)
        return img

    Image.fromarray(synth(300, 200)).save(out / "synth_300x200.png")
    Image.fromarray(synth(200, 300)).save(out / "synth_200x300.png")
    Image.fromarray(synth(224, 224)).save(out / "synth_224x224.png")
    Image.fromarray(synth(97, 61)).save(out / "synth_97x61_upscale.png")
    Image.fromarray(synth(1000, 150)).save(out / "synth_1000x150_wide.png")
    Image.fromarray(synth(333, 500)).save(out / "synth_333x500.jpg", quality=90)
    Image.fromarray(synth(320, 240, 4), "RGBA").save(out / "synth_alpha_320x240.png")
    Image.fromarray(synth(256, 180)[..., 0]).save(out / "synth_gray_256x180.png")
    # A JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(synth(360, 240)).save(out / "synth_exif_rot6.jpg", quality=92, exif=exif.tobytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mosaic-gpt-code", required=True, help="folder with MosaicGPT's remote code")
    ap.add_argument("--neox-tokenizer", required=True, help="GPT-NeoX-20B tokenizer JSON (OLMo copy)")
    ap.add_argument("--photos", required=True, help="folder with chelsea.png coffee.png astronaut.png rocket.jpg")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)

    if FIX.exists():
        for sub in ["hf", "hf-xattn2", "reference"]:
            shutil.rmtree(FIX / sub, ignore_errors=True)
    images_dir = FIX / "images"
    make_images(args.photos, images_dir)

    work = Path(tempfile.mkdtemp(prefix="flamingo-fixtures-"))
    tok_dir = work / "tokenizer"
    prepare_tokenizer(args.neox_tokenizer, tok_dir)
    lm_dir = build_lm_folder(work, args.mosaic_gpt_code, args.seed)
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(tok_dir / f, lm_dir / f)
    register_clip(work)

    ref = FIX / "reference"
    ref.mkdir(parents=True, exist_ok=True)

    # Preprocessing reference: open_clip's validation transform on the user's view of each image.
    _, image_processor, _ = build_flamingo(lm_dir, tok_dir, 1, args.seed)[0:3]
    pix = {}
    for p in sorted(images_dir.iterdir()):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            pix[p.name] = image_processor(user_view(p)).contiguous()
    save_file(pix, str(ref / "pixels.safetensors"))
    print("preprocess transform:", image_processor)

    clip_state = None
    summary = {"cases": []}
    for every, hf_name in [(1, "hf"), (2, "hf-xattn2")]:
        model, image_processor, tokenizer = build_flamingo(lm_dir, tok_dir, every, args.seed, clip_state)
        clip_state = model.vision_encoder.state_dict()
        cache = FIX / hf_name / "hub"
        out_files = work / f"out-{every}"
        out_files.mkdir()
        # CLIP repo: open_clip format (only the vision tower's tensors; the text tower is unused).
        visual = {f"visual.{k}": v.contiguous() for k, v in model.vision_encoder.state_dict().items()}
        save_file(visual, str(out_files / "open_clip_model.safetensors"))
        (out_files / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": VISION_CFG,
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                               "std": [0.26862954, 0.26130258, 0.27577711]}}, indent=2))
        ckpt = trainable_checkpoint(model)
        torch.save(ckpt, out_files / "checkpoint.pt")
        rev_ckpt = hashlib.sha1(f"ckpt-every{every}".encode()).hexdigest()
        write_repo(cache, CKPT_REPO, {"checkpoint.pt": out_files / "checkpoint.pt"}, rev_ckpt)
        if every == 1:
            write_repo(cache, CLIP_REPO, {
                "open_clip_config.json": out_files / "open_clip_config.json",
                "open_clip_model.safetensors": out_files / "open_clip_model.safetensors"},
                hashlib.sha1(b"clip").hexdigest())
            lm_saved = {"config.json": lm_dir / "config.json", "pytorch_model.bin": lm_dir / "pytorch_model.bin"}
            for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
                lm_saved[f] = lm_dir / f
            write_repo(cache, LM_REPO, lm_saved, hashlib.sha1(b"lm").hexdigest())
        else:
            # Same LM and CLIP repos as the first cache (relative directory links).
            for repo in [LM_REPO, CLIP_REPO]:
                name = "models--" + repo.replace("/", "--")
                os.symlink(os.path.join("..", "..", "hf", "hub", name), cache / name)
        print("checkpoint keys:", len(ckpt), sorted(ckpt)[:3], "...")

        for case, shots in [("zeroshot", []), ("twoshot", SHOTS)]:
            if shots:
                prompt = "".join(f"<image>Output:{c}<|endofchunk|>" for _, c in shots) + "<image>Output:"
            else:
                prompt = "<image>Output:"
            names = [n for n, _ in shots] + [QUERY]
            vision_x = torch.stack([pix[n] for n in names]).unsqueeze(0).unsqueeze(2)  # (1,T,1,3,H,W)
            enc = tokenizer([prompt], return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            with torch.no_grad():
                flat = vision_x[0, :, 0]
                vision_tokens = model.vision_encoder(flat)[1]
                latents = model.perceiver(vision_tokens.unsqueeze(0).unsqueeze(2))  # (1,T,64,d)
                prompt_logits = model(vision_x, ids, attention_mask=mask).logits[0]
                gen = model.generate(vision_x, ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS,
                                     num_beams=1, do_sample=False, output_scores=True,
                                     return_dict_in_generate=True)
            new_ids = gen.sequences[0, ids.shape[1]:].tolist()
            scores = torch.stack([s[0] for s in gen.scores])
            top2 = scores.topk(2, dim=-1).values
            margins = (top2[:, 0] - top2[:, 1]).tolist()
            tag = f"every{every}_{case}"
            save_file({
                "vision_tokens": vision_tokens.contiguous(),
                "perceiver": latents[0].contiguous(),
                "prompt_logits": prompt_logits.contiguous(),
                "step_logits": scores.contiguous(),
            }, str(ref / f"{tag}.safetensors"))
            info = {
                "case": tag, "cross_attn_every": every, "hf_home": f"tests/fixtures/{hf_name}",
                "prompt": prompt, "prompt_token_ids": ids[0].tolist(),
                "images": names, "shots": [{"image": n, "caption": c} for n, c in shots],
                "query": QUERY, "max_new_tokens": MAX_NEW_TOKENS,
                "generated_token_ids": new_ids,
                "generated_text": tokenizer.decode(new_ids, skip_special_tokens=True),
                "step_top1_margins": margins,
            }
            (ref / f"{tag}.json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
            summary["cases"].append(info)
            print(tag, ids.shape[1], "prompt tokens ->", new_ids, "min margin %.4f" % min(margins))

        # Beam search (transformers 4.33 semantics through Flamingo.generate).
        beams = []
        for case, shots in [("zeroshot", []), ("twoshot", SHOTS)]:
            prompt = ("".join(f"<image>Output:{c}<|endofchunk|>" for _, c in shots) + "<image>Output:"
                      if shots else "<image>Output:")
            names = [n for n, _ in shots] + [QUERY]
            vision_x = torch.stack([pix[n] for n in names]).unsqueeze(0).unsqueeze(2)
            enc = tokenizer([prompt], return_tensors="pt")
            for lp, early, nret in [(0.0, False, 1), (-2.0, False, 1), (1.0, True, 3), (0.0, "never", 2)]:
                with torch.no_grad():
                    out = model.generate(vision_x, enc["input_ids"], attention_mask=enc["attention_mask"],
                                         max_new_tokens=MAX_NEW_TOKENS, num_beams=3, length_penalty=lp,
                                         early_stopping=early, num_return_sequences=nret,
                                         output_scores=True, return_dict_in_generate=True)
                n_prompt = enc["input_ids"].shape[1]
                beams.append({"case": case, "prompt": prompt, "images": names,
                              "shots": [{"image": n, "caption": c} for n, c in shots],
                              "num_beams": 3, "length_penalty": lp, "early_stopping": early,
                              "num_return_sequences": nret, "max_new_tokens": MAX_NEW_TOKENS,
                              "sequences": [r[n_prompt:].tolist() for r in out.sequences],
                              "sequence_scores": out.sequences_scores.tolist()})
        (ref / f"every{every}_beams.json").write_text(json.dumps(beams, indent=1, ensure_ascii=False))

        # Scoring: log-likelihood of candidates after the 2-shot prompt, through the reference's own
        # loss (labels -100 on the prompt, mean cross-entropy over the candidate's tokens).
        prompt = "".join(f"<image>Output:{c}<|endofchunk|>" for _, c in SHOTS) + "<image>Output:"
        names = [n for n, _ in SHOTS] + [QUERY]
        vision_x = torch.stack([pix[n] for n in names]).unsqueeze(0).unsqueeze(2)
        p_ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
        scores = []
        for cand in CANDIDATES:
            c_ids = torch.tensor([tokenizer(cand, add_special_tokens=False)["input_ids"]])
            ids = torch.cat([p_ids, c_ids], 1)
            labels = ids.clone()
            labels[:, : p_ids.shape[1]] = -100
            with torch.no_grad():
                out = model(vision_x, ids, attention_mask=torch.ones_like(ids), labels=labels)
            lp = torch.log_softmax(out.logits[0, p_ids.shape[1] - 1 : -1], -1)
            tok_lp = lp.gather(1, c_ids[0].unsqueeze(1))[:, 0]
            scores.append({"candidate": cand, "candidate_token_ids": c_ids[0].tolist(),
                           "loss": out.loss.item(), "n_tokens": c_ids.shape[1],
                           "token_logprobs": tok_lp.tolist()})
        (ref / f"every{every}_score.json").write_text(json.dumps(
            {"prompt": prompt, "images": names, "shots": [{"image": n, "caption": c} for n, c in SHOTS],
             "query": QUERY, "candidates": scores}, indent=2, ensure_ascii=False))

    summary["versions"] = {
        "torch": torch.__version__, "numpy": np.__version__,
        "transformers": __import__("transformers").__version__,
        "open_clip": __import__("importlib.metadata").metadata.version("open_clip_torch"),
        "open_flamingo": __import__("importlib.metadata").metadata.version("open_flamingo"),
        "pillow": Image.__version__,
    }
    (ref / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
