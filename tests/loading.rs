//! Damaged caches give errors that name the file, the tensor and the shapes.

mod common;

use std::path::Path;

use candle_core::Device;
use common::*;
use flamingo::hub::{registry, resolve_in};
use flamingo::pipeline::Captioner;

/// Copies a fixture cache with real files (no links) so that one file can be damaged.
fn copy_cache(src: &Path, dst: &Path) {
    for entry in std::fs::read_dir(src).unwrap() {
        let e = entry.unwrap();
        let to = dst.join(e.file_name());
        let meta = std::fs::metadata(e.path()).unwrap(); // follows links
        if meta.is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            copy_cache(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

fn damaged(f: impl FnOnce(&Path)) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    std::fs::create_dir_all(&cache).unwrap();
    copy_cache(&hub("hf"), &cache);
    f(&cache);
    (dir, cache)
}

fn file(cache: &Path, repo: &str, name: &str) -> std::path::PathBuf {
    flamingo::hub::cached_file(cache, repo, name).unwrap()
}

fn load_err(cache: &Path) -> String {
    match Captioner::load_from(cache, registry::DEFAULT_MODEL, &Device::Cpu) {
        Ok(_) => panic!("loading a damaged cache succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_fixture_cache_resolves_every_file() {
    let spec = registry::find(registry::DEFAULT_MODEL).unwrap();
    let f = resolve_in(&hub("hf"), spec).unwrap();
    assert!(f.checkpoint.path.ends_with("checkpoint.pt"));
    assert!(f.lm_weights[0].path.ends_with("pytorch_model.bin"));
    assert!(f.clip_weights.path.ends_with("open_clip_model.safetensors"));
}

#[test]
fn missing_file_names_repo_and_file() {
    let (_d, cache) = damaged(|c| {
        std::fs::remove_file(file(
            c,
            "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
            "checkpoint.pt",
        ))
        .unwrap();
    });
    let e = load_err(&cache);
    assert!(
        e.contains("openflamingo/OpenFlamingo-3B-vitl-mpt1b") && e.contains("checkpoint.pt"),
        "{e}"
    );
}

#[test]
fn truncated_weights_are_reported() {
    let (_d, cache) = damaged(|c| {
        let p = file(
            c,
            "anas-awadalla/mpt-1b-redpajama-200b",
            "pytorch_model.bin",
        );
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    let e = load_err(&cache);
    assert!(e.contains("pytorch_model.bin"), "{e}");

    let (_d, cache) = damaged(|c| {
        let p = file(
            c,
            "timm/vit_large_patch14_clip_224.openai",
            "open_clip_model.safetensors",
        );
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    });
    let e = load_err(&cache);
    assert!(e.contains("open_clip_model.safetensors"), "{e}");
}

#[test]
fn wrong_shape_names_tensor_and_shapes() {
    // A config that promises a wider LM than the weights hold.
    let (_d, cache) = damaged(|c| {
        let p = file(c, "anas-awadalla/mpt-1b-redpajama-200b", "config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["d_model"] = serde_json::json!(64);
        std::fs::write(&p, v.to_string()).unwrap();
    });
    let e = load_err(&cache);
    assert!(e.contains("has shape") && e.contains("expected"), "{e}");
    assert!(e.contains("[64]") || e.contains("64"), "{e}");
}

#[test]
fn not_a_checkpoint_is_reported() {
    let (_d, cache) = damaged(|c| {
        let p = file(
            c,
            "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
            "checkpoint.pt",
        );
        std::fs::write(&p, b"garbage").unwrap();
    });
    let e = load_err(&cache);
    assert!(e.contains("checkpoint.pt"), "{e}");
}
