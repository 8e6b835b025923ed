//! Shared helpers for the integration tests: fixture paths and tensor comparison.
#![allow(dead_code)]

pub mod hub_server;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("tests").join("fixtures")
}

/// The hub cache of a fixture set (`hf` = cross-attention every layer, `hf-xattn2` = every 2).
pub fn hub(set: &str) -> PathBuf {
    fixtures().join(set).join("hub")
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    let p = fixtures().join("reference").join(name);
    candle_core::safetensors::load(&p, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn reference_json(name: &str) -> serde_json::Value {
    let p = fixtures().join("reference").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
}

pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
    eprintln!("{what}: relative error {e:e}");
}

/// A greedy caption request over fixture images: `shots` are (image, caption) pairs.
pub fn caption_request(
    shots: &[(&str, &str)],
    query: &str,
    max_new_tokens: usize,
) -> flamingo::pipeline::CaptionRequest {
    use flamingo::pipeline::{CaptionRequest, ImageInput, Shot};
    use flamingo::text::prompt::{ShotText, Task, Templates};
    let img = |n: &str| ImageInput::Path(fixtures().join("images").join(n));
    CaptionRequest {
        task: Task::Caption,
        shots: shots
            .iter()
            .map(|(i, c)| Shot {
                image: img(i),
                text: ShotText {
                    caption: c.to_string(),
                    ..Default::default()
                },
            })
            .collect(),
        query: img(query),
        question: String::new(),
        templates: Templates::default(),
        generation: flamingo::generate::GenerationConfig {
            max_new_tokens,
            ..Default::default()
        },
        keep_logits: false,
        media_attention: None,
        top_logprobs: 0,
        forced: Vec::new(),
    }
}

/// The JSON a successful command printed; its stderr when it failed.
pub fn json_stdout(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The model's own route for the parity tests: each image [N, 3, S, S] encoded, the prompt run
/// in one pass; the session after it and the prompt's logits.
pub fn run_prompt<'m>(
    model: &'m flamingo::model::Flamingo,
    pixels: &Tensor,
    prompt_ids: &[u32],
) -> (flamingo::model::Session<'m>, Tensor) {
    let latents = model.encode_images(pixels).unwrap().unsqueeze(0).unwrap();
    let mut session = model.session(&latents).unwrap();
    let logits = session.forward(&[prompt_ids.to_vec()]).unwrap();
    (session, logits)
}

/// Greedy (or sampled) decoding of a prompt over its images, as [`run_prompt`] runs it.
pub fn generate(
    model: &flamingo::model::Flamingo,
    pixels: &Tensor,
    prompt_ids: &[u32],
    opts: &flamingo::generate::GenerateOptions,
) -> flamingo::generate::Generated {
    let (mut session, logits) = run_prompt(model, pixels, prompt_ids);
    let mut out = flamingo::generate::Generated::default();
    flamingo::generate::decode(
        &mut session,
        &logits,
        prompt_ids,
        opts,
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_| {},
        &mut out,
    )
    .unwrap();
    out
}
