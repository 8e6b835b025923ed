#!/usr/bin/env python3
"""Builds tiny random-weight OpenFlamingo models of the other language-model families (GPT-NeoX,
MPT-7B, LLaMA) with the real reference code, writes them as Hugging Face hub caches under the
real repo ids, and records the reference's outputs. The v1 media masking is recorded with
open_flamingo 0.0.2's own code (the v1 release, whose masking mmpretrain copies).

Run it in the pinned reference environment (tests/reference/README.md) after
generate_fixtures.py (it reuses that script's CLIP tower, images and preprocessed pixels):

    python tests/reference/generate_families.py \
        --mpt-code /path/to/Otter/src/otter_ai/models/mpt \
        --neox-tokenizer /path/to/allenai_eleuther-ai-gpt-neox-20b-pii-special.json \
        --of1 /path/to/open_flamingo-0.0.2   # the folder holding its `open_flamingo` package

Everything it writes goes under tests/fixtures/ (hf-neox*, hf-mpt7b*, hf-llama*, and
reference/<family>_*). Deterministic: a rerun writes the same numbers.
"""

import argparse
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import generate_fixtures as gf  # noqa: E402  (write_repo, randomize, prepare_tokenizer, ...)

FIX = gf.FIX
CLIP_REPO = gf.CLIP_REPO
SHOTS = gf.SHOTS
QUERY = gf.QUERY
MAX_NEW_TOKENS = gf.MAX_NEW_TOKENS
CANDIDATES = gf.CANDIDATES

# The seed's zero-shot caption prompt (mmpretrain's flamingo_zeroshot_caption config): two
# text-only demonstrations, then the query.
SEED_ZEROSHOT = ("Output:A child holding a flowered umbrella and petting a yak.<|endofchunk|>"
                 "Output:The child is holding a brush close to his mouth.<|endofchunk|><image>Output:")

NEOX_CFG = dict(
    vocab_size=50432, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
    intermediate_size=64, hidden_act="gelu", rotary_pct=1.0, rotary_emb_base=10000,
    max_position_embeddings=2048, layer_norm_eps=1e-5, use_parallel_residual=False,
    tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, use_cache=True,
)
MPT_CFG = {
    "architectures": ["MPTForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig",
                 "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
    "model_type": "mpt", "d_model": 24, "n_heads": 6, "n_layers": 4, "expansion_ratio": 4,
    "max_seq_len": 2048, "vocab_size": 50432, "resid_pdrop": 0.0, "emb_pdrop": 0.0,
    "learned_pos_emb": True,
    "attn_config": {"attn_type": "multihead_attention", "attn_pdrop": 0.0, "attn_impl": "torch",
                    "qk_ln": False, "clip_qkv": None, "softmax_scale": None,
                    "prefix_lm": False, "attn_uses_sequence_id": False, "alibi": True,
                    "alibi_bias_max": 8},
    "init_device": "cpu", "logit_scale": None, "no_bias": True, "verbose": 0,
    "embedding_fraction": 1.0, "norm_type": "low_precision_layernorm", "use_cache": False,
    "init_config": {"name": "kaiming_normal_", "fan_mode": "fan_in", "init_nonlinearity": "relu",
                    "init_div_is_residual": True, "emb_init_std": None,
                    "emb_init_uniform_lim": None, "init_std": None, "init_gain": 0.0},
    "tokenizer_name": "EleutherAI/gpt-neox-20b",
}
LLAMA_CFG = dict(
    vocab_size=None, hidden_size=32, intermediate_size=88, num_hidden_layers=4,
    num_attention_heads=4, hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6,
    bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
)

FAMILIES = {
    "neox": dict(ckpt_repo="openflamingo/OpenFlamingo-4B-vitl-rpj3b",
                 lm_repo="togethercomputer/RedPajama-INCITE-Base-3B-v1", every=(2, 1)),
    "mpt7b": dict(ckpt_repo="openflamingo/OpenFlamingo-9B-vitl-mpt7b",
                  lm_repo="anas-awadalla/mpt-7b", every=(4, 1)),
    "llama": dict(ckpt_repo="openflamingo/OpenFlamingo-9B-deprecated",
                  lm_repo="luodian/llama-7b-hf", every=(4, 1)),
}


def rev(tag):
    return hashlib.sha1(tag.encode()).hexdigest()


def round_f16(module, names):
    """Rounds the named parameters to f16 values (kept as f32), so that a file storing them in
    f16 holds exactly what the reference computes with."""
    with torch.no_grad():
        for n, p in module.named_parameters():
            if any(k in n for k in names):
                p.copy_(p.half().float())


def train_sentencepiece(out_dir):
    """A small LLaMA-style SentencePiece BPE model (byte fallback, digits split, dummy prefix,
    no normalisation), trained on English text, with LLaMA's <unk>/<s>/</s> ids 0/1/2."""
    import sentencepiece as spm
    text = []
    for n, c in SHOTS:
        text.append(c)
    text += [c for c in CANDIDATES]
    text += [SEED_ZEROSHOT.replace("<|endofchunk|>", " ").replace("<image>", " ")]
    this = importlib.import_module("this")
    plain = "".join(this.d.get(c, c) for c in this.s)
    text += plain.split("\n")
    for mod in ["json", "argparse", "pathlib", "shutil", "tempfile"]:
        doc = importlib.import_module(mod).__doc__ or ""
        text += [l for l in doc.split("\n") if l.strip()]
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(t for t in text if t.strip()))
    # Relative paths: the model file records them, and a rerun must write the same bytes.
    here = os.getcwd()
    os.chdir(out_dir)
    spm.SentencePieceTrainer.train(
        input="corpus.txt", model_prefix="tokenizer", vocab_size=600,
        model_type="bpe", character_coverage=1.0, byte_fallback=True, split_digits=True,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, allow_whitespace_only_pieces=True,
        num_threads=1, seed_sentencepiece_size=10000, train_extremely_large_corpus=False,
        minloglevel=2)
    os.chdir(here)
    return out_dir / "tokenizer.model"


