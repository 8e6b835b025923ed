//! Parity with the Python reference (open_flamingo 2.0.1, open_clip 2.20.0, transformers 4.33.3,
//! torch 2.0.1) on tiny random-weight models written in the real hub layout by
//! `tests/reference/generate_fixtures.py`. The numbers compared here were produced by that code.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use common::*;
use flamingo::generate::{GenerateOptions, GenerationConfig};
use flamingo::hub::{registry, resolve_in};
use flamingo::model::Flamingo;
use flamingo::text::prompt::{caption_prompt, Templates};
use flamingo::text::TextTokenizer;

const TOL: f32 = 1e-4;

struct Loaded {
    model: Flamingo,
    tok: TextTokenizer,
}

fn load(set: &str) -> Loaded {
    let spec = registry::find(registry::DEFAULT_MODEL).unwrap();
    let files = resolve_in(&hub(set), spec).unwrap();
    let tok = TextTokenizer::from_file(&files.tokenizer).unwrap();
    let model = flamingo::store::build::load(&files, tok.media_id, &Device::Cpu).unwrap();
    Loaded { model, tok }
}

fn case_pixels(info: &serde_json::Value) -> Tensor {
    let pix = reference("pixels.safetensors");
    let ts: Vec<Tensor> = info["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| pix[n.as_str().unwrap()].clone())
        .collect();
    Tensor::stack(&ts, 0).unwrap()
}

/// The caption prompt of a reference case, built from our templates and its shots' captions.
fn prompt_of(info: &serde_json::Value) -> String {
    let captions: Vec<&str> = info["shots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["caption"].as_str().unwrap())
        .collect();
    caption_prompt(&Templates::default(), &captions).unwrap()
}

fn check_case(l: &Loaded, tag: &str) {
    let info = reference_json(&format!("{tag}.json"));
    let r = reference(&format!("{tag}.safetensors"));
    // Prompt built from our templates and tokenised by our tokenizer.
    let prompt = prompt_of(&info);
    assert_eq!(
        prompt,
        info["prompt"].as_str().unwrap(),
        "{tag}: prompt text"
    );
    let prompt_ids = l.tok.encode(&prompt).unwrap();
    assert_eq!(
        prompt_ids,
        ids(&info["prompt_token_ids"]),
        "{tag}: prompt token ids"
    );

    let pixels = case_pixels(&info);
    let tokens = l.model.vision_tokens(&pixels).unwrap();
    assert_close(
        &format!("{tag}: vision tokens"),
        &tokens,
        &r["vision_tokens"],
        TOL,
    );
    let latents = l.model.encode_images(&pixels).unwrap();
    assert_close(&format!("{tag}: perceiver"), &latents, &r["perceiver"], TOL);

    // Logits of every prompt position, in one forward pass.
    let mut session = l.model.session(&latents.unsqueeze(0).unwrap()).unwrap();
    let logits = session
        .forward(std::slice::from_ref(&prompt_ids))
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_close(
        &format!("{tag}: prompt logits"),
        &logits,
        &r["prompt_logits"],
        TOL,
    );

    // Greedy decoding with the KV cache.
    let opts = GenerateOptions {
        config: GenerationConfig {
            max_new_tokens: info["max_new_tokens"].as_u64().unwrap() as usize,
            ..Default::default()
        },
        eos_id: l.tok.eoc_id,
        suppress: vec![l.tok.media_id],
        keep_logits: true,
        ..Default::default()
    };
    let g = generate(&l.model, &pixels, &prompt_ids, &opts);
    assert_eq!(
        g.tokens,
        ids(&info["generated_token_ids"]),
        "{tag}: greedy tokens"
    );
    let steps: Vec<Tensor> = g
        .step_logits
        .iter()
        .map(|v| Tensor::new(v.as_slice(), &Device::Cpu).unwrap())
        .collect();
    let steps = Tensor::stack(&steps, 0).unwrap();
    assert_close(
        &format!("{tag}: step logits"),
        &steps,
        &r["step_logits"],
        TOL,
    );
    assert_eq!(
        l.tok.decode(&g.tokens).unwrap(),
        info["generated_text"].as_str().unwrap(),
        "{tag}: decoded text"
    );
}

#[test]
fn xattn_every_layer_zero_and_two_shot() {
    let l = load("hf");
    assert_eq!(l.model.cross_attn_every(), 1);
    check_case(&l, "every1_zeroshot");
    check_case(&l, "every1_twoshot");
}

#[test]
fn xattn_every_second_layer_zero_and_two_shot() {
    let l = load("hf-xattn2");
    assert_eq!(l.model.cross_attn_every(), 2);
    check_case(&l, "every2_zeroshot");
    check_case(&l, "every2_twoshot");
}

#[test]
fn special_token_ids_match_open_flamingo() {
    let l = load("hf");
    assert_eq!(
        (l.tok.eoc_id, l.tok.media_id, l.tok.pad_id),
        (50277, 50278, 50279)
    );
    assert_eq!(l.tok.vocab_size(), 50280);
    assert_eq!(l.model.vocab_size(), 50280);
}

fn check_scores(l: &Loaded, tag: &str) {
    let info = reference_json(&format!("{tag}.json"));
    let prompt = prompt_of(&info);
    assert_eq!(prompt, info["prompt"].as_str().unwrap());
    let prompt_ids = l.tok.encode(&prompt).unwrap();
    let cands = info["candidates"].as_array().unwrap();
    let ids_of: Vec<Vec<u32>> = cands
        .iter()
        .map(|c| {
            l.tok
                .encode_plain(c["candidate"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    for (c, got) in cands.iter().zip(&ids_of) {
        assert_eq!(got, &ids(&c["candidate_token_ids"]), "{tag}: candidate ids");
    }
    let pixels = case_pixels(&info);
    let (session, logits) = run_prompt(&l.model, &pixels, &prompt_ids);
    let scores =
        flamingo::generate::score::score_after(&session, &logits, &ids_of, &AtomicBool::new(false))
            .unwrap();
    for (c, s) in cands.iter().zip(&scores) {
        // The reference's loss is the mean cross-entropy over the candidate's tokens.
        let want = -c["loss"].as_f64().unwrap() * c["n_tokens"].as_f64().unwrap();
        let err = (s.logprob as f64 - want).abs() / want.abs().max(1.0);
        eprintln!(
            "{tag}: {:?} {} vs {want} (rel {err:e})",
            c["candidate"], s.logprob
        );
        assert!(err < 1e-4, "{tag}: score {} vs reference {want}", s.logprob);
        let per: Vec<f64> = c["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        for (a, b) in s.token_logprobs.iter().zip(&per) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{tag}: token logprob {a} vs {b}"
            );
        }
    }
}

#[test]
fn candidate_scores_equal_the_reference_loss() {
    check_scores(&load("hf"), "every1_score");
    check_scores(&load("hf-xattn2"), "every2_score");
}

fn check_beams(l: &Loaded, file: &str) {
    use flamingo::generate::beam::{beam_search, BeamConfig, EarlyStopping};
    let cases = reference_json(file);
    for c in cases.as_array().unwrap() {
        let prompt = prompt_of(c);
        assert_eq!(prompt, c["prompt"].as_str().unwrap());
        let early = match &c["early_stopping"] {
            serde_json::Value::Bool(true) => EarlyStopping::True,
            serde_json::Value::Bool(false) => EarlyStopping::False,
            _ => EarlyStopping::Never,
        };
        let cfg = BeamConfig {
            num_beams: c["num_beams"].as_u64().unwrap() as usize,
            length_penalty: c["length_penalty"].as_f64().unwrap(),
            early_stopping: early,
            num_return_sequences: c["num_return_sequences"].as_u64().unwrap() as usize,
            max_new_tokens: c["max_new_tokens"].as_u64().unwrap() as usize,
            min_new_tokens: 0,
        };
        let prompt_ids = l.tok.encode(&prompt).unwrap();
        let (session, logits) = run_prompt(&l.model, &case_pixels(c), &prompt_ids);
        let out = beam_search(
            session,
            &logits,
            &prompt_ids,
            &cfg,
            l.tok.eoc_id,
            &[],
            &AtomicBool::new(false),
        )
        .unwrap();
        let what = format!(
            "{file} {} lp={} early={early:?}",
            c["case"], cfg.length_penalty
        );
        let want_seqs: Vec<Vec<u32>> = c["sequences"].as_array().unwrap().iter().map(ids).collect();
        let got_seqs: Vec<Vec<u32>> = out.iter().map(|r| r.tokens.clone()).collect();
        assert_eq!(got_seqs, want_seqs, "{what}: sequences");
        for (r, w) in out.iter().zip(c["sequence_scores"].as_array().unwrap()) {
            let w = w.as_f64().unwrap();
            let err = (r.sequence_score - w).abs() / w.abs().max(1.0);
            assert!(err < 1e-4, "{what}: score {} vs {w}", r.sequence_score);
        }
    }
}

#[test]
fn beam_search_matches_transformers() {
    check_beams(&load("hf"), "every1_beams.json");
    check_beams(&load("hf-xattn2"), "every2_beams.json");
}

#[test]
fn extract_vision_feats_takes_both_layouts() {
    let l = load("hf");
    let info = reference_json("every1_twoshot.json");
    let r = reference("every1_twoshot.safetensors");
    let pixels = case_pixels(&info); // (3, C, H, W)
    let five = l
        .model
        .extract_vision_feats(&pixels.unsqueeze(0).unwrap())
        .unwrap();
    assert_eq!(five.dims()[..2], [1, 3]);
    assert_close(
        "(1, 3, C, H, W)",
        &five.squeeze(0).unwrap(),
        &r["perceiver"],
        TOL,
    );
    let four = l.model.extract_vision_feats(&pixels).unwrap();
    assert_eq!(four.dims()[..2], [3, 1]);
    assert_close(
        "(3, C, H, W)",
        &four.squeeze(1).unwrap(),
        &r["perceiver"],
        TOL,
    );
}
