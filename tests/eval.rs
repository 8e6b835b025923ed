//! Evaluation metrics against the reference code's own numbers (tests/reference/generate_eval.py:
//! pycocoevalcap 1.2's PTBTokenizer and Cider, open_flamingo's VQAEval), and the labelled
//! folder formats.

use std::path::{Path, PathBuf};

use flamingo::eval::cider::{cider_d, CiderInput};
use flamingo::eval::data::LabelledFolder;
use flamingo::eval::{ptb, score, vqa, Prediction};
use flamingo::text::prompt::Task;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn cider_d_equals_pycocoevalcap_on_the_same_tokens() {
    let f = fixture("cider.json");
    let images = f["images"].as_array().unwrap();
    assert!(images.len() >= 50);
    let data: Vec<(String, Vec<String>)> = images
        .iter()
        .map(|im| {
            let refs = strs(&im["refs_tokenized"]);
            assert_eq!(refs.len(), 5);
            (
                im["prediction_tokenized"].as_str().unwrap().to_string(),
                refs,
            )
        })
        .collect();
    let inputs: Vec<CiderInput> = data
        .iter()
        .map(|(p, r)| CiderInput {
            prediction: p,
            references: r,
        })
        .collect();
    let s = cider_d(&inputs);
    assert!(s.warning.is_none());
    for (im, ours) in images.iter().zip(&s.per_image) {
        let theirs = im["cider"].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 1e-6,
            "image {}: {ours} vs {theirs}",
            im["id"]
        );
    }
    let theirs = f["cider"].as_f64().unwrap();
    assert!((s.mean - theirs).abs() < 1e-6, "{} vs {theirs}", s.mean);
    // The predictions vary in quality: the scores spread from 0 to well above 1.
    let max = s.per_image.iter().cloned().fold(0.0, f64::max);
    assert!(s.per_image.contains(&0.0) && max > 2.0, "{:?}", s.per_image);
}

#[test]
fn one_image_is_a_warning_not_a_silent_zero() {
    let refs = vec!["a cat on a mat".to_string()];
    let s = cider_d(&[CiderInput {
        prediction: "a cat on a mat",
        references: &refs,
    }]);
    assert_eq!(s.mean, 0.0);
    assert!(s.warning.unwrap().contains("at least two"));
}

/// The Rust PTB rules against the Java tokenizer on every fixture sentence; the figure is
/// printed, and CIDEr-D from our tokens is compared with the reference's.
#[test]
fn ptb_tokenisation_is_close_to_the_java_tokenizer() {
    let f = fixture("cider.json");
    let mut pairs: Vec<(String, String)> = Vec::new();
    for im in f["images"].as_array().unwrap() {
        for (raw, tok) in strs(&im["refs"]).iter().zip(strs(&im["refs_tokenized"])) {
            pairs.push((raw.clone(), tok));
        }
        pairs.push((
            im["prediction"].as_str().unwrap().into(),
            im["prediction_tokenized"].as_str().unwrap().into(),
        ));
    }
    for e in f["ptb_extra"].as_array().unwrap() {
        pairs.push((
            e["text"].as_str().unwrap().into(),
            e["tokenized"].as_str().unwrap().into(),
        ));
    }
    let mut differ = Vec::new();
    for (raw, java) in &pairs {
        let ours = ptb::tokenize(raw);
        if &ours != java {
            differ.push(format!("{raw:?}\n  java: {java:?}\n  ours: {ours:?}"));
        }
    }
    println!(
        "PTB: {} of {} sentences tokenised exactly as the Java tokenizer",
        pairs.len() - differ.len(),
        pairs.len()
    );
    assert!(differ.is_empty(), "{}", differ.join("\n"));

    // CIDEr-D end to end from raw text.
    let preds: Vec<Prediction> = f["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| Prediction {
            image: im["id"].to_string(),
            question: None,
            shots: Some(0),
            prediction: im["prediction"].as_str().unwrap().into(),
            references: strs(&im["refs"]),
            examples: vec![],
        })
        .collect();
    let r = score(Task::Caption, &preds);
    let theirs = f["cider"].as_f64().unwrap();
    assert!((r.results[0].score - theirs).abs() < 1e-6);
}

#[test]
fn vqa_accuracy_equals_the_official_evaluation() {
    let f = fixture("vqa.json");
    let items = f["items"].as_array().unwrap();
    let mut sum = 0.0;
    for it in items {
        let ours = vqa::vqa_accuracy(it["prediction"].as_str().unwrap(), &strs(&it["answers"]));
        let theirs = it["accuracy"].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 1e-6,
            "{:?} for {:?}: {ours} vs {theirs}",
            it["prediction"],
            it["answers"]
        );
        sum += ours;
    }
    let overall = f["overall"].as_f64().unwrap();
    assert!((sum / items.len() as f64 - overall).abs() < 1e-6);
}

fn temp_folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let png = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/library/cat.png"),
    )
    .unwrap();
    for (name, bytes) in files {
        let p = d.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, if bytes.is_empty() { &png[..] } else { bytes }).unwrap();
    }
    d
}