def build_lm(family, work, args, seed):
    """The LM repo folder with random weights, saved as the real repo has it."""
    from transformers import (AutoConfig, AutoModelForCausalLM, GPTNeoXConfig,
                              GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM)
    d = work / f"lm-{family}"
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if family == "neox":
        gf.prepare_tokenizer(args.neox_tokenizer, d)
        lm = GPTNeoXForCausalLM(GPTNeoXConfig(**NEOX_CFG))
        gf.randomize(lm, gen)
        round_f16(lm, ["embed_in", "embed_out"])
        lm.half().save_pretrained(str(d), safe_serialization=False)
    elif family == "mpt7b":
        gf.prepare_tokenizer(args.neox_tokenizer, d)
        for f in Path(args.mpt_code).glob("*.py"):
            shutil.copy(f, d / f.name)
        (d / "config.json").write_text(json.dumps(MPT_CFG, indent=2))
        cfg = AutoConfig.from_pretrained(str(d), trust_remote_code=True)
        lm = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
        gf.randomize(lm, gen)
        lm.to(torch.bfloat16).save_pretrained(str(d), safe_serialization=False,
                                              max_shard_size="2MB")
        saved = json.loads((d / "config.json").read_text())
        saved["auto_map"] = MPT_CFG["auto_map"]
        saved["_name_or_path"] = FAMILIES[family]["lm_repo"]
        (d / "config.json").write_text(json.dumps(saved, indent=2))
    else:
        model = train_sentencepiece(work)
        shutil.copy(model, d / "tokenizer.model")
        (d / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
            "model_max_length": 2048}))
        (d / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
        import sentencepiece as spm
        vocab = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")).vocab_size()
        cfg = dict(LLAMA_CFG, vocab_size=vocab)
        lm = LlamaForCausalLM(LlamaConfig(**cfg))
        gf.randomize(lm, gen)
        lm.half().save_pretrained(str(d), safe_serialization=False, max_shard_size="100KB")
    for f in d.glob("*.py"):
        if family != "mpt7b":
            f.unlink()
    return d


def hub_files(d):
    """The files of an LM folder that the real repo has (no remote code, no corpus)."""
    keep = {}
    for f in sorted(d.iterdir()):
        if f.suffix in (".json", ".bin", ".model", ".safetensors") and f.name != "generation_config.json":
            keep[f.name] = f
    return keep


def clip_state():
    st = load_file(str(FIX / "hf" / "hub" / ("models--" + CLIP_REPO.replace("/", "--")) /
                       "snapshots" / rev("clip") / "open_clip_model.safetensors"))
    return {k[len("visual."):]: v for k, v in st.items()}


def build_flamingo(family, lm_dir, every, seed):
    from open_flamingo import create_model_and_transforms
    torch.manual_seed(seed)
    model, image_processor, tokenizer = create_model_and_transforms(
        clip_vision_encoder_path=gf.CLIP_NAME, clip_vision_encoder_pretrained=None,
        lang_encoder_path=str(lm_dir), tokenizer_path=str(lm_dir),
        cross_attn_every_n_layers=every, use_local_files=True)
    model.lang_encoder.float()
    model.vision_encoder.load_state_dict(clip_state())
    gen = torch.Generator().manual_seed(seed + 1)
    gf.randomize(model.perceiver, gen)
    gf.randomize(model.lang_encoder.gated_cross_attn_layers, gen)
    with torch.no_grad():
        emb = model.lang_encoder.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=gen).half().float())
        out = model.lang_encoder.get_output_embeddings()
        if family == "neox":
            out.weight.copy_(torch.randn(out.weight.shape, generator=gen).half().float() * 0.5)
        if family == "llama":
            # The rows of the added tokens, which the real checkpoint does not hold: zero, as
            # this project documents (docs/openflamingo.md §6.3).
            out.weight[-3:] = 0.0
    # Everything the checkpoint holds is stored in f16 (small fixtures): the reference
    # computes with the same rounded values.
    round_f16(model.perceiver, [""])
    round_f16(model.lang_encoder.gated_cross_attn_layers, [""])
    model.eval()
    return model, image_processor, tokenizer


