#!/usr/bin/env python3
"""Runs the seed's own `Flamingo.post_process` (mmpretrain 1.2.0) on a table of raw model outputs
and records what it returns, for tests/fixtures/reference/post_process.json.

mmpretrain's package import pulls in mmcv; only `flamingo.py` is needed, so it is loaded on its
own with its three intra-package imports (registry, DataSample, two helper modules) replaced by
minimal stand-ins. `post_process` itself runs unchanged, with the fixture tokenizer.

    python tests/reference/post_process_table.py
"""

import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
TOK = next((ROOT / "tests/fixtures/hf/hub/models--anas-awadalla--mpt-1b-redpajama-200b/snapshots").iterdir())

RAW = [
    " A cat lying on a rug.",
    "A cat lying on a rug.<|endofchunk|>",
    " A dog. Output: a second caption",
    'A "quoted" caption',
    '"Fully quoted"',
    "Output: starts with the marker",
    " two Output markers Output here",
    "no marker at all",
    "",
    "   ",
    " trailing spaces   ",
    "\nnewline first",
    " Outputs plural",
    " output lowercase",
    " A cat.\nOutput:",
    " yes",
    " yes Question: what else?",
    " no Answer: maybe",
    " 4 Short Answer: 5",
    " blue, red Question",
    " Questions plural",
    " the Answering machine",
    " question lowercase",
    "Answer first",
    " a, b, c",
    " café ünïcode Output",
]


def load_seed_flamingo():
    import mmengine.model  # noqa: F401  (the real base class)

    class _Registry:
        def register_module(self, *a, **k):
            return (lambda c: c) if not a or not isinstance(a[0], type) else a[0]

    class DataSample:
        pass

    pkg = types.ModuleType("mmpretrain")
    pkg.__path__ = []
    registry = types.ModuleType("mmpretrain.registry")
    registry.MODELS = registry.TOKENIZER = _Registry()
    structures = types.ModuleType("mmpretrain.structures")
    structures.DataSample = DataSample
    flam_pkg = types.ModuleType("mmpretrain.models.multimodal.flamingo")
    flam_pkg.__path__ = []
    modules = types.ModuleType("mmpretrain.models.multimodal.flamingo.modules")
    modules.PerceiverResampler = object
    utils = types.ModuleType("mmpretrain.models.multimodal.flamingo.utils")
    utils.ExtendModule = object
    for m in [pkg, registry, structures, flam_pkg, modules, utils]:
        sys.modules[m.__name__] = m
    import site

    src = next(Path(p) / "mmpretrain/models/multimodal/flamingo/flamingo.py" for p in site.getsitepackages()
               if (Path(p) / "mmpretrain/models/multimodal/flamingo/flamingo.py").exists())
    spec = importlib.util.spec_from_file_location("mmpretrain.models.multimodal.flamingo.flamingo", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Flamingo


def main():
    Flamingo = load_seed_flamingo()
    tok = AutoTokenizer.from_pretrained(str(TOK))
    tok.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    tok.add_special_tokens({"pad_token": "<PAD>"})
    rows = []
    for task in ["caption", "vqa"]:
        this = types.SimpleNamespace(tokenizer=tok, task=task)
        for raw in RAW:
            ids = tok(raw, add_special_tokens=False)["input_ids"]
            out = Flamingo.post_process(this, torch.tensor([ids or [tok.pad_token_id]]), None)[0]
            pred = out.pred_caption if task == "caption" else out.pred_answer
            rows.append({"task": task, "token_ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True),
                         "post_processed": pred})
    out = ROOT / "tests/fixtures/reference/post_process.json"
    out.write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    print(len(rows), "rows ->", out)


if __name__ == "__main__":
    main()
