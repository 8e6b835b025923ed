//! Preprocessed pixels against open_clip's validation transform run on PIL (with EXIF
//! orientation applied and alpha composited onto white, the app's two deliberate departures).

mod common;

use candle_core::Device;
use common::*;
use flamingo::image::preprocess_file;
use flamingo::model::config::{CLIP_MEAN, CLIP_STD};

#[test]
fn pixels_within_two_levels_of_pil() {
    let reference = reference("pixels.safetensors");
    assert!(
        reference.len() >= 12,
        "expected photos and synthetic images"
    );
    let std = candle_core::Tensor::new(&CLIP_STD, &Device::Cpu)
        .unwrap()
        .reshape((3, 1, 1))
        .unwrap();
    for (name, want) in &reference {
        let path = fixtures().join("images").join(name);
        let got = preprocess_file(&path, 224, CLIP_MEAN, CLIP_STD, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.dims(), want.dims(), "{name}");
        // Back to 0..1 units: |Δ| · std.
        let diff = (&got - want)
            .unwrap()
            .abs()
            .unwrap()
            .broadcast_mul(&std)
            .unwrap();
        let max = diff
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("{name}: max |Δ| = {:.3}/255", max * 255.0);
        assert!(
            max <= 2.0 / 255.0 + 1e-6,
            "{name}: max difference {:.3}/255",
            max * 255.0
        );
    }
}

#[test]
fn not_an_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.png");
    std::fs::write(&p, b"this is not an image at all").unwrap();
    let err = preprocess_file(&p, 224, CLIP_MEAN, CLIP_STD, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.png"), "{err}");

    let src = std::fs::read(fixtures().join("images").join("coffee.png")).unwrap();
    let q = dir.path().join("truncated.png");
    std::fs::write(&q, &src[..src.len() / 3]).unwrap();
    let err = preprocess_file(&q, 224, CLIP_MEAN, CLIP_STD, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated.png"), "{err}");
}
