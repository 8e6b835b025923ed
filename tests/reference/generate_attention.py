#!/usr/bin/env python3
"""Records the attention weights of the reference's forward pass on the tiny 3B-shaped fixture
model (tests/fixtures/hf), for the app's "where it looked" view: every softmax the reference
code computes during `Flamingo.forward` on the 2-shot case (the perceiver's, each gated
cross-attention's and each MosaicGPT self-attention's) is captured as the real code produced it,
by wrapping `torch.softmax` and `Tensor.softmax` for the duration of that one call.

    python tests/reference/generate_attention.py --mosaic-gpt-code /path/to/mpt_redpajama

Writes tests/fixtures/reference/every1_attention.safetensors (the query image's perceiver
weights, every cross- and self-attention layer's weights over the whole prompt).
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_fixtures as g  # noqa: E402


def snapshot(repo):
    folder = g.FIX / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots"
    return next(folder.iterdir())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mosaic-gpt-code", required=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="flamingo-attention-"))
    lm_dir = work / "mpt-1b-redpajama-200b"
    lm_dir.mkdir()
    for f in Path(a.mosaic_gpt_code).glob("*.py"):
        shutil.copy(f, lm_dir / f.name)
    for f in snapshot(g.LM_REPO).iterdir():
        shutil.copy(f, lm_dir / f.name)
    g.register_clip(work)

    from open_flamingo import create_model_and_transforms

    model, _, tokenizer = create_model_and_transforms(
        clip_vision_encoder_path=g.CLIP_NAME,
        clip_vision_encoder_pretrained=None,
        lang_encoder_path=str(lm_dir),
        tokenizer_path=str(lm_dir),
        cross_attn_every_n_layers=1,
        use_local_files=True,
    )
    visual = load_file(str(snapshot(g.CLIP_REPO) / "open_clip_model.safetensors"))
    model.vision_encoder.load_state_dict({k[len("visual."):]: v for k, v in visual.items()})
    ckpt = torch.load(snapshot(g.CKPT_REPO) / "checkpoint.pt", map_location="cpu")
    missing, unexpected = model.load_state_dict(ckpt, strict=False)
    assert not unexpected, unexpected
    model.eval()

    ref = g.FIX / "reference"
    info = json.loads((ref / "every1_twoshot.json").read_text())
    pix = load_file(str(ref / "pixels.safetensors"))
    vision_x = torch.stack([pix[n] for n in info["images"]]).unsqueeze(0).unsqueeze(2)
    enc = tokenizer([info["prompt"]], return_tensors="pt")
    ids = enc["input_ids"]
    assert ids[0].tolist() == info["prompt_token_ids"]

    captured = []
    plain_fn, plain_method = torch.softmax, torch.Tensor.softmax

    def fn(x, *args, **kw):
        y = plain_fn(x, *args, **kw)
        captured.append(y.detach().clone())
        return y

    def method(self, *args, **kw):
        y = plain_method(self, *args, **kw)
        captured.append(y.detach().clone())
        return y

    torch.softmax, torch.Tensor.softmax = fn, method
    try:
        with torch.no_grad():
            logits = model(vision_x, ids, attention_mask=enc["attention_mask"]).logits[0]
    finally:
        torch.softmax, torch.Tensor.softmax = plain_fn, plain_method

    want = load_file(str(ref / "every1_twoshot.safetensors"))["prompt_logits"]
    err = (logits - want).abs().max().item()
    assert err < 1e-4, f"the fixture model did not load as generated: {err}"

    n_img, t = len(info["images"]), ids.shape[1]
    out, cross, self_ = {}, 0, 0
    perceiver = []
    for w in captured:
        if w.dim() == 5:  # [b, heads, T_img, latents, patches + latents]
            perceiver.append(w[0, :, -1].contiguous())  # the query image's
        elif w.shape[-1] == t:
            out[f"self.{self_}"] = w[0].contiguous()
            self_ += 1
        else:
            assert w.shape[-1] % n_img == 0, w.shape
            out[f"cross.{cross}"] = w[0].contiguous()
            cross += 1
    for i, w in enumerate(perceiver):
        out[f"perceiver.{i}"] = w
    print("captured:", {k: tuple(v.shape) for k, v in out.items()})
    save_file(out, str(ref / "every1_attention.safetensors"))


if __name__ == "__main__":
    main()
