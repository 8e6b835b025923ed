//! In-context learning views on the tiny model: a shot sweep's rows equal separate captions
//! with that many examples (and run on from each other's prefix state), the ablation's
//! log-probabilities equal scores with the example removed, token alternatives equal the
//! softmax of the reference's step logits, and a forced alternative continues as a prompt
//! ending with it would.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use common::*;
use flamingo::generate::{GenerateOptions, GenerationConfig};
use flamingo::pipeline::icl::{default_counts, sweep_picks, with_examples, SweepEvent};
use flamingo::pipeline::{CaptionRequest, Captioner};
use flamingo::types::{MediaAttention, ShotPick};

const FOUR: [(&str, &str); 4] = [
    ("chelsea.png", "A cat lying on a rug."),
    ("coffee.png", "A cup of coffee on a table."),
    ("astronaut.png", "An astronaut in a white suit."),
    ("synth_300x200.png", "A colourful pattern."),
];

fn load(set: &str, model: &str, caches: bool) -> Captioner {
    let mut c = Captioner::load_from(&hub(set), model, &Device::Cpu).unwrap();
    c.use_caches = caches;
    c
}

fn tiny(caches: bool) -> Captioner {
    load("hf", flamingo::hub::DEFAULT_MODEL, caches)
}

#[test]
fn sweep_rows_equal_separate_captions_and_run_on_from_each_other() {
    let swept = tiny(true);
    let plain = tiny(false);
    let cancel = AtomicBool::new(false);
    let req = caption_request(&FOUR, "rocket.jpg", 6);
    // Given out of order: reported in this order, run from the fewest examples up.
    let counts = [2, 0, 4, 1];
    let mut streamed = vec![String::new(); counts.len()];
    let mut started = Vec::new();
    let rows = swept
        .sweep(&req, &counts, ShotPick::First, &cancel, |e| match e {
            SweepEvent::RowStarted { row, .. } => started.push(row),
            SweepEvent::Text { row, chunk } => streamed[row].push_str(chunk),
            SweepEvent::RowFinished { .. } => {}
        })
        .unwrap();
    assert_eq!(started, vec![1, 3, 0, 2], "fewest examples first");
    for (i, (&n, row)) in counts.iter().zip(&rows).enumerate() {
        let row = row.as_ref().unwrap();
        assert_eq!(row.examples, (0..n).collect::<Vec<_>>());
        let alone = plain
            .caption(
                &caption_request(&FOUR[..n], "rocket.jpg", 6),
                &cancel,
                |_| {},
            )
            .unwrap();
        assert_eq!(
            row.result.generated.tokens, alone.generated.tokens,
            "{n} shots"
        );
        assert_eq!(streamed[i], row.result.raw_text, "{n} shots: streamed text");
    }
    // 1-shot ran its prefix; 2- and 4-shot ran on from the row before.
    let s = swept.cache_stats();
    assert_eq!((s.prefix_misses, s.prefix_extends), (1, 2), "{s:?}");
    assert_eq!(s.vision_misses, 5, "each image encoded once");

    // A count past the examples is a clear error.
    let err = swept
        .sweep(&req, &[5], ShotPick::First, &cancel, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("5-shot") && err.contains("are 4"), "{err}");
}

#[test]
fn random_picks_are_seeded_and_nested() {
    let a = sweep_picks(6, &[0, 1, 2, 4, 6], ShotPick::Random { seed: 7 }).unwrap();
    let b = sweep_picks(6, &[0, 1, 2, 4, 6], ShotPick::Random { seed: 7 }).unwrap();
    let c = sweep_picks(6, &[6], ShotPick::Random { seed: 8 }).unwrap();
    assert_eq!(a, b);
    assert_ne!(a[4], c[0], "another seed, another order");
    for w in a.windows(2) {
        assert!(w[1].starts_with(&w[0]), "{a:?}");
    }
    let mut all = a[4].clone();
    all.sort();
    assert_eq!(all, (0..6).collect::<Vec<_>>(), "a permutation");
    assert_ne!(a[4], (0..6).collect::<Vec<_>>());
    assert_eq!(default_counts(0), vec![0]);
    assert_eq!(default_counts(2), vec![0, 1, 2]);
    assert_eq!(default_counts(4), vec![0, 1, 2, 4]);
    assert_eq!(default_counts(5), vec![0, 1, 2, 4, 5]);
}

