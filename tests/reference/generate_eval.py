#!/usr/bin/env python3
"""Reference outputs for evaluation: CIDEr-D and the PTB tokenisation from pycocoevalcap, VQA
accuracy from the official evaluation (open_flamingo's copy, `open_flamingo/eval/vqa_metric.py`),
and RICES embeddings and top-k order from open_flamingo's `rices.py` on the tiny CLIP tower.

Run it in the reference environment (README.md) after generate_fixtures.py, with Java on PATH
(pycocoevalcap's PTB tokenizer is the Stanford CoreNLP jar it ships):

    HF_HUB_OFFLINE=1 /tmp/pyref/bin/python tests/reference/generate_eval.py

Writes tests/fixtures/eval/: cider.json, vqa.json, rices.json, and the labelled example folder
library/ (small images made from the test photos, with captions.jsonl) and queries/.
"""

import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "eval"

# --- Caption corpus: COCO-like sentences with the punctuation people write ---------------------
SUBJECTS = ["a man", "a woman", "two dogs", "a black cat", "an old bus", "three kids", "a young girl",
            "a brown horse", "the chef", "a small boat", "a red double-decker bus", "some people",
            "a baseball player", "a pizza", "a plate of food", "the giraffe", "a large elephant"]
VERBS = ["is sitting on", "stands next to", "rides", "is eating", "looks at", "lies on", "walks by",
         "is parked near", "holds", "plays with", "is covered with", "waits beside"]
OBJECTS = ["a wooden bench", "the table", "a surfboard", "a frisbee", "the street", "a grassy field",
           "a laptop computer", "some broccoli", "a kitchen counter", "the beach", "a tall tree",
           "two umbrellas", "a bowl of fruit", "the snow", "a t-shirt", "an orange"]
TAILS = ["", ".", " .", " in the park.", ", smiling.", " at night", " (in the rain)", "!",
         " on a sunny day.", " while it's raining.", " that isn't moving.", " -- wow", "...",
         " near 3 cars.", ' called "Max".', " at 10:30 pm.", " for $3.50.", " of the U.S. team."]


def sentence(rng, subject=None, obj=None):
    s = subject or rng.choice(SUBJECTS)
    text = f"{s} {rng.choice(VERBS)} {obj or rng.choice(OBJECTS)}{rng.choice(TAILS)}"
    if rng.random() < 0.6:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.1:
        text = "  " + text + " "
    if rng.random() < 0.05:
        text = text.replace("'s", "s'")
    return text


def cider_fixture(rng):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    images = []
    for i in range(60):
        subj, obj = rng.choice(SUBJECTS), rng.choice(OBJECTS)
        refs = [sentence(rng, subj if rng.random() < 0.7 else None, obj if rng.random() < 0.6 else None)
                for _ in range(5)]
        kind = i % 6
        if kind == 0:
            pred = refs[rng.randrange(5)]                       # a reference itself
        elif kind == 1:
            words = refs[0].split()
            pred = " ".join(w for w in words if rng.random() < 0.7)  # words dropped
        elif kind == 2:
            words = refs[1].split()
            rng.shuffle(words)
            pred = " ".join(words)                              # shuffled
        elif kind == 3:
            pred = sentence(rng)                                # unrelated
        elif kind == 4:
            pred = f"{subj} {subj} {subj}"                      # degenerate repetition
        else:
            pred = "" if i % 12 == 5 else f"{subj} {rng.choice(VERBS)}"  # empty or short
        images.append({"id": i, "refs": refs, "prediction": pred})

    tok = PTBTokenizer()
    gts = tok.tokenize({im["id"]: [{"caption": r} for r in im["refs"]] for im in images})
    res = tok.tokenize({im["id"]: [{"caption": im["prediction"]}] for im in images})
    score, scores = Cider().compute_score(gts, res)
    for im, s in zip(images, scores):
        im["refs_tokenized"] = gts[im["id"]]
        im["prediction_tokenized"] = res[im["id"]][0]
        im["cider"] = float(s)
    # A sample of single sentences with the harder PTB cases, tokenised by the Java tokenizer.
    extra = ["A man's dog, isn't it? \"Hello\" (world) [x] {y}",
             "The colour of the theatre is grey... and U.S. Mr. Smith's cat.",
             "It costs $3.50 or 1,000 dollars; 3/4 of a t-shirt -- wow!",
             "I can't, won't, don't; they're, we've, I'd, you'll, I'm at 1 o'clock.",
             "An e-mail & a web-site ok.", "Two dogs play-fight on the grass.A cat sat.",
             "'Quoted' words, cannot gonna wanna.", "A café — naïve résumé at 10:30 pm",
             "Children's toys are on the kids' bed.", "A man (wearing a hat) rides a horse..."]
    ex = tok.tokenize({i: [{"caption": s}] for i, s in enumerate(extra)})
    return {
        "source": "pycocoevalcap 1.2: PTBTokenizer (stanford-corenlp-3.4.1) and Cider (n=4, sigma=6)",
        "cider": float(score),
        "images": images,
        "ptb_extra": [{"text": s, "tokenized": ex[i][0]} for i, s in enumerate(extra)],
    }


