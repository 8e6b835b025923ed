//! The image-latent and prompt-prefix caches give the same tokens as no caches, are used when
//! only the query changes or examples are added after kept ones, and are not used when
//! examples, their order or captions change.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use common::*;
use flamingo::pipeline::{CacheStats, CaptionRequest, Captioner};

fn request(shots: &[(&str, &str)], query: &str) -> CaptionRequest {
    CaptionRequest {
        keep_logits: true,
        ..caption_request(shots, query, 6)
    }
}

/// Two examples for the requests below.
const TWO: [(&str, &str); 2] = [
    ("chelsea.png", "A cat lying on a rug."),
    ("coffee.png", "A cup of coffee on a table."),
];

fn load() -> Captioner {
    Captioner::load_from(&hub("hf"), flamingo::hub::DEFAULT_MODEL, &Device::Cpu).unwrap()
}

/// The tiny model twice: with the caches (the default) and without.
fn with_and_without_caches() -> (Captioner, Captioner) {
    let mut plain = load();
    plain.use_caches = false;
    (load(), plain)
}

/// A fresh captioner prepared for `req` with a stop that says yes from its `checks + 1`-th
/// question on (and a check that it was asked that often).
fn prepare_stopped_after(
    req: &CaptionRequest,
    with_query: bool,
    checks: usize,
) -> (Captioner, flamingo::pipeline::Prepared) {
    let c = load();
    let calls = std::cell::Cell::new(0);
    let stop = || {
        calls.set(calls.get() + 1);
        calls.get() > checks
    };
    let p = c.prepare(req, with_query, &stop).unwrap();
    assert_eq!(calls.get(), checks + 1, "stopped at the first yes");
    (c, p)
}

#[test]
fn cached_and_uncached_agree_and_caches_are_used_only_when_valid() {
    let (cached, plain) = with_and_without_caches();
    let cancel = AtomicBool::new(false);
    let two = TWO;
    let steps: Vec<(CaptionRequest, CacheStats)> = vec![
        // First request: everything computed.
        (
            request(&two, "astronaut.png"),
            CacheStats {
                vision_hits: 0,
                vision_misses: 3,
                prefix_hits: 0,
                prefix_extends: 0,
                prefix_misses: 1,
            },
        ),
        // Only the query changed: both example latents and the prefix are reused.
        (
            request(&two, "rocket.jpg"),
            CacheStats {
                vision_hits: 2,
                vision_misses: 4,
                prefix_hits: 1,
                prefix_extends: 0,
                prefix_misses: 1,
            },
        ),
        // A caption changed: the prefix is recomputed; the images are still known.
        (
            request(&[two[0], ("coffee.png", "Coffee.")], "rocket.jpg"),
            CacheStats {
                vision_hits: 5,
                vision_misses: 4,
                prefix_hits: 1,
                prefix_extends: 0,
                prefix_misses: 2,
            },
        ),
        // The order changed: the prefix is recomputed.
        (
            request(&[two[1], two[0]], "rocket.jpg"),
            CacheStats {
                vision_hits: 8,
                vision_misses: 4,
                prefix_hits: 1,
                prefix_extends: 0,
                prefix_misses: 3,
            },
        ),
        // Zero-shot: no prefix images.
        (
            request(&[], "astronaut.png"),
            CacheStats {
                vision_hits: 9,
                vision_misses: 4,
                prefix_hits: 1,
                prefix_extends: 0,
                prefix_misses: 3,
            },
        ),
        // A third example after the last set's two: only it runs, on from their state.
        (
            request(
                &[two[1], two[0], ("astronaut.png", "An astronaut in a suit.")],
                "rocket.jpg",
            ),
            CacheStats {
                vision_hits: 13,
                vision_misses: 4,
                prefix_hits: 1,
                prefix_extends: 1,
                prefix_misses: 3,
            },
        ),
    ];
    for (i, (req, want)) in steps.iter().enumerate() {
        let a = cached.caption(req, &cancel, |_| {}).unwrap();
        let b = plain.caption(req, &cancel, |_| {}).unwrap();
        assert_eq!(
            a.generated.tokens, b.generated.tokens,
            "request {i}: tokens"
        );
        for (x, y) in a.generated.step_logits.iter().zip(&b.generated.step_logits) {
            let x = Tensor::new(x.as_slice(), &Device::Cpu).unwrap();
            let y = Tensor::new(y.as_slice(), &Device::Cpu).unwrap();
            assert_close(&format!("request {i}: step logits"), &x, &y, 1e-4);
        }
        assert_eq!(cached.cache_stats(), *want, "request {i}: cache use");
    }
    // The first request is the reference's 2-shot case.
    let want = reference_json("every1_twoshot.json");
    let first = cached.caption(&steps[0].0, &cancel, |_| {}).unwrap();
    assert_eq!(first.generated.tokens, ids(&want["generated_token_ids"]));
    assert_eq!(plain.cache_stats(), CacheStats::default());
}

