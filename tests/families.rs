//! Parity of the other language-model families with the Python reference, on tiny random
//! models written in the real hub layout by `tests/reference/generate_families.py`: GPT-NeoX
//! (OpenFlamingo-4B), MPT-7B (OpenFlamingo-9B) and LLaMA (the v1 OpenFlamingo-9B), each with
//! cross-attention at its real interval and in every layer. The reference logits are kept for
//! a fixed sample of vocabulary columns plus each position's top entries (`columns`).
//! The v1 media masking is checked against open_flamingo 0.0.2's own code.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use common::*;
use flamingo::generate::beam::{beam_search, BeamConfig, EarlyStopping};
use flamingo::generate::{decode, GenerateOptions, Generated, GenerationConfig};
use flamingo::hub::{registry, resolve_in};
use flamingo::model::Flamingo;
use flamingo::text::TextTokenizer;
use flamingo::types::MediaAttention;

const TOL: f32 = 1e-4;

struct Loaded {
    model: Flamingo,
    tok: TextTokenizer,
}

fn load(set: &str, model: &str) -> Loaded {
    let spec = registry::find(model).unwrap();
    let files = resolve_in(&hub(set), spec).unwrap();
    let tok = TextTokenizer::from_file(&files.tokenizer).unwrap();
    let model = flamingo::store::build::load(&files, tok.media_id, &Device::Cpu).unwrap();
    Loaded { model, tok }
}

fn pixels(names: &serde_json::Value) -> Tensor {
    let pix = reference("pixels.safetensors");
    let ts: Vec<Tensor> = names
        .as_array()
        .unwrap()
        .iter()
        .map(|n| pix[n.as_str().unwrap()].clone())
        .collect();
    Tensor::stack(&ts, 0).unwrap()
}

/// `logits` [.., V] at the reference's kept vocabulary columns.
fn at_columns(logits: &Tensor, cols: &Tensor) -> Tensor {
    let cols = cols.to_dtype(candle_core::DType::U32).unwrap();
    logits.index_select(&cols, logits.rank() - 1).unwrap()
}

/// The prompt's session and logits, and greedy decoding from it, with `mode`.
fn run(
    l: &Loaded,
    pixels: &Tensor,
    prompt: &[u32],
    new_tokens: usize,
    mode: MediaAttention,
) -> (Tensor, Generated) {
    let latents = l.model.encode_images(pixels).unwrap().unsqueeze(0).unwrap();
    let mut session = l.model.session_in(&latents, mode).unwrap();
    let logits = session.forward(&[prompt.to_vec()]).unwrap();
    let opts = GenerateOptions {
        config: GenerationConfig {
            max_new_tokens: new_tokens,
            ..Default::default()
        },
        eos_id: l.tok.eoc_id,
        suppress: vec![],
        keep_logits: true,
        ..Default::default()
    };
    let mut g = Generated::default();
    decode(
        &mut session,
        &logits,
        prompt,
        &opts,
        &AtomicBool::new(false),
        &mut |_| {},
        &mut g,
    )
    .unwrap();
    (logits.squeeze(0).unwrap(), g)
}

fn steps(g: &Generated) -> Tensor {
    let rows: Vec<Tensor> = g
        .step_logits
        .iter()
        .map(|v| Tensor::new(v.as_slice(), &Device::Cpu).unwrap())
        .collect();
    Tensor::stack(&rows, 0).unwrap()
}

/// One reference case: prompt ids from our tokenizer, perceiver latents, the logits of every
/// prompt position, greedy tokens with their per-step (KV-cache) logits, the decoded text.
fn check_case(l: &Loaded, tag: &str, mode: MediaAttention) {
    let info = reference_json(&format!("{tag}.json"));
    let r = reference(&format!("{tag}.safetensors"));
    let prompt = info["prompt"].as_str().unwrap();
    let ids_ = l.tok.encode(prompt).unwrap();
    assert_eq!(ids_, ids(&info["prompt_token_ids"]), "{tag}: prompt ids");
    let px = pixels(&info["images"]);
    if let Some(want) = r.get("perceiver") {
        let latents = l.model.encode_images(&px).unwrap();
        assert_close(&format!("{tag}: perceiver"), &latents, want, TOL);
    }
    let n = info["max_new_tokens"].as_u64().unwrap() as usize;
    let (logits, g) = run(l, &px, &ids_, n, mode);
    let cols = &r["columns"];
    assert_close(
        &format!("{tag}: prompt logits"),
        &at_columns(&logits, cols),
        &r["prompt_logits"],
        TOL,
    );
    assert_eq!(g.tokens, ids(&info["generated_token_ids"]), "{tag}: tokens");
    assert_close(
        &format!("{tag}: step logits"),
        &at_columns(&steps(&g), cols),
        &r["step_logits"],
        TOL,
    );
    assert_eq!(
        l.tok.decode(&g.tokens).unwrap(),
        info["generated_text"].as_str().unwrap(),
        "{tag}: text"
    );
}

