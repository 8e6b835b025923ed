//! Property tests (proptest, bounded for CI): parsers never panic on any input, writers and
//! readers round-trip, and the decoding processors keep a valid distribution.

mod common;

use std::sync::Arc;

use common::*;
use flamingo::app::state::{set_from_json, set_to_json, Example, ImageItem, WorkingSet};
use flamingo::eval::cider::{cider_d, CiderInput};
use flamingo::eval::{ptb, vqa};
use flamingo::generate::logits::{choose, repetition_penalty, softmax, warp, Rng};
use flamingo::generate::GenerationConfig;
use flamingo::text::prompt::{
    answer, format_template, post_process, task_prompt, ShotText, Task, Templates,
};
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text with the characters that matter to templates and prompts, and any others.
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("{caption}".to_string()),
            Just("{question}".to_string()),
            Just("<image>".to_string()),
            Just("<|endofchunk|>".to_string()),
            Just("Output".to_string()),
            Just("Question".to_string()),
            Just("\"".to_string()),
            Just("\u{0}".to_string()),
            Just("\u{202e}".to_string()),
            Just("e\u{301}".to_string()),
            "[a-z ,.'!?-]{0,8}",
            any::<char>().prop_map(String::from),
        ],
        0..12,
    )
    .prop_map(|v| v.concat())
}