#[test]
fn a_stopped_sweep_ends_at_once() {
    let c = tiny(true);
    let cancel = AtomicBool::new(false);
    let req = caption_request(&FOUR, "rocket.jpg", 6);
    let mut rows_started = 0;
    // Stop pressed as the second row starts: it ends there, no third row starts.
    let r = c.sweep(&req, &[0, 1, 2], ShotPick::First, &cancel, |e| {
        if let SweepEvent::RowStarted { row, .. } = e {
            rows_started += 1;
            if row == 1 {
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    assert!(matches!(r, Err(flamingo::Error::Cancelled)), "{r:?}");
    assert_eq!(rows_started, 2);
}

#[test]
fn ablation_equals_scores_with_the_example_removed() {
    let cached = tiny(true);
    let plain = tiny(false);
    let cancel = AtomicBool::new(false);
    let req = caption_request(&FOUR[..3], "rocket.jpg", 6);
    let caption = cached.caption(&req, &cancel, |_| {}).unwrap();
    let ids = caption.generated.tokens.clone();
    let mut progress = Vec::new();
    let ab = cached
        .ablate(&req, &ids, &cancel, |d, t| progress.push((d, t)))
        .unwrap();
    assert_eq!(progress.last(), Some(&(5, 5)));
    let close = |what: &str, a: f32, b: f32| {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        );
    };
    let score = |r: &CaptionRequest| {
        plain
            .score_ids(r, std::slice::from_ref(&ids), &cancel)
            .unwrap()[0]
            .logprob
    };
    // The full prompt's score is the generation's own log-probability.
    close("full", ab.logprob, caption.generated.logprob());
    close("full vs score", ab.logprob, score(&req));
    for (i, w) in ab.without.iter().enumerate() {
        let kept: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        close(
            &format!("without {i}"),
            *w,
            score(&with_examples(&req, &kept)),
        );
    }
    close(
        "reversed",
        ab.reversed.unwrap(),
        score(&with_examples(&req, &[2, 1, 0])),
    );
    assert_eq!(ab.effects().len(), 3);
    // Every image was encoded once, by the caption.
    assert_eq!(cached.cache_stats().vision_misses, 4);
}

#[test]
fn alternatives_are_the_softmax_of_the_reference_step_logits() {
    let c = tiny(false);
    let cancel = AtomicBool::new(false);
    let info = reference_json("every1_twoshot.json");
    let r = reference("every1_twoshot.safetensors");
    let req = CaptionRequest {
        top_logprobs: 5,
        ..caption_request(
            &[
                ("chelsea.png", "A cat lying on a rug."),
                ("coffee.png", "A cup of coffee on a table."),
            ],
            "astronaut.png",
            6,
        )
    };
    let out = c.caption(&req, &cancel, |_| {}).unwrap();
    let g = &out.generated;
    assert_eq!(g.tokens, ids(&info["generated_token_ids"]));
    let want = candle_nn::ops::log_softmax(&r["step_logits"], 1)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(g.alternatives.len(), g.tokens.len());
    for (step, (alts, lp)) in g.alternatives.iter().zip(&want).enumerate() {
        assert_eq!(alts.len(), 5);
        let mut order: Vec<usize> = (0..lp.len()).collect();
        order.sort_by(|a, b| lp[*b].total_cmp(&lp[*a]));
        for (k, &(id, l)) in alts.iter().enumerate() {
            assert_eq!(id as usize, order[k], "step {step}, rank {k}");
            assert!(
                (l - lp[id as usize]).abs() <= 1e-4,
                "step {step}: {l} vs {}",
                lp[id as usize]
            );
        }
        let mass: f32 = alts.iter().map(|(_, l)| l.exp()).sum();
        assert!(mass <= 1.0 + 1e-5, "step {step}: {mass}");
        let chosen = g.tokens[step] as usize;
        assert!((g.token_logprobs[step] - lp[chosen]).abs() <= 1e-4);
    }
}

#[test]
fn a_forced_alternative_continues_as_a_prompt_ending_with_it() {
    let c = tiny(false);
    let cancel = AtomicBool::new(false);
    let base = CaptionRequest {
        top_logprobs: 5,
        ..caption_request(&FOUR[..2], "rocket.jpg", 8)
    };
    let first = c.caption(&base, &cancel, |_| {}).unwrap();
    // At step 1, the second most likely token instead of the chosen one.
    let (alt, alt_lp) = first.generated.alternatives[1][1];
    let forced = vec![first.generated.tokens[0], alt];
    let branch = c
        .caption(
            &CaptionRequest {
                forced: forced.clone(),
                ..base.clone()
            },
            &cancel,
            |_| {},
        )
        .unwrap();
    let g = &branch.generated;
    assert_eq!(g.tokens[..2], forced[..]);
    assert!((g.token_logprobs[1] - alt_lp).abs() <= 1e-5);

    // The same prompt with the forced tokens appended, decoded greedily from there.
    let vc = c.model.vision_config();
    let names = ["chelsea.png", "coffee.png", "rocket.jpg"];
    let pixels: Vec<Tensor> = names
        .iter()
        .map(|n| {
            flamingo::image::preprocess_file(
                &fixtures().join("images").join(n),
                vc.image_size as u32,
                vc.mean,
                vc.std,
                &Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    let pixels = Tensor::stack(&pixels, 0).unwrap();
    let mut prompt = branch.prompt_ids.clone();
    prompt.extend(&forced);
    let opts = GenerateOptions {
        config: GenerationConfig {
            max_new_tokens: 8 - forced.len(),
            ..Default::default()
        },
        eos_id: c.tokenizer.eoc_id,
        suppress: vec![c.tokenizer.media_id],
        ..Default::default()
    };
    let rest = generate(&c.model, &pixels, &prompt, &opts);
    assert_eq!(
        g.tokens[2..],
        rest.tokens[..],
        "the branch continues as the prompt would"
    );
}

/// Under v1's attention (text attends to the image after it) a longer prompt runs on from a
/// kept shorter one only at an image, and gives the same tokens as no caches.
#[test]
fn v1_prefixes_run_on_with_the_same_tokens() {
    let model = "openflamingo/OpenFlamingo-9B-deprecated";
    let cached = load("hf-llama", model, true);
    let plain = load("hf-llama", model, false);
    assert_eq!(cached.default_media_attention, MediaAttention::Next);
    let cancel = AtomicBool::new(false);
    for n in 1..=3 {
        let req = CaptionRequest {
            keep_logits: true,
            ..caption_request(&FOUR[..n], "rocket.jpg", 5)
        };
        let a = cached.caption(&req, &cancel, |_| {}).unwrap();
        let b = plain.caption(&req, &cancel, |_| {}).unwrap();
        assert_eq!(a.generated.tokens, b.generated.tokens, "{n} shots");
        for (x, y) in a.generated.step_logits.iter().zip(&b.generated.step_logits) {
            let x = Tensor::new(x.as_slice(), &Device::Cpu).unwrap();
            let y = Tensor::new(y.as_slice(), &Device::Cpu).unwrap();
            assert_close(&format!("{n} shots: step logits"), &x, &y, 1e-4);
        }
    }
    let s = cached.cache_stats();
    // 1-shot ran its prefix (up to its image), 2- and 3-shot ran on from there.
    assert_eq!((s.prefix_misses, s.prefix_extends), (1, 2), "{s:?}");
}

/// The recorded attention weights equal the reference's own softmax outputs on the 2-shot
/// case (tests/reference/generate_attention.py), per layer; each token's heatmap sums to 1.
#[test]
fn attention_weights_match_the_reference_and_heatmaps_sum_to_one() {
    let c = tiny(false);
    let cancel = AtomicBool::new(false);
    let req = caption_request(
        &[
            ("chelsea.png", "A cat lying on a rug."),
            ("coffee.png", "A cup of coffee on a table."),
        ],
        "astronaut.png",
        6,
    );
    let r = reference("every1_attention.safetensors");
    let w = c.attention_weights(&req, &[], &cancel).unwrap();
    let layers = |prefix: &str| {
        let mut v: Vec<_> = r
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        v.sort();
        v
    };
    for (kind, ours) in [
        ("perceiver.", &w.perceiver),
        ("cross.", &w.cross),
        ("self.", &w.self_attention),
    ] {
        let names = layers(kind);
        assert_eq!(names.len(), ours.len(), "{kind} layers");
        for (name, got) in names.iter().zip(ours) {
            let want = &r[name];
            assert_eq!(got.dims(), want.dims(), "{name}");
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff <= 1e-4, "{name}: {diff}");
        }
    }

    let caption = c.caption(&req, &cancel, |_| {}).unwrap().generated.tokens;
    let maps = c.attention_maps(&req, &caption, &cancel).unwrap();
    assert_eq!(maps.grid, 16);
    assert_eq!(
        maps.spans,
        ["example 1", "example 2", "query prompt", "caption so far"]
    );
    assert_eq!(maps.tokens.len(), caption.len());
    for (i, t) in maps.tokens.iter().enumerate() {
        let h = t.heatmap.as_ref().unwrap();
        assert_eq!(h.len(), 256);
        let sum: f32 = h.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "token {i}: {sum}");
        assert!(h.iter().all(|v| *v >= 0.0));
        let mass: f32 = t.spans.iter().sum();
        assert!(mass <= 1.0 + 1e-4 && mass > 0.0, "token {i}: {mass}");
    }
    assert_eq!(
        maps.tokens[0].spans[3], 0.0,
        "nothing generated before the first token"
    );
}
