//! RICES on the tiny model: CLIP embeddings equal open_clip's `encode_image` (normalised) and
//! the examples come in the order open_flamingo's `rices.py` gives (tests/reference/
//! generate_eval.py recorded both); embeddings are kept on disk and read back.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::Device;
use common::*;
use flamingo::eval::LabelledFolder;
use flamingo::pipeline::{Captioner, ImageInput};

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn rices_matches_open_flamingo() {
    let c = Captioner::load_from(&hub("hf"), flamingo::hub::DEFAULT_MODEL, &Device::Cpu).unwrap();
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("eval/rices.json")).unwrap())
            .unwrap();
    let dir = fixtures().join("eval/library");
    let folder = LabelledFolder::load(&dir).unwrap();
    let names: Vec<String> = folder.items.iter().map(|i| i.file.clone()).collect();
    let expected: Vec<String> = f["library"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, expected);

    let cache = tempfile::tempdir().unwrap();
    let no = AtomicBool::new(false);
    let mut seen = 0;
    let lib = c
        .library(folder.clone(), Some(cache.path()), &no, |done, total| {
            assert_eq!(total, 10);
            seen = done;
        })
        .unwrap();
    assert_eq!((seen, lib.computed), (10, 10));
    let mut worst = 0.0f32;
    for (ours, theirs) in lib
        .embeddings
        .iter()
        .zip(f["library_features"].as_array().unwrap())
    {
        worst = worst.max(max_diff(ours, &floats(theirs)));
    }
    for q in f["queries"].as_array().unwrap() {
        let file = q["file"].as_str().unwrap();
        let e = c
            .embed_image(&ImageInput::Path(
                fixtures().join("eval/queries").join(file),
            ))
            .unwrap();
        worst = worst.max(max_diff(&e, &floats(&q["features"])));
        let picked: Vec<String> = lib
            .most_similar(&e, 4, None)
            .into_iter()
            .map(|i| lib.folder.items[i].file.clone())
            .collect();
        let theirs: Vec<String> = q["top4_most_similar_last"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert_eq!(picked, theirs, "{file}");
    }
    println!("RICES embeddings: max |ours - open_clip| = {worst:e}");
    assert!(worst < 1e-4, "{worst}");

    // Kept on disk: a second library reads every embedding back, a damaged line is embedded
    // again, and the results are the same.
    let again = c
        .library(folder.clone(), Some(cache.path()), &no, |_, _| {})
        .unwrap();
    assert_eq!(again.computed, 0);
    assert_eq!(again.embeddings, lib.embeddings);
    let kept = std::fs::read_dir(cache.path().join("rices"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&kept).unwrap();
    let damaged: String = text.replacen("\"embedding\":[", "\"embedding\":[x", 1);
    std::fs::write(&kept, damaged).unwrap();
    let third = c
        .library(folder, Some(cache.path()), &no, |_, _| {})
        .unwrap();
    assert_eq!(third.computed, 1);
    assert!(max_diff(&third.embeddings[0], &lib.embeddings[0]) < 1e-6);

    // A query that is in the library is not its own example.
    let own = std::fs::read(dir.join("cat.png")).unwrap();
    let e = c
        .embed_image(&ImageInput::Path(dir.join("cat.png")))
        .unwrap();
    let with_self = lib.most_similar(&e, 3, None);
    assert_eq!(lib.folder.items[*with_self.last().unwrap()].file, "cat.png");
    let without = lib.most_similar(&e, 3, Some(&own));
    assert!(without
        .iter()
        .all(|&i| lib.folder.items[i].file != "cat.png"));
    assert_eq!(without.len(), 3);
}