#[test]
fn labelled_folders_in_every_format() {
    // captions.jsonl with a bad row: the rest loads, the problem names file and line.
    let lib = LabelledFolder::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/library"),
    )
    .unwrap();
    assert_eq!(lib.items.len(), 10);
    assert_eq!(lib.task, Task::Caption);

    let d = temp_folder(&[
        ("a.png", b""),
        ("b.png", b""),
        (
            "captions.jsonl",
            b"{\"file\": \"a.png\", \"caption\": \"A cat.\"}\nnot json\n{\"file\": \"gone.png\", \"caption\": \"x\"}\n{\"file\": \"b.png\", \"captions\": [\"One.\", \"Two.\"]}\n{\"caption\": \"no file\"}\n",
        ),
    ]);
    let f = LabelledFolder::load(d.path()).unwrap();
    assert_eq!(f.items.len(), 2);
    assert_eq!(f.items[1].references, vec!["One.", "Two."]);
    assert_eq!(f.problems.len(), 3, "{:?}", f.problems);
    assert!(f.problems[0].starts_with("captions.jsonl line 2: not JSON"));
    assert!(f.problems[1].contains("line 3") && f.problems[1].contains("gone.png"));
    assert!(f.problems[2].contains("line 5") && f.problems[2].contains("\"file\""));

    // CSV: captions on several rows, answers separated by "|", quoted commas.
    let d = temp_folder(&[
        ("a.png", b""),
        ("b.png", b""),
        (
            "captions.csv",
            b"file,question,answers\na.png,\"What, if anything?\",yes|yes|no\nb.png,How many?,2|two\nc.png,Where?,here\n",
        ),
    ]);
    let f = LabelledFolder::load(d.path()).unwrap();
    assert_eq!(f.task, Task::Vqa);
    assert_eq!(f.items.len(), 2);
    assert_eq!(f.items[0].question.as_deref(), Some("What, if anything?"));
    assert_eq!(f.items[0].references, vec!["yes", "yes", "no"]);
    assert!(f.problems[0].starts_with("captions.csv line 4"));

    // COCO caption annotations, images in a subfolder.
    let d = temp_folder(&[
        ("val2014/COCO_val2014_000000000042.jpg", b""),
        ("val2014/COCO_val2014_000000000073.jpg", b""),
        (
            "captions_val2014.json",
            br#"{"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}, {"id": 73, "file_name": "COCO_val2014_000000000073.jpg"}],
                 "annotations": [{"image_id": 42, "id": 1, "caption": "A dog."}, {"image_id": 42, "id": 2, "caption": "A brown dog."}, {"image_id": 73, "id": 3, "caption": "A bus."}, {"id": 4}]}"#,
        ),
    ]);
    let f = LabelledFolder::load(d.path()).unwrap();
    assert_eq!(f.items.len(), 2);
    assert_eq!(f.items[0].file, "val2014/COCO_val2014_000000000042.jpg");
    assert_eq!(f.items[0].references, vec!["A dog.", "A brown dog."]);
    assert_eq!(f.problems.len(), 1);

    // Karpathy split: the test split only.
    let d = temp_folder(&[
        ("x.jpg", b""),
        ("y.jpg", b""),
        (
            "dataset_coco.json",
            br#"{"images": [{"filename": "x.jpg", "split": "test", "sentences": [{"raw": "An x."}]}, {"filename": "y.jpg", "split": "train", "sentences": [{"raw": "A y."}]}]}"#,
        ),
    ]);
    let f = LabelledFolder::load(d.path()).unwrap();
    assert_eq!(f.items.len(), 1);
    assert!(f.source.contains("test split"));

    // VQAv2 questions + annotations.
    let d = temp_folder(&[
        ("COCO_val2014_000000000042.jpg", b""),
        (
            "v2_OpenEnded_mscoco_val2014_questions.json",
            br#"{"questions": [{"image_id": 42, "question": "What animal?", "question_id": 420}, {"image_id": 7, "question": "Gone?", "question_id": 70}]}"#,
        ),
        (
            "v2_mscoco_val2014_annotations.json",
            br#"{"annotations": [{"question_id": 420, "image_id": 42, "answers": [{"answer": "dog", "answer_id": 1}, {"answer": "puppy", "answer_id": 2}]}]}"#,
        ),
    ]);
    let f = LabelledFolder::load(d.path()).unwrap();
    assert_eq!(f.task, Task::Vqa);
    assert_eq!(f.items.len(), 1);
    assert_eq!(f.items[0].references, vec!["dog", "puppy"]);
    assert!(f.problems[0].contains("image_id 7"), "{:?}", f.problems);

    // Captions beside the images.
    let d = temp_folder(&[
        ("p.png", b""),
        ("p.txt", b"First.\n\nSecond.\n"),
        ("q.png", b""),
    ]);
    let f = LabelledFolder::load(d.path()).unwrap();
    assert_eq!(f.items.len(), 1);
    assert_eq!(f.items[0].references, vec!["First.", "Second."]);

    // Nothing usable: one error naming the folder and the first problem.
    let d = temp_folder(&[(
        "captions.jsonl",
        b"{\"file\": \"none.png\", \"caption\": \"x\"}\n",
    )]);
    let e = LabelledFolder::load(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("no labelled images") && e.contains("none.png"),
        "{e}"
    );
    let e = LabelledFolder::load(Path::new("/no/such/folder"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/no/such/folder") && e.contains("no such folder"),
        "{e}"
    );
}