def vqa_fixture(rng):
    sys.path.insert(0, str(Path(__import__("open_flamingo").__file__).parent / "eval"))
    from vqa_metric import VQA, VQAEval

    cases = [
        ("How many dogs are there?", ["2"] * 6 + ["two"] * 3 + ["3"], ["two", "2", "Two.", "3", "three dogs", "4"]),
        ("What is the man holding?", ["an umbrella"] * 4 + ["umbrella"] * 4 + ["the umbrella", "parasol"],
         ["umbrella", "An umbrella", "the umbrella!", "parasol", "a parasol.", "rain"]),
        ("Is it raining?", ["yes"] * 9 + ["no"], ["yes", "Yes.", "yes,", "no", "yes yes", "maybe"]),
        ("What time is it?", ["10:30"] * 5 + ["10:30 pm"] * 3 + ["night", "evening"],
         ["10:30", "10:30 pm", "10.30", "night", "Night.", "noon"]),
        ("What does the sign say?", ["dont walk"] * 4 + ["don't walk"] * 4 + ["stop", "do not walk"],
         ["dont walk", "don't walk", "Don't Walk!", "do not walk", "stop", "walk"]),
        ("What color is the cat?", ["black and white"] * 5 + ["black/white"] * 2 + ["black", "white", "gray"],
         ["black and white", "black/white", "black & white", "black", "Black, white", "grey"]),
        ("How much does it cost?", ["$3.50"] * 4 + ["3.50"] * 4 + ["3,50", "cheap"],
         ["$3.50", "3.50", "3,50", "$3", "three fifty", "3.5"]),
        ("Whose bag is it?", ["woman's"] * 5 + ["womans"] * 3 + ["hers", "lady's"],
         ["woman's", "womans", "the woman's", "hers", "lady's", "mans"]),
        ("Where is the ball?", ["in the air"] * 6 + ["air"] * 2 + ["sky", "up"],
         ["in the air", "air", "In air.", "the sky", "up", "ground"]),
        ("How many people?", ["none"] * 3 + ["0"] * 3 + ["zero"] * 2 + ["no one", "nobody"],
         ["0", "none", "zero", "no one", "nobody", "1"]),
        ("What sport is this?", ["tennis"] * 10, ["tennis", "Tennis", "tennis.", "(tennis)", "ping-pong", "tenis"]),
        ("What is on the plate?", ["pizza"] * 3 + ["a pizza"] * 3 + ["pizza slice", "food", "cheese pizza", "pizza"],
         ["pizza", "a pizza", "pizza slice", "the food", "cheese-pizza", "pizza; cheese"]),
        ("What is written?", ["hello world"] * 4 + ["hello, world"] * 3 + ["hello"] * 3,
         ["hello world", "hello, world", "hello,world", "hello . world", "Hello world...", "hi"]),
        ("What number is on the bus?", ["12"] * 5 + ["twelve"] * 2 + ["1,200", "12.5", "120"],
         ["12", "twelve", "1,200", "12.5", "12.", "one two"]),
    ]
    questions, annotations, results = [], [], []
    qid = 0
    for (q, answers, preds) in cases:
        for pred in preds:
            qid += 1
            questions.append({"image_id": qid, "question": q, "question_id": qid})
            annotations.append({
                "question_id": qid, "image_id": qid, "question_type": "what", "answer_type": "other",
                "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                            for j, a in enumerate(answers)]})
            results.append({"question_id": qid, "answer": pred})
    tmp = OUT / "_vqa_tmp"
    tmp.mkdir(exist_ok=True)
    meta = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
            "data_subtype": "val2014", "license": {}}
    (tmp / "q.json").write_text(json.dumps({"questions": questions, **meta}))
    (tmp / "a.json").write_text(json.dumps({"annotations": annotations}))
    (tmp / "r.json").write_text(json.dumps(results))
    vqa = VQA(str(tmp / "a.json"), str(tmp / "q.json"))
    res = vqa.loadRes(str(tmp / "r.json"), str(tmp / "q.json"))
    ev = VQAEval(vqa, res, n=12)
    ev.evaluate()
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    items = []
    for qst, ann, r in zip(questions, annotations, results):
        items.append({"question_id": qst["question_id"], "question": qst["question"],
                      "answers": [a["answer"] for a in ann["answers"]], "prediction": r["answer"],
                      "accuracy": ev.evalQA[qst["question_id"]] / 100.0})
    return {"source": "open_flamingo 2.0.1 eval/vqa_metric.py (VQAEval, n=12)",
            "overall": ev.accuracy["overall"] / 100.0, "items": items}


# --- RICES ----------------------------------------------------------------------------------
def make_images():
    photos = FIX / "images"
    base = {n: Image.open(photos / n).convert("RGB") for n in
            ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]}
    lib = OUT / "library"
    qdir = OUT / "queries"
    lib.mkdir(parents=True, exist_ok=True)
    qdir.mkdir(parents=True, exist_ok=True)

    def small(im):
        im = im.copy()
        im.thumbnail((128, 128), Image.BICUBIC)
        return im

    variants = {
        "cat.png": base["chelsea.png"],
        "cat_flipped.png": ImageOps.mirror(base["chelsea.png"]),
        "cat_grey.png": ImageOps.grayscale(base["chelsea.png"]).convert("RGB"),
        "coffee.png": base["coffee.png"],
        "coffee_crop.png": base["coffee.png"].crop((100, 50, 500, 350)),
        "astronaut.png": base["astronaut.png"],
        "astronaut_face.png": base["astronaut.png"].crop((150, 20, 350, 220)),
        "rocket.png": base["rocket.jpg"],
        "rocket_sky.png": base["rocket.jpg"].crop((0, 0, 300, 200)),
        "coffee_dark.png": base["coffee.png"].point(lambda v: v // 2),
    }
    captions = {
        "cat.png": ["A cat lying on a rug.", "An orange tabby cat resting."],
        "cat_flipped.png": ["A tabby cat looks to the left.", "A cat on a carpet."],
        "cat_grey.png": ["A black and white photo of a cat."],
        "coffee.png": ["A cup of coffee on a table.", "Coffee in a white cup with a saucer."],
        "coffee_crop.png": ["Close-up of a coffee cup."],
        "astronaut.png": ["An astronaut in an orange suit.", "A woman astronaut poses with a flag."],
        "astronaut_face.png": ["A smiling astronaut."],
        "rocket.png": ["A rocket on the launch pad.", "A rocket ready to launch."],
        "rocket_sky.png": ["The top of a rocket against the sky."],
        "coffee_dark.png": ["A dim photo of a coffee cup."],
    }
    names = list(variants)
    for n in names:
        small(variants[n]).save(lib / n)
    with open(lib / "captions.jsonl", "w") as f:
        for n in names:
            f.write(json.dumps({"file": n, "captions": captions[n]}) + "\n")
    queries = {
        "cat_query.png": ImageOps.mirror(base["chelsea.png"].crop((40, 0, 451, 300))),
        "rocket_query.png": base["rocket.jpg"].crop((50, 0, 400, 427)),
        "astronaut_query.png": ImageOps.mirror(base["astronaut.png"]).crop((0, 0, 400, 400)),
    }
    for n, im in queries.items():
        small(im).save(qdir / n)
    return names, list(queries)


def rices_fixture():
    import open_clip

    names, queries = make_images()
    cfg = json.loads((next((FIX / "hf" / "hub" / "models--timm--vit_large_patch14_clip_224.openai"
                            / "snapshots").iterdir()) / "open_clip_config.json").read_text())
    cfg_path = OUT / "_tiny.json"
    cfg_path.write_text(json.dumps(cfg["model_cfg"]))
    open_clip.add_model_config(str(cfg_path))
    cfg_path.unlink()
    weights = next((FIX / "hf" / "hub" / "models--timm--vit_large_patch14_clip_224.openai"
                    / "snapshots").iterdir()) / "open_clip_model.safetensors"
    from safetensors.torch import load_file

    def create(name, pretrained=None, cache_dir=None):
        model, _, preprocess = open_clip.create_model_and_transforms("_tiny", pretrained=None)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        assert not unexpected and all(not k.startswith("visual.") for k in missing)
        return model, None, preprocess

    sys.path.insert(0, str(Path(__import__("open_flamingo").__file__).parent / "eval"))
    import rices as rices_mod
    rices_mod.open_clip = types.SimpleNamespace(create_model_and_transforms=create)

    dataset = [{"image": Image.open(OUT / "library" / n).convert("RGB"), "file": n} for n in names]
    r = rices_mod.RICES(dataset, "cpu", batch_size=4, vision_encoder_path="_tiny")
    qimgs = [Image.open(OUT / "queries" / q).convert("RGB") for q in queries]
    with torch.no_grad():
        qinputs = torch.stack([r.image_processor(im) for im in qimgs])
        qfeat = r.model.encode_image(qinputs)
        qfeat = qfeat / qfeat.norm(dim=-1, keepdim=True)
    found = r.find(qimgs, 4)
    return {
        "source": "open_flamingo 2.0.1 eval/rices.py (RICES, encode_image normalised) on open_clip 2.20",
        "library": names,
        "library_features": r.features.tolist(),
        "queries": [{"file": q, "features": qfeat[i].tolist(),
                     "top4_most_similar_last": [d["file"] for d in found[i]]}
                    for i, q in enumerate(queries)],
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261204)
    torch.manual_seed(0)
    (OUT / "cider.json").write_text(json.dumps(cider_fixture(rng), indent=1))
    (OUT / "vqa.json").write_text(json.dumps(vqa_fixture(rng), indent=1))
    (OUT / "rices.json").write_text(json.dumps(rices_fixture()))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
