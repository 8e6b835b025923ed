//! A batch of prompts of different lengths (left padding, key masks, rows with different numbers
//! of images) gives the same tokens as decoding them one by one.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use common::*;
use flamingo::generate::{decode_batch, GenerateOptions, GenerationConfig};
use flamingo::hub::{registry, resolve_in};
use flamingo::pipeline::batched_prompt;
use flamingo::text::prompt::{caption_prompt, Templates};
use flamingo::text::TextTokenizer;
use flamingo::types::MediaAttention;

fn pixels(names: &[&str]) -> Tensor {
    let pix = reference("pixels.safetensors");
    Tensor::stack(
        &names.iter().map(|n| pix[*n].clone()).collect::<Vec<_>>(),
        0,
    )
    .unwrap()
}

fn check(set: &str, config: GenerationConfig) {
    let spec = registry::find(registry::DEFAULT_MODEL).unwrap();
    let files = resolve_in(&hub(set), spec).unwrap();
    let tok = TextTokenizer::from_file(&files.tokenizer).unwrap();
    let model = flamingo::store::build::load(&files, tok.media_id, &Device::Cpu).unwrap();
    let t = Templates::default();
    let cases: Vec<(String, Tensor)> = vec![
        (caption_prompt(&t, &[]).unwrap(), pixels(&["astronaut.png"])),
        (
            caption_prompt(
                &t,
                &["A cat lying on a rug.", "A cup of coffee on a table."],
            )
            .unwrap(),
            pixels(&["chelsea.png", "coffee.png", "astronaut.png"]),
        ),
        (
            caption_prompt(&t, &["A rocket."]).unwrap(),
            pixels(&["rocket.jpg", "synth_300x200.png"]),
        ),
    ];
    let ids: Vec<Vec<u32>> = cases.iter().map(|(p, _)| tok.encode(p).unwrap()).collect();
    let opts = GenerateOptions {
        config,
        eos_id: tok.eoc_id,
        suppress: vec![tok.media_id],
        keep_logits: true,
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let rows: Vec<(Tensor, &[u32])> = cases
        .iter()
        .zip(&ids)
        .map(|((_, px), ids)| (model.encode_images(px).unwrap(), ids.as_slice()))
        .collect();
    let (mut session, logits) =
        batched_prompt(&model, &rows, tok.pad_id, MediaAttention::Previous).unwrap();
    let prompts: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let batch = decode_batch(&mut session, &logits, &prompts, &opts, tok.pad_id, &cancel).unwrap();
    for (i, ((_, px), ids)) in cases.iter().zip(&ids).enumerate() {
        let one = generate(&model, px, ids, &opts);
        assert_eq!(batch[i].tokens, one.tokens, "{set} row {i}: tokens");
        for (a, b) in batch[i].step_logits.iter().zip(&one.step_logits) {
            let a = Tensor::new(a.as_slice(), &Device::Cpu).unwrap();
            let b = Tensor::new(b.as_slice(), &Device::Cpu).unwrap();
            assert_close(&format!("{set} row {i}: step logits"), &a, &b, 1e-4);
        }
    }
}

#[test]
fn greedy_batch_equals_one_by_one() {
    check(
        "hf",
        GenerationConfig {
            max_new_tokens: 6,
            ..Default::default()
        },
    );
    check(
        "hf-xattn2",
        GenerationConfig {
            max_new_tokens: 6,
            ..Default::default()
        },
    );
}

#[test]
fn sampled_batch_equals_one_by_one() {
    check(
        "hf",
        GenerationConfig {
            max_new_tokens: 8,
            do_sample: true,
            temperature: 2.0,
            top_k: 40,
            seed: 5,
            ..Default::default()
        },
    );
}