def checkpoint_of(family, model):
    """What training saved (open_flamingo's own filter), stored in f16 (the values are f16's
    already, see build_flamingo)."""
    ckpt = gf.trainable_checkpoint(model)
    for k in list(ckpt):
        if ckpt[k].is_floating_point():
            ckpt[k] = ckpt[k].half()
    if family == "neox":
        # The base 4B file also held the decoder's buffers (older transformers): a causal mask
        # and the rotary frequencies, which a loader must ignore.
        for i in range(NEOX_CFG["num_hidden_layers"]):
            p = f"lang_encoder.gpt_neox.layers.{i}.decoder_layer.attention"
            ckpt[f"{p}.bias"] = torch.tril(torch.ones(8, 8, dtype=torch.bool)).view(1, 1, 8, 8)
            ckpt[f"{p}.rotary_emb.inv_freq"] = torch.ones(4)
    return ckpt


def mmpretrain_adapter(ckpt):
    """The same weights in mmpretrain's converted-adapter layout (docs/openflamingo.md §6.2):
    only the keys its load hook keeps, nested under `state_dict` as mmengine saves, with the
    rotary buffers its pattern also keeps."""
    import re
    keep = re.compile(r"^perceiver|lang_encoder.*embed_tokens|lang_encoder.*gated_cross_attn_layer(s)?|lang_encoder.*rotary_emb")
    state = {k: v for k, v in ckpt.items() if keep.search(k) and ".gated_cross_attn_layers." not in k}
    for i in range(LLAMA_CFG["num_hidden_layers"]):
        state[f"lang_encoder.model.layers.{i}.decoder_layer.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    return {"meta": {"mmpretrain_version": "1.2.0"}, "state_dict": state}


def prompt_text(shots):
    if shots:
        return "".join(f"<image>Output:{c}<|endofchunk|>" for _, c in shots) + "<image>Output:"
    return "<image>Output:"


def pixels_of(names, pix):
    return torch.stack([pix[n] for n in names]).unsqueeze(0).unsqueeze(2)


def columns_of(*logits, sample=2048, top=32):
    """The vocabulary columns kept of logits [.., V]: a fixed random sample plus each row's
    top entries (keeps the fixtures small: a 50k vocabulary's logits of every position would be
    megabytes per case)."""
    v = logits[0].shape[-1]
    g = torch.Generator().manual_seed(1234)
    keep = set(torch.randperm(v, generator=g)[: min(sample, v)].tolist())
    for l in logits:
        keep.update(l.reshape(-1, v).topk(min(top, v), dim=-1).indices.flatten().tolist())
    return torch.tensor(sorted(keep), dtype=torch.int64)


def record_cases(tag, model, tokenizer, pix, ref, decoder=None):
    decoder = decoder or tokenizer
    summary = []
    for case, shots in [("zeroshot", []), ("twoshot", SHOTS)]:
        prompt = prompt_text(shots)
        names = [n for n, _ in shots] + [QUERY]
        vision_x = pixels_of(names, pix)
        enc = tokenizer([prompt], return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            latents = model.perceiver(model.vision_encoder(vision_x[0, :, 0])[1].unsqueeze(0).unsqueeze(2))
            prompt_logits = model(vision_x, ids, attention_mask=mask).logits[0]
            gen = model.generate(vision_x, ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS,
                                 num_beams=1, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True)
        new_ids = gen.sequences[0, ids.shape[1]:].tolist()
        scores = torch.stack([s[0] for s in gen.scores])
        top2 = scores.topk(2, dim=-1).values
        margins = (top2[:, 0] - top2[:, 1]).tolist()
        cols = columns_of(prompt_logits, scores)
        save_file({"perceiver": latents[0].contiguous(), "columns": cols,
                   "prompt_logits": prompt_logits[:, cols].contiguous(),
                   "step_logits": scores[:, cols].contiguous()}, str(ref / f"{tag}_{case}.safetensors"))
        info = {"case": f"{tag}_{case}", "prompt": prompt, "prompt_token_ids": ids[0].tolist(),
                "images": names, "shots": [{"image": n, "caption": c} for n, c in shots],
                "query": QUERY, "max_new_tokens": MAX_NEW_TOKENS, "generated_token_ids": new_ids,
                "generated_text": decoder.decode(new_ids, skip_special_tokens=True),
                "step_top1_margins": margins}
        (ref / f"{tag}_{case}.json").write_text(json.dumps(info, indent=2, ensure_ascii=False))
        summary.append(info)
        print(tag, case, ids.shape[1], "prompt tokens ->", new_ids, "min margin %.4f" % min(margins))
    beams = []
    for case, shots in [("zeroshot", []), ("twoshot", SHOTS)]:
        prompt = prompt_text(shots)
        names = [n for n, _ in shots] + [QUERY]
        vision_x = pixels_of(names, pix)
        enc = tokenizer([prompt], return_tensors="pt")
        for lp, early, nret in [(0.0, False, 1), (-2.0, False, 1), (1.0, True, 3)]:
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
    (ref / f"{tag}_beams.json").write_text(json.dumps(beams, indent=1, ensure_ascii=False))
    prompt = prompt_text(SHOTS)
    names = [n for n, _ in SHOTS] + [QUERY]
    vision_x = pixels_of(names, pix)
    p_ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
    scores = []
    for cand in CANDIDATES:
        c_ids = torch.tensor([tokenizer(cand, add_special_tokens=False)["input_ids"]])
        ids = torch.cat([p_ids, c_ids], 1)
        labels = ids.clone()
        labels[:, : p_ids.shape[1]] = -100
        with torch.no_grad():
            out = model(vision_x, ids, attention_mask=torch.ones_like(ids), labels=labels)
        lp = torch.log_softmax(out.logits[0, p_ids.shape[1] - 1: -1], -1)
        tok_lp = lp.gather(1, c_ids[0].unsqueeze(1))[:, 0]
        scores.append({"candidate": cand, "candidate_token_ids": c_ids[0].tolist(),
                       "loss": out.loss.item(), "n_tokens": c_ids.shape[1],
                       "token_logprobs": tok_lp.tolist()})
    (ref / f"{tag}_score.json").write_text(json.dumps(
        {"prompt": prompt, "images": names, "shots": [{"image": n, "caption": c} for n, c in SHOTS],
         "query": QUERY, "candidates": scores}, indent=2, ensure_ascii=False))
    return summary


def load_of1(path):
    """open_flamingo 0.0.2's package under the name `open_flamingo_v1` (it shares its name
    with 2.0.1)."""
    src = Path(path) / "open_flamingo"
    spec = importlib.util.spec_from_file_location("open_flamingo_v1", src / "__init__.py",
                                                  submodule_search_locations=[str(src)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["open_flamingo_v1"] = mod
    spec.loader.exec_module(mod)
    return importlib.import_module("open_flamingo_v1.src.factory")


def record_v1(of1_factory, v2_model, lm_dir, pix, ref, tokenizer_v2, decoder):
    """The v1 masking (attend_previous=False, media recomputed each step) with open_flamingo
    0.0.2's own modules and the same weights, on the seed's zero-shot and few-shot prompts."""
    torch.manual_seed(0)
    model, _, tokenizer = of1_factory.create_model_and_transforms(
        clip_vision_encoder_path=gf.CLIP_NAME, clip_vision_encoder_pretrained=None,
        lang_encoder_path=str(lm_dir), tokenizer_path=str(lm_dir),
        cross_attn_every_n_layers=4, use_local_files=True)
    state = v2_model.state_dict()
    # OF1 keeps the whole CLIP model as `vision_encoder`; the rest has the same names.
    mapped = {}
    for k, v in state.items():
        if k.startswith("vision_encoder."):
            mapped["vision_encoder.visual." + k[len("vision_encoder."):]] = v
        elif ".old_decoder_blocks." in k or ".gated_cross_attn_layers." in k:
            continue
        else:
            mapped[k] = v
    missing, _ = model.load_state_dict(mapped, strict=False)
    # Only CLIP's text tower (unused) and the alias names of tensors loaded under their
    # other names may be missing.
    real = [m for m in missing
            if not (m.startswith("vision_encoder.") and ".visual." not in m)
            and ".gated_cross_attn_layers." not in m]
    assert not real, real
    model.eval()
    assert model.lang_encoder.use_media_placement_augmentation is False
    cases = []
    for case, prompt, names in [
        ("zeroshot", SEED_ZEROSHOT, [QUERY]),
        ("twoshot", prompt_text(SHOTS), [n for n, _ in SHOTS] + [QUERY]),
    ]:
        vision_x = pixels_of(names, pix)
        enc = tokenizer([prompt], return_tensors="pt")
        assert enc["input_ids"].tolist() == tokenizer_v2([prompt], return_tensors="pt")["input_ids"].tolist()
        with torch.no_grad():
            logits = model(vision_x, enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0]
            # What open_flamingo 0.0.2's `Flamingo.generate` does, with the step scores kept:
            # condition the layers on the images, then the LM's own generate, whose every step
            # recomputes the media locations from that step's tokens.
            model._encode_vision_x(vision_x=vision_x)
            gen = model.lang_encoder.generate(
                enc["input_ids"], attention_mask=enc["attention_mask"],
                eos_token_id=model.eoc_token_id, max_new_tokens=MAX_NEW_TOKENS, num_beams=1,
                output_scores=True, return_dict_in_generate=True)
            model.lang_encoder.clear_conditioned_layers()
        ids = enc["input_ids"][0].tolist()
        new_ids = gen.sequences[0, len(ids):].tolist()
        scores = torch.stack([s[0] for s in gen.scores])
        top2 = scores.topk(2, dim=-1).values
        tag = f"llama_v1_{case}"
        cols = columns_of(logits, scores)
        save_file({"columns": cols, "prompt_logits": logits[:, cols].contiguous(),
                   "step_logits": scores[:, cols].contiguous()}, str(ref / f"{tag}.safetensors"))
        (ref / f"{tag}.json").write_text(json.dumps({
            "case": tag, "prompt": prompt, "prompt_token_ids": ids, "images": names,
            "max_new_tokens": MAX_NEW_TOKENS, "generated_token_ids": new_ids,
            "generated_text": decoder.decode(new_ids, skip_special_tokens=True),
            "step_top1_margins": (top2[:, 0] - top2[:, 1]).tolist()}, indent=2, ensure_ascii=False))
        cases.append(tag)
        print(tag, len(ids), "prompt tokens ->", new_ids)
    return cases


def slow_llama(lm_dir):
    """The seed's tokenizer for LLaMA: transformers' slow `LlamaTokenizer` (legacy behaviour),
    with OpenFlamingo's tokens added as the factories add them."""
    from transformers import LlamaTokenizer
    slow = LlamaTokenizer.from_pretrained(str(lm_dir))
    slow.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    slow.add_special_tokens({"pad_token": "<PAD>"})
    return slow


def record_tokenizer(tokenizer, ref, name, lm_dir):
    """Token ids of texts around the special tokens, as the reference's tokenizer gives them.
    For LLaMA the seed's (mmpretrain's) slow `LlamaTokenizer` is the reference; open_flamingo's
    factories load the fast one: both must agree here."""
    texts = [
        "<image>Output:", "<image>Output:A cat.<|endofchunk|><image>Output:",
        SEED_ZEROSHOT, " two  spaces", "a\nb", "Question:What is it? Short Answer:",
        "<image>Question:How many? Short answer:4<|endofchunk|>\n<image>Question:Why? Short answer:",
        "Ünïcödé ✓ 123 4567", "<|endofchunk|><|endofchunk|>", "x<image>y", "",
    ]
    if name == "llama":
        texts += [
            "  leading and trailing  ", "tabs\tand\nnewlines\n\n", "emoji 🦩 and ü", "x <image> y",
            "<image> Output: a cat <|endofchunk|> <image>", "<s>literal</s> <unk>", "007 1984 3.14",
            "UPPER lower MiXeD", "a\u00a0b\u2003c", "\u0085x\x1cy", "ẞ ß ﬁ", "日本語のテキスト",
        ]
        slow = slow_llama(lm_dir)
        for t in texts:
            a, b = slow(t)["input_ids"], tokenizer(t)["input_ids"]
            print("slow/fast", "same" if a == b else f"DIFFER {a} {b}", repr(t))
        tokenizer = slow
    rows = [{"text": t, "ids": tokenizer(t)["input_ids"],
             "ids_plain": tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
    decoded = [{"ids": r["ids"], "text": tokenizer.decode(r["ids"], skip_special_tokens=True)}
               for r in rows]
    # Id sequences of every kind (pieces, bytes, special tokens), as generation gives them.
    g = torch.Generator().manual_seed(99)
    n = len(tokenizer)
    for k in range(60):
        length = int(torch.randint(1, 14, (1,), generator=g))
        ids = torch.randint(0, n, (length,), generator=g).tolist()
        if k % 3 == 0:
            ids = [i if i < n - 3 else 5 for i in ids]
        decoded.append({"ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=True)})
    (ref / f"{name}_tokenizer.json").write_text(json.dumps(
        {"encode": rows, "decode": decoded}, indent=1, ensure_ascii=False))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpt-code", required=True)
    ap.add_argument("--neox-tokenizer", required=True)
    ap.add_argument("--of1", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=list(FAMILIES))
    args = ap.parse_args()
    torch.set_num_threads(2)
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    ref = FIX / "reference"
    pix = load_file(str(ref / "pixels.safetensors"))
    work = Path(tempfile.mkdtemp(prefix="flamingo-families-"))
    gf.register_clip(work)
    of1 = load_of1(args.of1)
    versions = {}
    for family in args.only:
        spec = FAMILIES[family]
        lm_dir = build_lm(family, work, args, args.seed + 10)
        for i, every in enumerate(spec["every"]):
            name = f"hf-{family}" if i == 0 else f"hf-{family}-x{every}"
            cache = FIX / name / "hub"
            shutil.rmtree(FIX / name, ignore_errors=True)
            cache.mkdir(parents=True)
            model, _, tokenizer = build_flamingo(family, lm_dir, every, args.seed + 20 + every)
            out = work / f"{family}-{every}"
            out.mkdir()
            ckpt = checkpoint_of(family, model)
            torch.save(ckpt, out / "checkpoint.pt")
            if family == "llama" and i == 0:
                torch.save(mmpretrain_adapter(ckpt), ref / "llama_mmpretrain_adapter.pth")
            gf.write_repo(cache, spec["ckpt_repo"], {"checkpoint.pt": out / "checkpoint.pt"},
                          rev(f"{family}-ckpt-{every}"))
            clip = "models--" + CLIP_REPO.replace("/", "--")
            os.symlink(os.path.join("..", "..", "hf", "hub", clip), cache / clip)
            lm = "models--" + spec["lm_repo"].replace("/", "--")
            if i == 0:
                gf.write_repo(cache, spec["lm_repo"], hub_files(lm_dir), rev(f"{family}-lm"))
                record_tokenizer(tokenizer, ref, family, lm_dir)
            else:
                os.symlink(os.path.join("..", "..", f"hf-{family}", "hub", lm), cache / lm)
            tag = f"{family}_every{every}"
            decoder = slow_llama(lm_dir) if family == "llama" else None
            record_cases(tag, model, tokenizer, pix, ref, decoder)
            if family == "llama" and every == 4:
                record_v1(of1, model, lm_dir, pix, ref, tokenizer, decoder)
    versions["transformers"] = __import__("transformers").__version__
    versions["torch"] = torch.__version__
    (ref / "families_summary.json").write_text(json.dumps(
        {"versions": versions, "families": {k: {**v, "every": list(v["every"])} for k, v in FAMILIES.items()}},
        indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