fn check_beams(l: &Loaded, file: &str) {
    for c in reference_json(file).as_array().unwrap() {
        let prompt_ids = l.tok.encode(c["prompt"].as_str().unwrap()).unwrap();
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
        let latents = l
            .model
            .encode_images(&pixels(&c["images"]))
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mut session = l.model.session(&latents).unwrap();
        let logits = session.forward(std::slice::from_ref(&prompt_ids)).unwrap();
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
        let what = format!("{file} {} lp={}", c["case"], cfg.length_penalty);
        let want: Vec<Vec<u32>> = c["sequences"].as_array().unwrap().iter().map(ids).collect();
        let got: Vec<Vec<u32>> = out.iter().map(|r| r.tokens.clone()).collect();
        assert_eq!(got, want, "{what}: sequences");
        for (r, w) in out.iter().zip(c["sequence_scores"].as_array().unwrap()) {
            let w = w.as_f64().unwrap();
            let err = (r.sequence_score - w).abs() / w.abs().max(1.0);
            assert!(err < 1e-4, "{what}: score {} vs {w}", r.sequence_score);
        }
    }
}

fn check_scores(l: &Loaded, file: &str) {
    let info = reference_json(file);
    let prompt_ids = l.tok.encode(info["prompt"].as_str().unwrap()).unwrap();
    let cands = info["candidates"].as_array().unwrap();
    let cand_ids: Vec<Vec<u32>> = cands
        .iter()
        .map(|c| {
            l.tok
                .encode_plain(c["candidate"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    for (c, got) in cands.iter().zip(&cand_ids) {
        assert_eq!(
            got,
            &ids(&c["candidate_token_ids"]),
            "{file}: candidate ids"
        );
    }
    let (session, logits) = run_prompt(&l.model, &pixels(&info["images"]), &prompt_ids);
    let scores = flamingo::generate::score::score_after(
        &session,
        &logits,
        &cand_ids,
        &AtomicBool::new(false),
    )
    .unwrap();
    for (c, s) in cands.iter().zip(&scores) {
        let want = -c["loss"].as_f64().unwrap() * c["n_tokens"].as_f64().unwrap();
        let err = (s.logprob as f64 - want).abs() / want.abs().max(1.0);
        assert!(err < 1e-4, "{file}: score {} vs {want}", s.logprob);
    }
}

/// Every check of one family at one cross-attention interval.
fn check_family(set: &str, model: &str, tag: &str, every: usize) {
    let l = load(set, model);
    assert_eq!(l.model.cross_attn_every(), every, "{set}");
    let prev = MediaAttention::Previous;
    check_case(&l, &format!("{tag}_zeroshot"), prev);
    check_case(&l, &format!("{tag}_twoshot"), prev);
    check_beams(&l, &format!("{tag}_beams.json"));
    check_scores(&l, &format!("{tag}_score.json"));
}

const NEOX: &str = "openflamingo/OpenFlamingo-4B-vitl-rpj3b";
const MPT7B: &str = "openflamingo/OpenFlamingo-9B-vitl-mpt7b";
const LLAMA: &str = "openflamingo/OpenFlamingo-9B-deprecated";

#[test]
fn gpt_neox_cross_attention_every_second_layer() {
    check_family("hf-neox", NEOX, "neox_every2", 2);
}

#[test]
fn gpt_neox_cross_attention_every_layer() {
    check_family("hf-neox-x1", NEOX, "neox_every1", 1);
}

#[test]
fn mpt_7b_cross_attention_every_fourth_layer() {
    check_family("hf-mpt7b", MPT7B, "mpt7b_every4", 4);
}

#[test]
fn mpt_7b_cross_attention_every_layer() {
    check_family("hf-mpt7b-x1", MPT7B, "mpt7b_every1", 1);
}

#[test]
fn llama_cross_attention_every_fourth_layer() {
    check_family("hf-llama", LLAMA, "llama_every4", 4);
}

#[test]
fn llama_cross_attention_every_layer() {
    check_family("hf-llama-x1", LLAMA, "llama_every1", 1);
}

/// The v1 masking (text attends to the image after it, nothing after the last image, and
/// generated tokens to none) against open_flamingo 0.0.2's modules on the seed's zero-shot
/// prompt (two text-only demonstrations) and its few-shot prompt.
#[test]
fn v1_media_attention_matches_open_flamingo_v1() {
    let l = load("hf-llama", LLAMA);
    check_case(&l, "llama_v1_zeroshot", MediaAttention::Next);
    check_case(&l, "llama_v1_twoshot", MediaAttention::Next);
}

/// mmpretrain's converted adapter (only the keys its load hook keeps, nested under
/// `state_dict`, with rotary buffers) in place of `checkpoint.pt`: the same model.
#[test]
fn mmpretrain_adapter_layout_loads_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let spec = registry::find(LLAMA).unwrap();
    let mut files = resolve_in(&hub("hf-llama"), spec).unwrap();
    let adapter = dir.path().join("openflamingo-9b-adapter.pth");
    std::fs::copy(
        fixtures()
            .join("reference")
            .join("llama_mmpretrain_adapter.pth"),
        &adapter,
    )
    .unwrap();
    files.checkpoint.path = adapter;
    let tok = TextTokenizer::from_file(&files.tokenizer).unwrap();
    let model = flamingo::store::build::load(&files, tok.media_id, &Device::Cpu).unwrap();
    let l = Loaded { model, tok };
    check_case(&l, "llama_v1_twoshot", MediaAttention::Next);
}

/// A hub cache holding every released model id: the fixtures' repos, and for the
/// instruction-tuned twins links to their base model's repos (same family, same files).
fn all_six_cache(dir: &std::path::Path) {
    let link = |set: &str, from: &str, to: &str| {
        let name = |r: &str| format!("models--{}", r.replace('/', "--"));
        let target = hub(set).join(name(from));
        let dst = dir.join(name(to));
        if !dst.exists() {
            std::os::unix::fs::symlink(target.canonicalize().unwrap(), dst).unwrap();
        }
    };
    for (set, repos) in [
        (
            "hf",
            &[
                "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
                "anas-awadalla/mpt-1b-redpajama-200b",
                "timm/vit_large_patch14_clip_224.openai",
            ][..],
        ),
        (
            "hf-neox",
            &[
                "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
                "togethercomputer/RedPajama-INCITE-Base-3B-v1",
            ][..],
        ),
        (
            "hf-mpt7b",
            &[
                "openflamingo/OpenFlamingo-9B-vitl-mpt7b",
                "anas-awadalla/mpt-7b",
            ][..],
        ),
        (
            "hf-llama",
            &[
                "openflamingo/OpenFlamingo-9B-deprecated",
                "luodian/llama-7b-hf",
            ][..],
        ),
    ] {
        for r in repos {
            link(set, r, r);
        }
    }
    link(
        "hf",
        "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
        "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct",
    );
    link(
        "hf",
        "anas-awadalla/mpt-1b-redpajama-200b",
        "anas-awadalla/mpt-1b-redpajama-200b-dolly",
    );
    link(
        "hf-neox",
        "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
        "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct",
    );
    link(
        "hf-neox",
        "togethercomputer/RedPajama-INCITE-Base-3B-v1",
        "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
    );
}

/// `flamingo caption --model ID` for each of the six released ids, offline from a hub cache.
#[test]
#[cfg(unix)]
fn caption_runs_every_released_model_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    std::fs::create_dir_all(&cache).unwrap();
    all_six_cache(&cache);
    let img = |n: &str| fixtures().join("images").join(n);
    for m in registry::MODELS {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flamingo"))
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", &cache)
            .env("FLAMINGO_CACHE_DIR", dir.path().join("app-cache"))
            .args([
                "caption",
                "--json",
                "--max-new-tokens",
                "3",
                "--model",
                m.id,
            ])
            .arg("--shot")
            .arg(img("chelsea.png"))
            .arg("A cat.")
            .arg(img("astronaut.png"))
            .output()
            .unwrap();
        let v = json_stdout(&out);
        assert_eq!(v["model"], m.id, "{}", m.id);
        assert_eq!(v["token_ids"].as_array().unwrap().len(), 3, "{}", m.id);
    }
}