fn image_item(name: &str, bytes: Vec<u8>) -> ImageItem {
    ImageItem {
        name: name.to_string(),
        bytes: Arc::from(bytes),
        thumb: None,
        size: [1, 1],
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_prompt_set_from_any_bytes_is_read_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = set_from_json(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn templates_and_post_processing_never_panic(t in text(), a in text(), b in text()) {
        let _ = format_template(&t, &[("caption", &a), ("question", &b)]);
        let templates = Templates { shot: t.clone(), final_: a.clone(), zeroshot: b.clone() };
        let shots = [ShotText { caption: a.clone(), question: b.clone(), answer: t.clone() }];
        let _ = task_prompt(Task::Caption, &templates, &shots, &b);
        let _ = task_prompt(Task::Vqa, &templates, &shots, &b);
        let c = post_process(Task::Caption, &t);
        prop_assert!(!c.contains("Output") && !c.contains('"'));
        let v = post_process(Task::Vqa, &t);
        prop_assert!(!v.contains("Question") && !v.contains("Answer"));
        prop_assert_eq!(answer(Task::Caption, &t), c.trim());
    }

    #[test]
    fn a_template_without_braces_is_itself(t in "[^{}]{0,40}") {
        prop_assert_eq!(format_template(&t, &[("caption", "x")]).unwrap(), t);
    }

    #[test]
    fn metrics_stay_in_range(pred in text(), refs in prop::collection::vec(text(), 1..4), other in text()) {
        let a = vqa::vqa_accuracy(&pred, &refs);
        prop_assert!((0.0..=1.0).contains(&a));
        let toks: Vec<String> = refs.iter().map(|r| ptb::tokenize(r)).collect();
        let other_refs = vec![ptb::tokenize(&other)];
        let p = ptb::tokenize(&pred);
        let s = cider_d(&[
            CiderInput { prediction: &p, references: &toks },
            CiderInput { prediction: &p, references: &other_refs },
        ]);
        prop_assert!(s.per_image.iter().all(|x| x.is_finite() && *x >= 0.0), "{:?}", s.per_image);
        // Tokens are joined by single spaces, none empty.
        prop_assert!(!p.contains("  ") && p.trim() == p, "{p:?}");
    }

    #[test]
    fn warped_scores_are_a_distribution_that_keeps_the_best(
        scores in prop::collection::vec(-30.0f32..30.0, 1..64),
        temperature in 0.01f64..100.0,
        top_k in 0usize..70,
        top_p in 0.0f64..=1.0,
    ) {
        let best = flamingo::generate::logits::argmax(&scores);
        let mut s = scores.clone();
        warp(&mut s, temperature, top_k, top_p);
        let p = softmax(&s);
        let sum: f64 = p.iter().sum();
        prop_assert!((sum - 1.0).abs() < 1e-9, "sum {sum}");
        prop_assert!(p.iter().all(|x| x.is_finite() && *x >= 0.0));
        prop_assert!(p[best as usize] > 0.0, "the most likely token was removed");
    }

    #[test]
    fn chosen_tokens_are_in_range_and_never_suppressed(
        scores in prop::collection::vec(-30.0f32..30.0, 3..64),
        seq in prop::collection::vec(0u32..64, 0..20),
        penalty in 0.5f64..3.0,
        sample in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let n = scores.len() as u32;
        let cfg = GenerationConfig {
            do_sample: sample,
            repetition_penalty: penalty,
            no_repeat_ngram_size: 2,
            top_k: 5,
            top_p: 0.9,
            seed,
            ..GenerationConfig::default()
        };
        let mut rng = Rng::new(seed);
        let t = choose(&scores, &seq, 0, &cfg, n - 1, &[0], &mut rng);
        prop_assert!(t < n);
        prop_assert!(t != 0, "the suppressed token was chosen");
        let mut s = scores.clone();
        repetition_penalty(&mut s, &seq, penalty);
        prop_assert!(s.iter().all(|x| x.is_finite()));
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn a_prompt_set_round_trips(
        captions in prop::collection::vec(text(), 0..4),
        question in text(),
        shot in text(),
        image in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut ws = WorkingSet::new();
        ws.question = question.clone();
        ws.caption_templates.shot = shot.clone();
        for (i, c) in captions.iter().enumerate() {
            ws.examples.push(Example {
                id: i as u64,
                image: image_item(&format!("img{i}.png"), image.clone()),
                text: ShotText { caption: c.clone(), ..Default::default() },
                enabled: i % 2 == 0,
            });
        }
        let back = set_from_json(&set_to_json(&ws)).unwrap();
        prop_assert_eq!(back.question, question);
        prop_assert_eq!(back.caption_templates.shot, shot);
        prop_assert_eq!(back.examples.len(), captions.len());
        for (i, (name, bytes, t, enabled)) in back.examples.iter().enumerate() {
            prop_assert_eq!(name, &format!("img{i}.png"));
            prop_assert_eq!(&bytes[..], &image[..]);
            prop_assert_eq!(&t.caption, &captions[i]);
            prop_assert_eq!(*enabled, i % 2 == 0);
        }
    }

    #[test]
    fn a_mutated_prompt_set_is_read_or_refused(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut ws = WorkingSet::new();
        ws.examples.push(Example {
            id: 1,
            image: image_item("a.png", vec![1, 2, 3]),
            text: ShotText { caption: "A cat.".into(), ..Default::default() },
            enabled: true,
        });
        let mut bytes = set_to_json(&ws).into_bytes();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let _ = set_from_json(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn a_labels_file_of_any_lines_loads_or_says_why(lines in prop::collection::vec(text(), 0..6)) {
        let d = tempfile::tempdir().unwrap();
        std::fs::copy(fixtures().join("eval/library/cat.png"), d.path().join("cat.png")).unwrap();
        let mut body = String::from("{\"file\": \"cat.png\", \"caption\": \"A cat.\"}\n");
        for l in &lines {
            body.push_str(l);
            body.push('\n');
        }
        std::fs::write(d.path().join("captions.jsonl"), &body).unwrap();
        let f = flamingo::eval::LabelledFolder::load(d.path()).unwrap();
        prop_assert!(!f.items.is_empty());
        std::fs::write(d.path().join("captions.jsonl"), lines.concat()).unwrap();
        let _ = flamingo::eval::LabelledFolder::load(d.path());
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Weight files with bytes changed anywhere: an error naming the file, or (where the change
    /// missed everything checked) the tensors; never a panic.
    #[test]
    fn mutated_weight_files_are_read_or_refused(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        header_only in any::<bool>(),
    ) {
        let d = tempfile::tempdir().unwrap();
        let snap = |repo: &str| {
            let dir = hub("hf").join(repo).join("snapshots");
            std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path()
        };
        for (src, name) in [
            (snap("models--timm--vit_large_patch14_clip_224.openai").join("open_clip_model.safetensors"), "m.safetensors"),
            (snap("models--openflamingo--OpenFlamingo-3B-vitl-mpt1b").join("checkpoint.pt"), "checkpoint.pt"),
        ] {
            let mut bytes = std::fs::read(&src).unwrap();
            let span = if header_only { bytes.len().min(4096) } else { bytes.len() };
            for (i, b) in &flips {
                let at = i.index(span);
                bytes[at] = *b;
            }
            let p = d.path().join(name);
            std::fs::write(&p, &bytes).unwrap();
            if let Err(e) = flamingo::store::read_tensor_file(&p) {
                prop_assert!(e.to_string().contains(name), "{e}");
            }
        }
    }
}