#[test]
fn preparing_ahead_fills_the_caches_and_changes_no_tokens() {
    let (ahead, plain) = with_and_without_caches();
    let cancel = AtomicBool::new(false);
    let never = || false;
    let two = TWO;
    let req = request(&two, "astronaut.png");

    // A newer request waiting from the start: nothing is done.
    let p = ahead.prepare(&req, true, &|| true).unwrap();
    assert_eq!((p.images_encoded, p.prefix_tokens), (0, 0));
    assert_eq!(ahead.cache_stats(), CacheStats::default());

    // Without the query: the examples' images and the prompt up to the query's image.
    let p = ahead.prepare(&req, false, &never).unwrap();
    assert_eq!(p.images_encoded, 2);
    let prompt = plain.tokenizer.encode(&req.prompt().unwrap()).unwrap();
    let media = plain.tokenizer.media_id;
    let query_marker = prompt.iter().rposition(|&t| t == media).unwrap();
    assert_eq!(p.prefix_tokens, query_marker);
    // Done already: nothing more to do.
    let p = ahead.prepare(&req, false, &never).unwrap();
    assert_eq!((p.images_encoded, p.prefix_tokens), (0, 0));

    // Captions `req` with and without caches: the same tokens; the cache use before and after.
    let caption_both = |req: &CaptionRequest| {
        let before = ahead.cache_stats();
        let a = ahead.caption(req, &cancel, |_| {}).unwrap();
        let b = plain.caption(req, &cancel, |_| {}).unwrap();
        assert_eq!(a.generated.tokens, b.generated.tokens);
        (before, ahead.cache_stats())
    };

    // Generate then encodes only the query and reuses the prefix.
    let (before, after) = caption_both(&req);
    assert_eq!(after.vision_misses - before.vision_misses, 1, "the query");
    assert_eq!(after.prefix_hits - before.prefix_hits, 1);
    assert_eq!(after.prefix_misses, before.prefix_misses);

    // With the query: a new query image is encoded ahead too.
    let other = request(&two, "rocket.jpg");
    let p = ahead.prepare(&other, true, &never).unwrap();
    assert_eq!((p.images_encoded, p.prefix_tokens), (1, 0));
    let (before, after) = caption_both(&other);
    assert_eq!(after.vision_misses, before.vision_misses);

    // The stop is asked before each image and before each of its (2) vision layers.
    // Stopped inside the first image: nothing is kept.
    let (c, p) = prepare_stopped_after(&req, true, 1);
    assert_eq!((p.images_encoded, p.prefix_tokens), (0, 0));
    let again = c.prepare(&req, true, &never).unwrap();
    assert_eq!(again.images_encoded, 3, "the stopped image was not kept");
    // Stopped after the first image: that image stays done, nothing after it.
    let (_, p) = prepare_stopped_after(&req, true, 3);
    assert_eq!((p.images_encoded, p.prefix_tokens), (1, 0));

    // Stopped inside the examples' prompt (the model asks before each layer): the images
    // stay done, no half-run prompt is kept, and the request runs it with the same tokens.
    // Two images' checks (3 each), the check before the prompt, then the first layers.
    let (fresh, p) = prepare_stopped_after(&req, false, 9);
    assert_eq!((p.images_encoded, p.prefix_tokens), (2, 0));
    let before = fresh.cache_stats();
    let a = fresh.caption(&req, &cancel, |_| {}).unwrap();
    let b = plain.caption(&req, &cancel, |_| {}).unwrap();
    assert_eq!(a.generated.tokens, b.generated.tokens);
    let after = fresh.cache_stats();
    assert_eq!(
        after.prefix_hits, before.prefix_hits,
        "nothing half-run was kept"
    );
    assert_eq!(after.vision_hits - before.vision_hits, 2);

    // A caching-off captioner does nothing ahead.
    let p = plain.prepare(&req, true, &never).unwrap();
    assert_eq!((p.images_encoded, p.prefix_tokens), (0, 0));
}

#[test]
fn ranking_goes_through_the_caches_with_the_same_scores() {
    let (cached, plain) = with_and_without_caches();
    let cancel = AtomicBool::new(false);
    let two = TWO;
    let candidates: Vec<String> = ["An astronaut.", "A dog on a beach.", "A rocket."]
        .map(String::from)
        .to_vec();
    for (i, query) in ["astronaut.png", "rocket.jpg"].into_iter().enumerate() {
        let req = request(&two, query);
        let a = cached.score(&req, &candidates, &cancel).unwrap();
        let b = plain.score(&req, &candidates, &cancel).unwrap();
        for ((ta, sa), (tb, sb)) in a.iter().zip(&b) {
            assert_eq!(ta, tb, "query {i}: the same ranking");
            assert!(
                (sa.logprob - sb.logprob).abs() <= 1e-4 * sb.logprob.abs().max(1.0),
                "query {i}: {ta}: {} vs {}",
                sa.logprob,
                sb.logprob
            );
        }
    }
    // The second ranking reused both example images and the examples' prompt.
    let s = cached.cache_stats();
    assert_eq!((s.vision_hits, s.vision_misses), (2, 4));
    assert_eq!((s.prefix_hits, s.prefix_misses), (1, 1));
    // A candidate past the context is still a clear error.
    let long = vec!["word ".repeat(5000)];
    let req = request(&two, "astronaut.png");
    let err = cached.score(&req, &long, &cancel).unwrap_err().to_string();
    assert!(err.contains("context"), "{err}");
}
